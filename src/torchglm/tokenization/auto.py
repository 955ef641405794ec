"""``AutoTokenizer.from_pretrained(folder)`` for folders torchglm saved, with no ``trust_remote_code``.

A saved ``tokenizer_config.json`` names the released class of its family (``GLMBertTokenizer``,
``GLMGPT2Tokenizer``, ``GLMRobertaTokenizer``, ``GLMChineseTokenizer``), as the released folders do. transformers
5 resolves that name through the classes registered with ``AutoTokenizer.register`` (by ``__name__``), then calls
the class's ``from_pretrained``; so each name is registered here as a class whose ``from_pretrained`` is
``GLMTokenizer.from_pretrained`` (the folder's files and options pick the family, exactly as without the Auto
class). The names are only entry points: the tokenizer returned is a ``GLMTokenizerFast`` (or
``GLMChineseTokenizer``), as ``GLMTokenizer.from_pretrained`` gives.

Released folders carry ``"model_type": "glm"`` and an ``auto_map`` to their own code, which transformers reads as
GLM-4 or remote code: load those with ``GLMTokenizer.from_pretrained``.
"""

from __future__ import annotations

from .chinese import GLMChineseTokenizer
from .fast import GLMTokenizerFast


class GLMBertTokenizer(GLMTokenizerFast):
    """The released name of the BERT WordPiece family; ``from_pretrained`` reads any GLM tokenizer folder."""


class GLMGPT2Tokenizer(GLMTokenizerFast):
    """The released name of the GPT-2 byte-level BPE family; ``from_pretrained`` reads any GLM tokenizer folder."""


class GLMRobertaTokenizer(GLMTokenizerFast):
    """The released name of the RoBERTa byte-level BPE family; ``from_pretrained`` reads any GLM tokenizer folder."""


ENTRY_CLASSES = (GLMBertTokenizer, GLMGPT2Tokenizer, GLMRobertaTokenizer, GLMChineseTokenizer)


def register_auto_tokenizer(config_class) -> None:
    """Make ``AutoTokenizer`` resolve the four released class names, and map ``config_class`` (GLM's config) to
    ``GLMTokenizerFast`` for folders whose ``tokenizer_config.json`` names no class."""
    from transformers import AutoTokenizer

    for entry in (*ENTRY_CLASSES, GLMTokenizerFast):  # the last one registered is the config's mapping
        AutoTokenizer.register(config_class, tokenizer_class=entry, exist_ok=True)

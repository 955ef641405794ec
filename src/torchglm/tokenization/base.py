"""What every GLM tokenizer shares: command-token ids, the single-text encoding contract, saving, builders.

``GLMTokenizer`` is both the public entry (``GLMTokenizer.from_pretrained(folder)`` dispatches on the folder's
files) and the base of the two concrete classes, so ``isinstance(tok, GLMTokenizer)`` holds for all families.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import BatchEncoding
from transformers.tokenization_utils_base import TruncationStrategy
from transformers.utils import PaddingStrategy, TensorType

from .commands import CommandLayout, CommandSplitter

# The class names of the released Hugging Face tokenizers, and the family each one stands for.
RELEASED_CLASSES = {
    "bert": "GLMBertTokenizer",
    "gpt2": "GLMGPT2Tokenizer",
    "roberta": "GLMRobertaTokenizer",
    "chinese": "GLMChineseTokenizer",
}

# What transformers' Auto classes pass to ``from_pretrained`` besides the folder (hub revision, cache, tracing).
_LOADER_KEYWORDS = (
    "_from_auto", "_commit_hash", "revision", "trust_remote_code", "local_files_only", "cache_dir", "token",
    "force_download", "proxies", "use_fast", "code_revision",
)  # fmt: skip


class GLMTokenizer:
    """A GLM tokenizer: the base vocabulary of one of four families plus GLM's command tokens.

    Use ``GLMTokenizer.from_pretrained(folder)`` (or one of the ``from_*`` constructors) rather than a concrete
    class. Every instance has the command-token ids as attributes (``sop_token_id``, ``gmask_token_id``...,
    ``None`` where the family lacks one), ``num_tokens`` (vocabulary size before the model pads it) and
    ``encode(text, add_special_tokens=False)`` returning exactly the original framework's ``EncodeAsIds``.

    Example::

        tok = GLMTokenizer.from_pretrained("glm-large")      # a released folder, or one saved by torchglm
        batch = tok(["Tsinghua University is located in [MASK]."], return_tensors="pt", padding=True)
        inputs = tok.build_inputs_for_generation(batch, max_gen_length=16)
    """

    layout: CommandLayout
    glm_kind: str
    glm_options: dict[str, Any]
    model_input_names = ["input_ids", "attention_mask"]

    # ---- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, kind: str | None = None, **options) -> GLMTokenizer:
        """Load the tokenizer in ``folder``: a released GLM folder (``vocab.txt``; ``vocab.json`` +
        ``merges.txt``; ``cog-pretrain.model``; a ``tokenizer_config.json`` naming ``GLMBertTokenizer``,
        ``GLMGPT2Tokenizer``, ``GLMRobertaTokenizer`` or ``GLMChineseTokenizer``) or one saved by
        ``save_pretrained``. ``kind`` (``bert``, ``gpt2``, ``roberta``, ``chinese``, ``chinese-legacy``)
        overrides the detection; ``options`` (``add_task_mask``, ``add_decoder_mask``, ``do_lower_case``,
        ``legacy_gmask``, ``model_max_length``) override the folder's config. ``AutoTokenizer`` comes here too
        (``tokenization/auto.py``); its hub keywords mean nothing for a local folder and are dropped."""
        from .loading import load_folder

        for key in _LOADER_KEYWORDS:
            options.pop(key, None)
        if options.get("subfolder"):
            folder = Path(folder) / options.pop("subfolder")
        options.pop("subfolder", None)
        return load_folder(folder, kind=kind, **options)

    @classmethod
    def from_bert_vocab(cls, vocab_file: str | os.PathLike, **options) -> GLMTokenizer:
        """BERT WordPiece from a ``vocab.txt`` (glm-base/large/410m/515m use bert-base/large uncased)."""
        from .loading import build_bert

        return build_bert(vocab_file, **options)

    @classmethod
    def from_gpt2_vocab(cls, vocab_file: str | os.PathLike, merges_file: str | os.PathLike, **options) -> GLMTokenizer:
        """GPT-2 byte-level BPE from ``vocab.json`` + ``merges.txt`` (glm-2b, glm-10b)."""
        from .loading import build_bpe

        return build_bpe(vocab_file, merges_file, kind="gpt2", **options)

    @classmethod
    def from_roberta_vocab(
        cls, vocab_file: str | os.PathLike, merges_file: str | os.PathLike, **options
    ) -> GLMTokenizer:
        """RoBERTa byte-level BPE from ``vocab.json`` + ``merges.txt`` (glm-roberta-large)."""
        from .loading import build_bpe

        return build_bpe(vocab_file, merges_file, kind="roberta", **options)

    @classmethod
    def from_sentencepiece(cls, model_file: str | os.PathLike, **options) -> GLMTokenizer:
        """Chinese SentencePiece from ``cog-pretrain.model`` (glm-large-chinese; ``legacy_gmask=True`` for
        glm-10b-chinese)."""
        from .loading import build_chinese

        return build_chinese(model_file, **options)

    def _init_commands(self, layout: CommandLayout, kind: str, options: dict[str, Any]) -> None:
        self.layout = layout
        self.glm_kind = kind
        self.glm_options = dict(options)
        self._splitter = CommandSplitter(layout)
        self._canonical = layout.canonical

    @staticmethod
    def _special_token_kwargs(layout: CommandLayout) -> dict[str, Any]:
        """The transformers special-token arguments: each named by the canonical string of its id, so that
        ``tok.eos_token`` decodes to what ``tok.eos_token_id`` is (RoBERTa's eos is ``[SEP]``, id 2)."""
        canonical = layout.canonical
        named = {"pad": "pad_token", "eos": "eos_token", "ENC": "cls_token", "sep": "sep_token"}
        named |= {"MASK": "mask_token", "unk": "unk_token"}
        kwargs: dict[str, Any] = {attr: canonical[layout.id(name)] for name, attr in named.items()}
        others = {t.token for t in layout.tokens if t.name not in named and canonical[t.id] == t.token}
        kwargs["extra_special_tokens"] = sorted(others, key=layout.string_to_id.get)
        return kwargs

    # ---- command-token ids ----------------------------------------------------------------------------------
    pad_token_id = property(lambda self: self.layout.id("pad"), doc="Padding id (= eos in every family).")
    eos_token_id = property(lambda self: self.layout.id("eos"), doc="End of text: [PAD] (BERT), <|endoftext|>.")
    cls_token_id = property(lambda self: self.layout.id("ENC"), doc="[CLS], prepended by ``__call__``.")
    sep_token_id = property(lambda self: self.layout.id("sep"))
    mask_token_id = property(lambda self: self.layout.id("MASK"), doc="[MASK]: a short blank (a word or span).")
    unk_token_id = property(lambda self: self.layout.id("unk"))
    sop_token_id = property(lambda self: self.layout.id("sop"), doc="<|startofpiece|>: starts each part-B block.")
    eop_token_id = property(lambda self: self.layout.id("eop"), doc="<|endofpiece|>: ends a generated blank.")
    gmask_token_id = property(lambda self: self.layout.id("gMASK"), doc="[gMASK]: a long blank to the end.")
    smask_token_id = property(lambda self: self.layout.id("sMASK"), doc="[sMASK]: a sentence-level blank.")
    dblock_token_id = property(lambda self: self.layout.id("dBLOCK"))

    @property
    def mask_token_ids(self) -> list[int]:
        """The blank ids this family has, in the order [MASK], [sMASK], [gMASK]."""
        ids = [self.layout.id(name) for name in ("MASK", "sMASK", "gMASK")]
        return [i for i in ids if i is not None]

    @property
    def command_tokens(self) -> tuple:
        return self.layout.tokens

    @property
    def num_command_tokens(self) -> int:
        return len(self.layout.tokens)

    @property
    def num_tokens(self) -> int:
        """Vocabulary size before the model pads it (the original ``num_tokens``); ``len(tok)`` is the same."""
        return self.layout.num_tokens

    def __len__(self) -> int:
        return self.layout.num_tokens

    # ---- encoding ------------------------------------------------------------------------------------------
    def _encode_text(self, text: str) -> list[int]:
        """The original ``EncodeAsIds(text)``: command tokens found and stripped as the original did."""
        ids: list[int] = []
        for part in self._splitter.split(text):
            if isinstance(part, int):
                ids.append(part)
            else:
                ids.extend(self._encode_piece(part))
        return ids

    def _encode_piece(self, piece: str) -> list[int]:
        """A text piece free of command tokens, through the family's own text tokenizer."""
        raise NotImplementedError

    def _encode_batch(self, texts: list) -> list[list[int]]:
        """``_encode_text`` of each text (lists of ids pass through); families override it to batch the work."""
        return [self._encode_text(t) if isinstance(t, str) else list(t) for t in texts]

    def _glm_encode_plus(
        self,
        text,
        text_pair=None,
        add_special_tokens: bool = True,
        padding_strategy: PaddingStrategy = PaddingStrategy.DO_NOT_PAD,
        truncation_strategy=None,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | TensorType | None = None,
        return_attention_mask: bool | None = None,
        return_length: bool = False,
        return_special_tokens_mask: bool = False,
        **unsupported,
    ) -> BatchEncoding:
        """``__call__``/``encode`` in Python: ids per text (``_encode_batch``), then truncation, ``[CLS] ids
        eos`` and padding. Used by the Chinese tokenizer, and by the fast ones for batches holding a text the Rust
        path cannot take exactly."""
        if text_pair is not None:
            raise ValueError("GLM tokenizers take single texts; join a pair into one text (with [SEP] if wanted)")
        for key in ("return_offsets_mapping", "return_overflowing_tokens", "is_split_into_words"):
            if unsupported.get(key):
                raise NotImplementedError(f"{key}=True is not supported for this text")
        batched = isinstance(text, (list, tuple)) and not (text and isinstance(text[0], int))
        ids = self._encode_batch(list(text) if batched else [text])
        n_special = 2 if add_special_tokens else 0
        if truncation_strategy not in (None, TruncationStrategy.DO_NOT_TRUNCATE) and max_length is not None:
            keep = max(max_length - n_special, 0)
            ids = [x[:keep] if self.truncation_side == "right" else x[len(x) - keep :] for x in ids]
        if add_special_tokens:
            ids = [[self.cls_token_id, *x, self.eos_token_id] for x in ids]
        encoded: dict[str, Any] = {"input_ids": ids}
        if return_special_tokens_mask:
            encoded["special_tokens_mask"] = [
                [1] + [0] * (len(x) - 2) + [1] if n_special else [0] * len(x) for x in ids
            ]
        if return_length:
            encoded["length"] = [len(x) for x in ids]
        encoded = self.pad(
            encoded,
            padding=padding_strategy,
            max_length=max_length,
            pad_to_multiple_of=pad_to_multiple_of,
            padding_side=padding_side,
            return_attention_mask=return_attention_mask,
        )
        if not batched and return_tensors is None:
            encoded = {key: value[0] for key, value in encoded.items()}
        return BatchEncoding(dict(encoded), tensor_type=return_tensors)

    def tokenize(self, text: str, **kwargs) -> list[str]:
        """The token strings of ``encode(text, add_special_tokens=False)``."""
        return self.convert_ids_to_tokens(self._encode_text(text))

    # ---- saving ----------------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> tuple[str, ...]:
        """Write the family's native vocabulary files and a ``tokenizer_config.json`` naming the released class
        (so released loaders read it too) plus torchglm's own options; ``from_pretrained`` reads it back."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        files = list(self._save_vocabulary_files(folder))
        config = {"tokenizer_class": RELEASED_CLASSES[self.glm_kind], "glm_kind": self.glm_kind, **self.glm_options}
        if self.model_max_length < 1e20:  # transformers' "no limit" is 1e30
            config["model_max_length"] = self.model_max_length
        config_file = folder / "tokenizer_config.json"
        config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        files.append(str(config_file))
        return tuple(files)

    def _save_vocabulary_files(self, folder: Path) -> Sequence[str]:
        raise NotImplementedError

    # ---- input builders ------------------------------------------------------------------------------------
    def build_inputs_for_generation(self, model_input, max_gen_length: int = 512, targets=None, padding=False):
        """Model inputs to generate (``targets=None``) or teacher-force (``targets=``) the blanks of a batch.

        See :func:`torchglm.tokenization.builders.build_inputs_for_generation`.
        """
        from .builders import build_inputs_for_generation

        return build_inputs_for_generation(self, model_input, max_gen_length, targets, padding)

    def build_inputs_for_multiple_choice(self, model_input, choices, max_length: int | None = None):
        """Model inputs to score each choice's tokens in the blank(s) of its context.

        See :func:`torchglm.tokenization.builders.build_inputs_for_multiple_choice`.
        """
        from .builders import build_inputs_for_multiple_choice

        return build_inputs_for_multiple_choice(self, model_input, choices, max_length)

"""Special token ids and sentence-end tables, read once from a tokenizer.

The data pipeline never calls the tokenizer per sample: everything it needs is a handful of ids
(:class:`SpecialIds`) and one boolean lookup table over the vocabulary (:func:`sentence_end_table`),
so that "is this token the end of a sentence?" is a single vectorized gather.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

# Characters whose presence in a token's string marks a sentence end, as in the original GLM data code
# (ASCII and full-width Chinese punctuation, ellipsis, newline). "Ċ" is the byte-level BPE spelling of
# "\n" (GPT-2/RoBERTa vocabularies), added only for byte-level vocabularies.
SENTENCE_END_CHARS = (".", "?", "!", ";", ":", "。", "？", "！", "；", "…", "\n")
BYTE_LEVEL_NEWLINE = "Ċ"


@dataclass(frozen=True)
class SpecialIds:
    """The command-token ids the blank-infilling builder writes into samples.

    Example: ``SpecialIds.from_tokenizer(GLMTokenizer.from_pretrained(folder))``, or
    ``SpecialIds.bert_uncased()`` for the released BERT-vocabulary models.
    """

    pad: int
    """Padding id (labels at padding are -100, so its value only matters for the inputs)."""
    eos: int
    """End of document; documents in the shards end with it, and it ends part A of packed samples."""
    cls: int
    """Start of every packed document (``[CLS]``); never a prediction target."""
    mask: int
    """``[MASK]``: the blank token of token-level spans (and of every span without task masks)."""
    sop: int
    """``<|startofpiece|>``: first input of every part-B block."""
    eop: int
    """``<|endofpiece|>``: last target of every part-B block."""
    gmask: int
    """``[gMASK]``: the blank of document-level (generation) spans when task masks are on."""
    smask: int
    """``[sMASK]``: the blank of sentence-level spans when task masks are on."""
    dblock: int | None = None
    """``[dBLOCK]``: replaces tokens for ``block_mask_prob`` / ``context_mask_ratio``; released vocabularies lack it."""
    sentinel_masks: tuple[int, ...] = ()
    """``[MASK1]``, ``[MASK2]``, ...: per-span blanks for ``sentinel_token`` (span 0 uses ``mask``)."""
    sentinel_sops: tuple[int, ...] = ()
    """``<|startofpiece1|>``, ...: per-span block starts for ``sentinel_token`` (span 0 uses ``sop``)."""

    def __post_init__(self) -> None:
        if len(self.sentinel_masks) != len(self.sentinel_sops):
            raise ValueError("sentinel_masks and sentinel_sops must have the same length")

    @classmethod
    def bert_uncased(cls) -> SpecialIds:
        """The ids of the released BERT-uncased GLM models (``[PAD]`` doubles as eos)."""
        return cls(pad=0, eos=0, cls=101, mask=103, sop=30522, eop=30523, gmask=30524, smask=30525)

    @classmethod
    def from_tokenizer(cls, tokenizer) -> SpecialIds:
        """Read the ``*_token_id`` attributes of a GLM tokenizer (``dblock_token_id`` is optional)."""
        names = {
            "pad": "pad_token_id",
            "eos": "eos_token_id",
            "cls": "cls_token_id",
            "mask": "mask_token_id",
            "sop": "sop_token_id",
            "eop": "eop_token_id",
            "gmask": "gmask_token_id",
            "smask": "smask_token_id",
        }
        values = {}
        for field, attribute in names.items():
            value = getattr(tokenizer, attribute, None)
            if value is None:
                raise ValueError(f"tokenizer {type(tokenizer).__name__} has no {attribute}")
            values[field] = int(value)
        dblock = getattr(tokenizer, "dblock_token_id", None)
        return cls(**values, dblock=None if dblock is None else int(dblock))

    def with_new_tokens(self, first_free_id: int, sentinels: int = 0, dblock: bool = False) -> SpecialIds:
        """Assign ids from ``first_free_id`` on to sentinel pairs and ``[dBLOCK]``, which released vocabularies lack.

        The embedding table of the model must then cover the new ids; the original framework added them the
        same way, after the vocabulary (sentinels as ``[MASKi]``, ``<|startofpieceI|>`` pairs, then ``[dBLOCK]``).
        """
        masks = tuple(first_free_id + 2 * i for i in range(sentinels))
        sops = tuple(first_free_id + 2 * i + 1 for i in range(sentinels))
        next_id = first_free_id + 2 * sentinels
        return dataclasses.replace(
            self,
            sentinel_masks=masks,
            sentinel_sops=sops,
            dblock=next_id if dblock else self.dblock,
        )

    @property
    def max_id(self) -> int:
        """The largest id named here (the vocabulary must be larger)."""
        ids = [self.pad, self.eos, self.cls, self.mask, self.sop, self.eop, self.gmask, self.smask]
        ids += list(self.sentinel_masks) + list(self.sentinel_sops)
        if self.dblock is not None:
            ids.append(self.dblock)
        return max(ids)


def _token_strings(tokenizer) -> list[str | None]:
    """Every id's token string, whatever the tokenizer's API (GLMTokenizer, transformers, tokenizers)."""
    size = len(tokenizer) if hasattr(tokenizer, "__len__") else tokenizer.get_vocab_size()
    ids = list(range(size))
    for method in ("convert_ids_to_tokens", "id_to_token"):
        fn = getattr(tokenizer, method, None)
        if fn is None:
            continue
        try:
            tokens = fn(ids)
            if isinstance(tokens, list) and len(tokens) == size:
                return tokens
        except TypeError:
            pass
        return [fn(i) for i in ids]
    vocab = tokenizer.get_vocab()
    tokens: list[str | None] = [None] * size
    for token, index in vocab.items():
        if index < size:
            tokens[index] = token
    return tokens


def sentence_end_table(tokenizer_or_tokens, size: int | None = None) -> np.ndarray:
    """A boolean table ``ends[id]``: does the token's string contain sentence-ending punctuation?

    Computed once per tokenizer; the dataset and the sentence-mode builder then find sentence boundaries
    with one gather (``ends[tokens]``) instead of decoding tokens. Accepts a tokenizer or an iterable of
    token strings (index = id). ``size`` pads the table, e.g. to a model's padded vocabulary.
    """
    if isinstance(tokenizer_or_tokens, Iterable) and not hasattr(tokenizer_or_tokens, "encode"):
        tokens = list(tokenizer_or_tokens)
    else:
        tokens = _token_strings(tokenizer_or_tokens)
    byte_level = sum(1 for t in tokens[:5000] if t and t.startswith("Ġ")) > 50
    chars = SENTENCE_END_CHARS + ((BYTE_LEVEL_NEWLINE,) if byte_level else ())
    table = np.zeros(max(size or 0, len(tokens)), dtype=bool)
    for index, token in enumerate(tokens):
        if token and any(c in token for c in chars):
            table[index] = True
    return table

"""Decoding and scoring with GLM: one core (a KV-cached batch that part-B blocks are appended to) and what
is built on it.

- :mod:`.state`: :class:`DecodingState`: contexts encoded once; blocks appended, one token stepped, rows
  reordered, forked, cropped; which cached keys each row may see (padding never attended).
- :mod:`.search`: :func:`search_block`: greedy search, sampling, beam search (``num_return_sequences``) over one
  block of every text, with transformers' logits processors (:mod:`.options`).
- :mod:`.score`: :func:`score`: continuations after shared cached contexts, log-probabilities and argmax
  agreement per token (LAMBADA, perplexity, cloze, lm-eval).
- :mod:`.fill`: :func:`fill_ids` / :func:`fill`: every blank of a text, left to right (``torchglm fill``).

transformers' ``model.generate`` also works, for the single-blank usage of the released model cards
(``GLMForConditionalGeneration.prepare_inputs_for_generation``); it is a compatibility path, tested against
:func:`fill_ids` for greedy and beam search.
"""

from .fill import BlankFill, FilledBlank, FillResult, fill, fill_ids
from .options import GenerationOptions, build_logits_processors
from .score import ContinuationScore, score
from .search import BlockSearch, Hypothesis, search_block
from .state import BufferLayer, DecodingState

__all__ = [
    "BlankFill",
    "BlockSearch",
    "BufferLayer",
    "ContinuationScore",
    "DecodingState",
    "FillResult",
    "FilledBlank",
    "GenerationOptions",
    "Hypothesis",
    "build_logits_processors",
    "fill",
    "fill_ids",
    "score",
    "search_block",
]

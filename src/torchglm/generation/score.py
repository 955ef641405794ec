"""Scoring continuations: each a part-B block after a context encoded once, scored token by token.

The primitive of zero-shot evaluation (LAMBADA, perplexity windows), cloze questions and lm-eval's
``loglikelihood``: a context (part A) is encoded into the KV cache once, forked for each of its continuations,
and every continuation is appended as one block; only the positions with a label go through the output layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from torchglm.layout import Block, block_columns

from .state import DecodingState, check_contexts


@dataclass
class ContinuationScore:
    """A continuation's log-likelihood under the model."""

    log_prob: float
    """Sum of log p(label) over the labelled tokens."""
    num_tokens: int
    """Labelled tokens."""
    is_greedy: bool
    """Every labelled token is the model's argmax there (LAMBADA's accuracy)."""
    token_log_probs: list[float]
    """log p(label) of each labelled token, in order."""


@torch.inference_mode()
def score(
    model,
    contexts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[Block]],
    *,
    pad_id: int = 0,
    batch_size: int = 16,
) -> list[list[ContinuationScore]]:
    """Score ``continuations[i]`` (blocks with labels) after ``contexts[i]`` (complete part-A ids).

    Each context is encoded once and shared by its continuations, which see it and themselves but not each
    other; ``batch_size`` contexts go through the model together. Returns the scores in the same nesting.

    Example (the blank at position 2 filled by "x y", tokens 7 and 8)::

        [[s]] = score(model, [[101, 5, 103, 6, 0]], [[Block.span(sop, [7, 8], position=2)]])
        s.log_prob, s.is_greedy
    """
    if len(contexts) != len(continuations):
        raise ValueError(f"{len(contexts)} contexts but {len(continuations)} lists of continuations")
    check_contexts(contexts, model.config)
    vocab = model.config.vocab_size
    for i, blocks in enumerate(continuations):
        for j, block in enumerate(blocks):
            if block.labels is None or all(t == -100 for t in block.labels):
                raise ValueError(f"continuation {j} of context {i} has no labels: nothing to score")
            if max((t for t in block.labels if t != -100), default=0) >= vocab or min(block.input_ids) < 0:
                raise ValueError(f"continuation {j} of context {i} holds ids outside the vocabulary [0, {vocab - 1}]")
    results: list[list[ContinuationScore]] = []
    for first in range(0, len(contexts), batch_size):
        chunk = range(first, min(first + batch_size, len(contexts)))
        results += _score_chunk(model, [contexts[i] for i in chunk], [continuations[i] for i in chunk], pad_id)
    return results


def _score_chunk(model, contexts, continuations, pad_id: int) -> list[list[ContinuationScore]]:
    counts = [len(blocks) for blocks in continuations]
    flat = [block for blocks in continuations for block in blocks]
    if not flat:
        return [[] for _ in contexts]
    width = max(len(block) for block in flat)
    state = DecodingState(model, contexts, pad_id=pad_id, capacity=width)
    device = state.visible.device
    state.reorder(
        torch.repeat_interleave(torch.arange(len(contexts), device=device), torch.tensor(counts, device=device))
    )
    columns = block_columns(flat, pad_id, device=device)
    hidden = state.append_columns(columns)  # [N, W, H]
    labels = columns["labels"]
    scored = labels != -100
    log_probs, is_argmax = model.target_log_probs(hidden[scored], labels[scored])
    per_row = scored.sum(1).tolist()
    log_probs, is_argmax = log_probs.double().split(per_row), is_argmax.split(per_row)
    scores = [
        ContinuationScore(float(lp.sum()), len(lp), bool(ok.all()), lp.tolist())
        for lp, ok in zip(log_probs, is_argmax, strict=True)
    ]
    out, at = [], 0
    for count in counts:
        out.append(scores[at : at + count])
        at += count
    return out

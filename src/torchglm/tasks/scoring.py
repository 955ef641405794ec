"""The two zero-shot scoring layouts every task family shares, built on ``generation.score``.

**An answer at a final blank** (LAMBADA, multiple choice, lm-eval's ``loglikelihood``): the context is part A,
``[CLS] context [M] [eos]``, and each answer is a part-B block ``[sop] answer[:-1]`` predicting ``answer`` at the
blank's position, block positions ``1..n``. Unidirectionally (the original's ``--unidirectional``), part A is
``[CLS] c0 [M] [eos]`` and the rest of the context goes into the block too, unscored, so the model reads it left
to right.

**Causal** (``causal=True``, for models pretrained with the ``clm`` objective: a GPT of GLM's shape): the text is
read left to right as the causal-LM pretraining builder lays it out, ``[CLS] context answer`` at positions
``0, 1, ...`` with block positions 0 and no bidirectional part. Part A is ``[CLS]`` alone (a one-token part A
attends exactly as ``sep = 0`` does) and the rest is one block whose every token predicts the next; no ``[M]``.

**Windows over a long text** (perplexity, lm-eval's ``loglikelihood_rolling``): windows of ``window`` tokens, the
k-th starting at ``k * stride``; each scores only the tokens no earlier window scored (the last ``stride``, the
first window all but its first token), so every token after the first is scored exactly once, seeing up to
``window - stride`` tokens before it. Bidirectionally the unscored tokens are part A ``[CLS] tokens [M]``;
unidirectionally part A is the window's first token and the rest are unscored block tokens; causally part A is
``[CLS]`` and the whole window is one left-to-right block.

[M] is ``[gMASK]`` when the tokenizer has task masks (models pretrained with them), ``[MASK]`` otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torchglm.errors import InputError
from torchglm.generation.score import ContinuationScore, score
from torchglm.layout import Block

Progress = Callable[[int], None]
"""Called with the number of items (examples, windows) finished since the last call."""


@dataclass(frozen=True)
class PromptIds:
    """The command-token ids the scoring layouts use."""

    cls: int
    mask: int
    eos: int
    sop: int
    pad: int

    @classmethod
    def from_tokenizer(cls, tokenizer, mask: str | None = None) -> PromptIds:
        """``mask``: ``"MASK"``, ``"sMASK"`` or ``"gMASK"``; default ``[gMASK]`` if the tokenizer has it."""
        if mask is None:
            mask_id = tokenizer.gmask_token_id if tokenizer.gmask_token_id is not None else tokenizer.mask_token_id
        else:
            ids = {
                "MASK": tokenizer.mask_token_id,
                "sMASK": tokenizer.smask_token_id,
                "gMASK": tokenizer.gmask_token_id,
            }
            if mask not in ids:
                raise InputError(f"mask {mask!r}: choose MASK, sMASK or gMASK")
            if ids[mask] is None:
                raise InputError(f"mask {mask}: this tokenizer has no [{mask}] (built without task masks)")
            mask_id = ids[mask]
        return cls(
            tokenizer.cls_token_id, mask_id, tokenizer.eos_token_id, tokenizer.sop_token_id, tokenizer.pad_token_id
        )


def encode(tokenizer, text: str) -> list[int]:
    """The original's ``EncodeAsIds``: no [CLS] or eos added, no warning about texts longer than the model."""
    return list(tokenizer.encode(text, add_special_tokens=False, verbose=False))


def layout_name(unidirectional: bool = False, causal: bool = False) -> str:
    """The scoring layout's name in results and summaries."""
    if unidirectional and causal:
        raise InputError("--unidirectional and --causal: choose one layout")
    return "causal" if causal else "unidirectional" if unidirectional else "bidirectional"


def model_positions(model) -> int:
    return int(model.config.max_sequence_length)


def check_seq_length(seq_length: int | None, model) -> int:
    """The sequence length to lay inputs out for: the model's positions by default, never more."""
    limit = model_positions(model)
    if seq_length is None:
        return limit
    if seq_length > limit:
        raise InputError(f"--seq-length {seq_length} is above the model's positions (max_sequence_length={limit})")
    if seq_length < 8:
        raise InputError(f"--seq-length {seq_length} is too short (at least 8)")
    return seq_length


# ---- an answer at a final blank --------------------------------------------------------------------------------


def final_blank_inputs(
    context: Sequence[int],
    answer: Sequence[int],
    ids: PromptIds,
    *,
    unidirectional: bool = False,
    causal: bool = False,
) -> tuple[list[int], Block]:
    """Part A and the scored block for ``answer`` after ``context`` (ids without [CLS])."""
    context, answer = list(context), list(answer)
    if not answer:
        raise ValueError("an empty answer has nothing to score")
    if causal:
        if not context:
            raise ValueError("causal scoring needs at least one context token before the answer")
        return causal_inputs([*context, *answer], len(context), ids)
    if not unidirectional:
        part_a = [ids.cls, *context, ids.mask, ids.eos]
        return part_a, Block.span(ids.sop, answer, position=len(part_a) - 2)
    head, rest = context[:1], context[1:]
    part_a = [ids.cls, *head, ids.mask, ids.eos]
    tokens = rest + answer
    labels = [-100] * len(rest) + answer
    return part_a, Block([ids.sop, *tokens[:-1]], len(part_a) - 2, 1, labels)


def causal_inputs(tokens: Sequence[int], first_scored: int, ids: PromptIds) -> tuple[list[int], Block]:
    """``[CLS] tokens`` left to right, ``tokens[first_scored:]`` scored (``first_scored >= 1``: each token is
    predicted by the one before it, and ``[CLS]`` in part A predicts nothing)."""
    tokens = list(tokens)
    if not 1 <= first_scored < len(tokens):
        raise ValueError(f"causal scoring of tokens {first_scored}.. of {len(tokens)}: nothing to score")
    n = len(tokens) - 1
    labels = [-100] * (first_scored - 1) + tokens[first_scored:]
    return [ids.cls], Block(tokens[:-1], list(range(1, n + 1)), [0] * n, labels)


def fit_context(context: Sequence[int], longest_answer: int, seq_length: int) -> list[int]:
    """The context's last tokens that fit: part A (``[CLS] context [M] [eos]``) and the block (``[sop]
    answer[:-1]``) together at most ``seq_length`` tokens, i.e. ``context + answer + 3``. The original cuts
    LAMBADA contexts from the left this way (its special-token count leaves out ``[sop]`` when there is an answer,
    whose last token is never fed)."""
    room = seq_length - longest_answer - 3
    if room < 0:
        raise InputError(f"an answer of {longest_answer} tokens does not fit --seq-length {seq_length}")
    return list(context)[len(context) - room :] if len(context) > room else list(context)


def score_final_blank(
    model,
    ids: PromptIds,
    contexts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[Sequence[int]]],
    *,
    seq_length: int,
    unidirectional: bool = False,
    causal: bool = False,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> list[list[ContinuationScore]]:
    """Score ``answers[i]`` (one or more token lists) at a blank after ``contexts[i]``, each context encoded once
    and shared by its answers. Contexts are cut from the left to fit ``seq_length``; contexts of similar length
    are batched together (results in the input order). ``progress`` counts answers."""
    rows: list[tuple[list[int], list[Block]]] = []
    owners: list[int] = []
    for owner, (context, choices) in enumerate(zip(contexts, answers, strict=True)):
        longest = max(len(a) for a in choices)
        fitted = fit_context(context, longest, seq_length)
        if causal and not fitted:
            raise InputError(f"an answer of {longest} tokens leaves no context token in "
                             f"--seq-length {seq_length}; the causal layout needs one before the answer")  # fmt: skip
        laid = [
            final_blank_inputs(fitted, answer, ids, unidirectional=unidirectional, causal=causal) for answer in choices
        ]
        if unidirectional or causal:  # the context lives in each answer's block: each answer is a row of its own
            rows += [(part_a, [block]) for part_a, block in laid]
            owners += [owner] * len(laid)
        else:
            rows.append((laid[0][0], [block for _, block in laid]))
            owners.append(owner)
    results: list[list[ContinuationScore]] = [[] for _ in contexts]
    scores = score_rows(model, rows, pad_id=ids.pad, batch_size=batch_size, progress=progress)
    for owner, row_scores in zip(owners, scores, strict=True):
        results[owner] += row_scores
    return results


def score_rows(
    model,
    rows: Sequence[tuple[Sequence[int], Sequence[Block]]],
    *,
    pad_id: int,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> list[list[ContinuationScore]]:
    """``generation.score`` over ``(part A, blocks)`` rows, up to ``batch_size`` rows at a time; results in the
    input order. ``progress`` counts blocks.

    A batch pads every part A to its longest and every block to the longest, so rows are sorted by part-A length
    and a batch is cut early where padding would add more than a quarter to its work (a text's first window, 3
    tokens of part A and a long block, is not batched with the later ones, half and half)."""
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be at least 1")
    results: list[list[ContinuationScore]] = [[] for _ in rows]
    for chunk in _batches(rows, batch_size):
        scored = score(
            model, [rows[r][0] for r in chunk], [rows[r][1] for r in chunk], pad_id=pad_id, batch_size=batch_size
        )
        for r, value in zip(chunk, scored, strict=True):
            results[r] = value
        if progress is not None:
            progress(sum(len(rows[r][1]) for r in chunk))
    return results


def _batches(rows, batch_size: int, waste: float = 1.25) -> list[list[int]]:
    """Row indices in batches: sorted by part-A length, a batch closed at ``batch_size`` rows or where padding
    (every part A to the longest, every block to the longest) would cost more than ``waste`` x the real work."""
    sizes = [(len(part_a), max(len(b) for b in blocks), len(blocks)) for part_a, blocks in rows]
    batches: list[list[int]] = []
    chunk: list[int] = []
    longest_a = longest_block = blocks = real = 0
    for r in sorted(range(len(rows)), key=lambda r: sizes[r][:2]):
        a, b, n = sizes[r]
        grown = (max(longest_a, a), max(longest_block, b), blocks + n, real + a + b * n)
        padded = grown[0] * (len(chunk) + 1) + grown[1] * grown[2]
        if chunk and (len(chunk) == batch_size or padded > waste * grown[3]):
            batches.append(chunk)
            chunk, grown = [], (a, b, n, a + b * n)
        chunk.append(r)
        longest_a, longest_block, blocks, real = grown
    if chunk:
        batches.append(chunk)
    return batches


# ---- windows over a long text ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowSpan:
    """Tokens ``[start, end)`` of the text; ``[first_scored, end)`` are scored."""

    start: int
    end: int
    first_scored: int

    @property
    def num_scored(self) -> int:
        return self.end - self.first_scored


def window_spans(num_tokens: int, window: int, stride: int, *, score_first: bool = False) -> list[WindowSpan]:
    """The windows covering a text of ``num_tokens``: every token from the second on (from the first with
    ``score_first``) scored by exactly one window, with up to ``window - stride`` tokens of context."""
    if not 1 <= stride < window:
        raise InputError(f"overlap {stride}: must be at least 1 and below the window of {window} tokens")
    spans = []
    if num_tokens > (0 if score_first else 1):
        spans.append(WindowSpan(0, min(window, num_tokens), 0 if score_first else 1))
    k = 1
    while k * stride + window - stride < num_tokens:
        start = k * stride
        spans.append(WindowSpan(start, min(start + window, num_tokens), start + window - stride))
        k += 1
    return spans


def window_inputs(
    tokens: Sequence[int], span: WindowSpan, ids: PromptIds, *, unidirectional: bool = False, causal: bool = False
) -> tuple[list[int], Block]:
    """Part A and the scored block of one window."""
    window = list(tokens[span.start : span.end])
    seen = span.first_scored - span.start  # tokens of the window before the scored ones
    if causal:
        if seen == 0:
            raise InputError("causal scoring cannot score a text's first token (nothing comes before it)")
        return causal_inputs(window, seen, ids)
    if not unidirectional or seen == 0:
        part_a = [ids.cls, *window[:seen], ids.mask]
        return part_a, Block.span(ids.sop, window[seen:], position=len(part_a) - 1)
    part_a = [ids.cls, window[0], ids.mask]
    rest = window[1:]
    labels = [-100] * (seen - 1) + window[seen:]
    return part_a, Block([ids.sop, *rest[:-1]], len(part_a) - 1, 1, labels)


def score_windows(
    model,
    ids: PromptIds,
    tokens: Sequence[int],
    spans: Sequence[WindowSpan],
    *,
    unidirectional: bool = False,
    causal: bool = False,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> list[ContinuationScore]:
    """Each window's score (``batch_size`` windows at a time)."""
    rows = []
    for span in spans:
        part_a, block = window_inputs(tokens, span, ids, unidirectional=unidirectional, causal=causal)
        rows.append((part_a, [block]))
    return [s for [s] in score_rows(model, rows, pad_id=ids.pad, batch_size=batch_size, progress=progress)]

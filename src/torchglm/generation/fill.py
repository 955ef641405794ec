"""Blank filling: every blank of a text filled left to right, each blank seeing the earlier fills.

GLM generates a blank as a part-B block (see :mod:`.search`). Here the context is encoded once into a KV cache
and each blank's block is appended to it, so a later blank sees the earlier blocks as the original interactive
generator let it: a block is ``<|startofpiece|>`` and its fill, minus the fill's last token when the fill was
cut at ``max_new_tokens`` (the original never runs the model on a token it will not continue from, and its
outputs depend on that).

Batches fill their blanks in rounds: round ``r`` fills blank ``r`` of every text that has one. A row that has no
blank ``r`` or has finished it feeds padding, which nobody sees. Beam search runs a round over ``texts x beams``
rows and at the round's end replaces the round's keys by the best fill of each text, fed as one block to every
beam of that text.

Two layers: ``fill_ids`` (the id-level API, any tokenizer) and ``fill`` (texts in, texts with their blanks
filled out; ``torchglm fill`` wraps it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import torch

from torchglm.layout import Block

from .options import GenerationOptions, build_logits_processors
from .search import BlockSearch, Hypothesis, search_block
from .state import DecodingState, check_contexts

TokenCallback = Callable[[int, int, int], None]  # (sample, blank, token id)


@dataclass
class BlankFill:
    """One generated blank: its index in the context, the fill's token ids (end token excluded) and score."""

    position: int
    token_ids: list[int]
    score: float
    """Summed log-probability of the fill and its end token under the processed scores (greedy, sampling);
    beam search divides it by (generated tokens) ** length_penalty."""
    stopped: bool
    """True: ended at an end token; False: cut at max_new_tokens."""
    hypotheses: list[Hypothesis] = field(default_factory=list)
    """Beam search with ``num_return_sequences`` > 1: the best fills found, best first (the first is this one);
    later blanks continue from the first."""


# ----------------------------------------------------------------------------------------------------------------
# Id-level API


@torch.inference_mode()
def fill_ids(
    model,
    contexts: Sequence[Sequence[int]],
    *,
    blank_ids: Sequence[int],
    sop_id: int,
    stop_ids: Sequence[int],
    pad_id: int = 0,
    options: GenerationOptions | None = None,
    on_token: TokenCallback | None = None,
    **overrides,
) -> list[list[BlankFill]]:
    """Fill every blank (a token in ``blank_ids``) of each context, left to right; returns the fills per context.

    ``contexts`` are complete part-A id lists (with [CLS] and eos where the model expects them), of any lengths.
    ``model`` is a ``GLMForConditionalGeneration`` (put it in eval mode). ``on_token(sample, blank, id)`` is
    called for each fill token as it is chosen (beam search: when the blank is done). Options come from
    ``options`` and keyword ``overrides`` (see ``GenerationOptions``).

    Example::

        fills = fill_ids(model, [[101, 1996, 103, 2938, 0]], blank_ids=[103, 30525, 30524], sop_id=30522,
                         stop_ids=[30523, 0], max_new_tokens=8)
    """
    options = GenerationOptions.resolve(options, overrides)
    contexts = [list(map(int, c)) for c in contexts]
    if not contexts:
        return []
    config = model.config
    blank_set = set(map(int, blank_ids))
    check_contexts(contexts, config, blank_set)
    if options.max_new_tokens > config.max_sequence_length:
        raise ValueError(
            f"max_new_tokens={options.max_new_tokens} is over the block positions the model has "
            f"(max_sequence_length={config.max_sequence_length})"
        )
    bad = [i for i in options.banned_ids if i >= config.vocab_size]
    if bad:
        raise ValueError(f"banned ids {bad} are outside the vocabulary [0, {config.vocab_size - 1}]")

    device = model.device
    blanks = [[i for i, t in enumerate(c) if t in blank_set] for c in contexts]
    processors, warpers = build_logits_processors(options, stop_ids, device)
    generator = None
    if options.do_sample and options.seed is not None:
        generator = torch.Generator(device=device).manual_seed(options.seed)
    rounds, beams = max(map(len, blanks)), options.num_beams
    # each round adds at most max_new_tokens keys: sop and the fed tokens (beam search: the best block, re-fed)
    state = DecodingState(model, contexts, pad_id=pad_id, capacity=rounds * options.max_new_tokens)
    state.fork(beams)
    stop_tensor = torch.tensor(sorted(set(map(int, stop_ids))), dtype=torch.long, device=device)
    results: list[list[BlankFill]] = [[] for _ in contexts]
    for r in range(rounds):
        positions = [b[r] if len(b) > r else 0 for b in blanks]
        start = state.length
        found = search_block(
            BlockSearch(
                state=state,
                active=torch.tensor([len(b) > r for b in blanks], device=device),
                text_positions=torch.tensor(positions, device=device),
                start_id=sop_id,
                stop_ids=stop_tensor,
                options=options,
                processors=processors,
                warpers=warpers,
                generator=generator,
                on_token=None if on_token is None else (lambda row, token, r=r: on_token(row, r, token)),
            )
        )
        for i, hypotheses in enumerate(found):
            if hypotheses is not None:
                best = hypotheses[0]
                results[i].append(BlankFill(positions[i], best.token_ids, best.score, best.stopped, hypotheses))
        if beams > 1:  # the round's keys make way for each text's best fill, fed to all its beams
            state.crop(start)
            commit = []
            for i, hypotheses in enumerate(found):
                best = hypotheses[0] if hypotheses else None
                if best is not None and on_token is not None:
                    for token in best.token_ids:
                        on_token(i, r, token)
                kept = None if best is None else best.token_ids if best.stopped else best.token_ids[:-1]
                commit += [None if kept is None else Block([sop_id, *kept], positions[i])] * beams
            state.append(commit)
    return results


# ----------------------------------------------------------------------------------------------------------------
# Text-level API


@dataclass
class FilledBlank:
    """One blank of a filled text: its spelling, the fill and where it sits in the filled text."""

    mask: str
    """The blank as written: [MASK], [sMASK] or [gMASK]."""
    position: int
    """Index of the blank token in ``FillResult.context_ids``."""
    text: str
    start: int
    """Character span ``[start, end)`` of the fill in ``FillResult.filled``."""
    end: int
    token_ids: list[int]
    score: float
    stopped: bool


@dataclass
class FillResult:
    text: str
    """The text as given."""
    filled: str
    """The text with each blank replaced by its fill (a text without a blank: continued after a space)."""
    blanks: list[FilledBlank]
    context_ids: list[int]

    def to_dict(self) -> dict:
        return asdict(self)


_MASK_LIKE = re.compile(r"\[\s*\w*mask\w*\s*\]", re.IGNORECASE)


@dataclass
class _Text:
    pieces: list[str]  # the text around the blanks: len(masks) + 1 pieces
    masks: list[str]
    appended: bool  # the text had no blank: one was appended
    context: list[int]


def _prepare_text(tokenizer, text, index: int, max_length: int, truncate: bool) -> _Text:
    """Split a text at its blanks and build its context: [CLS] + tokens (+ eos unless it ends with [gMASK])."""
    if not isinstance(text, str):
        raise TypeError(f"text {index} is a {type(text).__name__}, not a str")
    if not text.strip():
        raise ValueError(f"text {index} is empty")
    spellings = tokenizer.convert_ids_to_tokens(list(tokenizer.mask_token_ids))
    for found in _MASK_LIKE.findall(text):
        if found not in spellings:
            raise ValueError(
                f"text {index}: unknown blank {found!r}; this tokenizer's blanks are {', '.join(spellings)}"
            )
    parts = re.split("(" + "|".join(map(re.escape, spellings)) + ")", text)
    pieces, masks = parts[0::2], parts[1::2]
    appended = not masks
    if appended:  # continue the text: generate into a [gMASK] (a plain [MASK] for families without task masks)
        gmask = tokenizer.gmask_token_id
        mask = tokenizer.convert_ids_to_tokens(gmask if gmask is not None else tokenizer.mask_token_id)
        pieces, masks, text = [text + " ", ""], [mask], f"{text} {mask}"
    ids = tokenizer.encode(text, add_special_tokens=False)
    blank_ids = set(tokenizer.mask_token_ids)
    if sum(t in blank_ids for t in ids) != len(masks):
        raise ValueError(f"text {index}: the tokenizer did not keep each of its {len(masks)} blank(s) as one token")
    context = [tokenizer.cls_token_id, *ids]
    if ids[-1] != tokenizer.gmask_token_id:
        context.append(tokenizer.eos_token_id)
    if len(context) > max_length:
        if not truncate:
            raise ValueError(
                f"text {index} takes {len(context)} tokens with [CLS] and eos; the model's positions stop at "
                f"{max_length} (truncate=True drops tokens from the left)"
            )
        cut = len(context) - max_length
        if any(t in blank_ids for t in context[1 : 1 + cut]):
            raise ValueError(f"text {index}: truncating it to {max_length} tokens from the left would drop a blank")
        context = [context[0], *context[1 + cut :]]
    return _Text(pieces, masks, appended, context)


def fill(
    model,
    tokenizer,
    texts: str | Sequence[str],
    *,
    options: GenerationOptions | None = None,
    truncate: bool = False,
    batch_size: int = 16,
    on_token: TokenCallback | None = None,
    **overrides,
) -> FillResult | list[FillResult]:
    """Fill every [MASK], [sMASK] and [gMASK] of each text, left to right, each blank seeing the earlier fills.

    A text without a blank gets `` [gMASK]`` appended, i.e. is continued. Texts are decoded ``batch_size`` at a
    time. A text longer than the model's positions is an error, or loses tokens from its left with
    ``truncate=True``. Options as in ``GenerationOptions`` (``options=`` or keywords); ids past the tokenizer's
    vocabulary (the model pads its vocabulary) are never generated. Returns a ``FillResult`` per text (one for
    a single str).

    Example::

        result = fill(model, tokenizer, "Tsinghua University is located in [MASK].", max_new_tokens=16)
        print(result.filled)
    """
    options = GenerationOptions.resolve(options, overrides)
    single = isinstance(texts, str)
    texts = [texts] if single else list(texts)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    vocab = model.config.vocab_size
    unreachable = tuple(range(len(tokenizer), vocab))  # padding rows of the embedding: no text to decode
    options = replace(options, banned_ids=tuple(sorted(set(options.banned_ids) | set(unreachable))))
    prepared = [
        _prepare_text(tokenizer, text, i, model.config.max_sequence_length, truncate) for i, text in enumerate(texts)
    ]
    results = []
    for first in range(0, len(texts), batch_size):
        chunk = prepared[first : first + batch_size]

        def report(sample, blank, token, first=first):
            on_token(first + sample, blank, token)

        fills = fill_ids(
            model,
            [p.context for p in chunk],
            blank_ids=tokenizer.mask_token_ids,
            sop_id=tokenizer.sop_token_id,
            stop_ids=[tokenizer.eop_token_id, tokenizer.eos_token_id],
            pad_id=tokenizer.pad_token_id,
            options=options,
            on_token=report if on_token is not None else None,
        )
        for i, (item, blank_fills) in enumerate(zip(chunk, fills, strict=True)):
            results.append(_assemble(tokenizer, texts[first + i], item, blank_fills))
    return results[0] if single else results


def _assemble(tokenizer, text: str, item: _Text, blank_fills: list[BlankFill]) -> FillResult:
    """Put the decoded fills in place of the blanks' spellings in the text."""
    out, blanks = [item.pieces[0]], []
    cursor = len(item.pieces[0])
    for k, (mask, blank_fill) in enumerate(zip(item.masks, blank_fills, strict=True)):
        fill_text = tokenizer.decode(blank_fill.token_ids).strip()
        if item.appended and not fill_text:  # nothing to continue with: no trailing space either
            out[0] = out[0].rstrip(" ")
            cursor = len(out[0])
        blanks.append(
            FilledBlank(
                mask=mask,
                position=blank_fill.position,
                text=fill_text,
                start=cursor,
                end=cursor + len(fill_text),
                token_ids=blank_fill.token_ids,
                score=blank_fill.score,
                stopped=blank_fill.stopped,
            )
        )
        out += [fill_text, item.pieces[k + 1]]
        cursor += len(fill_text) + len(item.pieces[k + 1])
    return FillResult(text=text, filled="".join(out), blanks=blanks, context_ids=item.context)

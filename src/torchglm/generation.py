"""Decoding for GLM: fill every blank of a text, left to right, by greedy search, beam search or sampling.

GLM generates a blank as a part-B block: ``<|startofpiece|>`` at position (blank position, block position 1),
then one token per step at block positions 2, 3, ..., each seeing the whole context (part A, bidirectional) and
every token fed before it. Here the context is encoded once into a KV cache and each blank's tokens are appended
to it, so a later blank sees the earlier blocks as the original interactive generator let it: a block is
``<|startofpiece|>`` and its fill, minus the fill's last token when the fill was cut at ``max_new_tokens`` (the
original never runs the model on a token it will not continue from, and its outputs depend on that).

Batches fill their blanks in rounds: round ``r`` fills blank ``r`` of every text that has one, one token per
step for all rows. A row that has no blank ``r`` or has finished it feeds padding; ``_DecodingState`` remembers
which cached keys each row may see, so padding (of short contexts or of finished rows) is never attended.
Beam search runs a round over ``texts x beams`` rows, reorders the cache as beams move, and at the round's end
replaces the round's keys by the best fill of each text, fed as one block to every beam of that text.

Three layers: ``GenerationOptions`` (every knob, checked at once), ``fill_ids`` (the id-level core, any
tokenizer) and ``fill`` (texts in, texts with their blanks filled out; ``torchglm fill`` wraps it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn.functional as F
from transformers import Cache, DynamicLayer
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

TokenCallback = Callable[[int, int, int], None]  # (sample, blank, token id)

# ----------------------------------------------------------------------------------------------------------------
# Options


@dataclass
class GenerationOptions:
    """How each blank is decoded. Every limit counts tokens of one blank, never of the whole text.

    Example::

        options = GenerationOptions(max_new_tokens=32, num_beams=4, no_repeat_ngram_size=3)
        results = fill(model, tokenizer, ["Tsinghua University is located in [MASK]."], options=options)
    """

    max_new_tokens: int = 64
    """Most tokens generated for one blank, its end token (eop/eos) not counted."""
    min_new_tokens: int = 0
    """Fewest tokens for one blank: the end tokens are banned until then."""
    num_beams: int = 1
    """1: greedy search or sampling; more: beam search over that many beams per text."""
    length_penalty: float = 1.0
    """Beam search ranks a finished fill by its summed log-probability / (generated tokens) ** length_penalty."""
    early_stopping: bool | str = False
    """Beam search: True ends a blank once num_beams fills finished; False once no running beam is likely to
    beat them (transformers' heuristic); "never" once none can (exact for length_penalty <= 0)."""
    no_repeat_ngram_size: int = 0
    """Ban any n-gram of this size from repeating inside one fill (0: off)."""
    repetition_penalty: float = 1.0
    """Divide (or multiply, for negative scores) the scores of tokens already in the fill (1.0: off)."""
    banned_ids: tuple[int, ...] = ()
    """Token ids never generated (glm-10b-chinese needs 50009 banned)."""
    do_sample: bool = False
    """Sample each token instead of taking the most likely one; temperature, top_k and top_p shape it."""
    temperature: float = 1.0
    top_k: int = 0
    """Sample among the k most likely tokens only (0: all)."""
    top_p: float = 1.0
    """Sample among the most likely tokens whose probabilities sum to top_p (1.0: all)."""
    seed: int | None = None
    """Seed of the sampling generator: the same seed and inputs give the same fills (None: torch's global RNG)."""

    def __post_init__(self):
        self.banned_ids = tuple(int(i) for i in self.banned_ids)
        for name in ("max_new_tokens", "num_beams"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GenerationOptions.{name} must be an integer >= 1, got {value!r}")
        for name in ("min_new_tokens", "no_repeat_ngram_size", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"GenerationOptions.{name} must be an integer >= 0, got {value!r}")
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"GenerationOptions.min_new_tokens ({self.min_new_tokens}) is over "
                f"max_new_tokens ({self.max_new_tokens})"
            )
        if not self.temperature > 0:
            raise ValueError(f"GenerationOptions.temperature must be > 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"GenerationOptions.top_p must be in (0, 1], got {self.top_p!r}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"GenerationOptions.repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(
                f"GenerationOptions.early_stopping must be True, False or 'never', got {self.early_stopping!r}"
            )
        if self.do_sample and self.num_beams > 1:
            raise ValueError("GenerationOptions: sampling with num_beams > 1 is not supported; pick one")
        if any(i < 0 for i in self.banned_ids):
            raise ValueError(f"GenerationOptions.banned_ids must be token ids >= 0, got {list(self.banned_ids)}")

    @classmethod
    def resolve(cls, options: GenerationOptions | None, overrides: dict) -> GenerationOptions:
        """``options`` (or the defaults) with keyword overrides; an unknown keyword is an error naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown generation option(s) {unknown}; known: {sorted(known)}")
        return replace(options or cls(), **overrides)


def build_logits_processors(
    options: GenerationOptions, stop_ids: Sequence[int], device
) -> tuple[LogitsProcessorList, LogitsProcessorList]:
    """``(processors, warpers)`` from transformers' classes, in the order ``generate`` applies them.

    Processors shape the scores for every strategy (beam search applies them to log-probabilities, as
    transformers does); warpers only reshape the sampling distribution. They are called with the blank's own
    block (``<|startofpiece|>`` and the tokens so far) as ``input_ids``: repetition is judged inside a fill, not
    against the context, which a fill is often meant to echo.
    """
    processors = LogitsProcessorList()
    if options.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(float(options.repetition_penalty), prompt_ignore_length=1))
    if options.no_repeat_ngram_size:
        processors.append(NoRepeatNGramLogitsProcessor(options.no_repeat_ngram_size))
    if options.banned_ids:
        processors.append(SuppressTokensLogitsProcessor(options.banned_ids, device=device))
    if options.min_new_tokens:
        processors.append(MinNewTokensLengthLogitsProcessor(1, options.min_new_tokens, list(stop_ids), device=device))
    warpers = LogitsProcessorList()
    if options.do_sample:
        if options.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(float(options.temperature)))
        if options.top_k:
            warpers.append(TopKLogitsWarper(options.top_k))
        if options.top_p < 1.0:
            warpers.append(TopPLogitsWarper(float(options.top_p)))
    return processors, warpers


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


# ----------------------------------------------------------------------------------------------------------------
# The cache of a batch and what each row may see


class _BufferLayer(DynamicLayer):
    """A cache layer whose keys and values live in buffers sized for the whole decoding up front.

    ``DynamicLayer`` appends with ``torch.cat``, copying the whole cache at every step: at 16 texts of 512 tokens
    that copy costs as much as the step's maths. Here a step writes its own token only and attention reads a view.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, _, dim = key_states.shape
        self.key_buffer = key_states.new_empty(batch, heads, self.capacity, dim)
        self.value_buffer = value_states.new_empty(batch, heads, self.capacity, value_states.shape[-1])
        self.device, self.is_initialized = key_states.device, True
        self._refresh()

    def _refresh(self):
        self.keys = self.key_buffer[:, :, : self.length]
        self.values = self.value_buffer[:, :, : self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"decoding cache full: {end} keys for {self.capacity} places")
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self._refresh()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def crop(self, tokens_to_remove: int) -> None:
        self.length -= abs(tokens_to_remove)
        if self.is_initialized:
            self._refresh()

    def _rebuffer(self, fn):
        if self.is_initialized:
            self.key_buffer, self.value_buffer = fn(self.key_buffer), fn(self.value_buffer)
            self._refresh()

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        self._rebuffer(lambda buffer: buffer.index_select(0, beam_idx.to(buffer.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._rebuffer(lambda buffer: buffer.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._rebuffer(lambda buffer: buffer[indices])


class _DecodingState:
    """A batch's KV cache and ``visible [rows, keys]``: which cached keys each row may attend to.

    A key is hidden when it is padding after a short context or was fed by a row with nothing to generate. While
    every key is visible (one text, or equal lengths and no finished rows) the model gets no mask at all, which
    keeps SDPA on its fastest path.
    """

    def __init__(self, model, contexts: list[list[int]], pad_id: int, copies: int, new_keys: int):
        self.model, self.pad_id = model, pad_id
        device = model.device
        lengths = torch.tensor([len(c) for c in contexts], device=device)
        batch, length = len(contexts), int(lengths.max())
        ids = torch.full((batch, length), pad_id, dtype=torch.long, device=device)
        for i, context in enumerate(contexts):
            ids[i, : len(context)] = torch.tensor(context, dtype=torch.long, device=device)
        positions = torch.arange(length, device=device)
        position_ids = torch.stack([positions, torch.zeros_like(positions)]).expand(batch, 2, length)
        self.visible = positions[None, :] < lengths[:, None]  # [B, L]
        self.padded = bool((lengths != length).any())
        # Part A is bidirectional: each context token sees its whole context and no padding.
        mask = self.visible[:, None, None, :].expand(batch, 1, length, length) if self.padded else length
        capacity = length + new_keys
        self.cache = Cache(layers=[_BufferLayer(capacity) for _ in range(model.config.num_layers)])
        model.glm(ids, position_ids, mask, cache=self.cache, use_cache=True)
        if copies > 1:  # beams: every beam of a text starts from the same context
            self.cache.batch_repeat_interleave(copies)
            self.visible = self.visible.repeat_interleave(copies, dim=0)

    @property
    def length(self) -> int:
        return self.visible.shape[1]

    def step(self, tokens: torch.Tensor, text_positions: torch.Tensor, block_position: int, feeds: torch.Tensor):
        """Feed one token per row at (text position, block position); rows with ``feeds`` False feed padding
        whose key nobody sees. Returns the next-token logits ``[R, V]``."""
        self.visible = torch.cat([self.visible, feeds[:, None]], dim=1)
        if not self.padded and not bool(feeds.all()):
            self.padded = True
        position_ids = torch.stack([text_positions, torch.full_like(text_positions, block_position)], dim=1)
        mask = self.visible[:, None, None, :] if self.padded else None  # [R, 1, 1, K]
        out = self.model(tokens[:, None], position_ids[:, :, None], mask, cache=self.cache, use_cache=True)
        return out.logits[:, -1]  # [R, V]

    def reorder(self, rows: torch.Tensor):
        """Rows become copies of ``rows`` (beam search): the cache and the visibility follow."""
        self.cache.reorder_cache(rows)
        self.visible = self.visible.index_select(0, rows)

    def crop(self, length: int):
        """Forget every key from ``length`` on (the round's beams, before the best fill is fed)."""
        self.cache.crop(length - self.length)
        self.visible = self.visible[:, :length]

    def append_blocks(self, blocks: list[list[int]], text_positions: torch.Tensor):
        """Feed a whole block per row at once (causal inside the block); shorter blocks are padded, hidden."""
        width = max(len(b) for b in blocks)
        if width == 0:
            return
        device, rows, start = self.visible.device, len(blocks), self.length
        ids = torch.full((rows, width), self.pad_id, dtype=torch.long, device=device)
        for r, block in enumerate(blocks):
            ids[r, : len(block)] = torch.tensor(block, dtype=torch.long, device=device)
        lengths = torch.tensor([len(b) for b in blocks], device=device)
        steps = torch.arange(width, device=device)
        position_ids = torch.stack(
            [text_positions[:, None].expand(rows, width), (steps + 1)[None].expand(rows, width)], dim=1
        )  # [R, 2, W]
        new_visible = steps[None, :] < lengths[:, None]  # [R, W]
        causal = torch.tril(torch.ones(width, width, dtype=torch.bool, device=device))
        mask = torch.cat(
            [self.visible[:, None, :].expand(rows, width, start), causal[None] & new_visible[:, None, :]], dim=2
        )[:, None]  # [R, 1, W, start + W]
        self.visible = torch.cat([self.visible, new_visible], dim=1)
        self.padded = self.padded or not bool(new_visible.all())
        self.model.glm(ids, position_ids, mask if self.padded else None, cache=self.cache, use_cache=True)


# ----------------------------------------------------------------------------------------------------------------
# One round: blank r of every text


@dataclass
class _Round:
    state: _DecodingState
    active: torch.Tensor  # [B] bool: the text has a blank in this round
    text_positions: torch.Tensor  # [B] the blank's index in the context (0 for inactive texts)
    blank: int
    sop_id: int
    stop_ids: torch.Tensor
    options: GenerationOptions
    processors: LogitsProcessorList
    warpers: LogitsProcessorList
    generator: torch.Generator | None = None
    on_token: TokenCallback | None = None


def _search_round(rnd: _Round) -> list[BlankFill | None]:
    """Greedy search or sampling: each row takes its own next token until an end token or max_new_tokens."""
    state, options, pad = rnd.state, rnd.options, rnd.state.pad_id
    rows, limit = len(rnd.active), options.max_new_tokens
    device = rnd.active.device
    running = rnd.active.clone()
    tokens = torch.where(running, rnd.sop_id, pad)
    block = tokens[:, None]  # [R, 1 + k]: what the processors see
    fill = torch.full((rows, limit), pad, dtype=torch.long, device=device)
    lengths = torch.zeros(rows, dtype=torch.long, device=device)
    scores = torch.zeros(rows, dtype=torch.float32, device=device)
    stopped = torch.zeros(rows, dtype=torch.bool, device=device)
    for k in range(limit):
        logits = state.step(tokens, rnd.text_positions, k + 1, running)
        processed = rnd.processors(block, logits.float())
        if options.do_sample:
            probs = F.softmax(rnd.warpers(block, processed), dim=-1)
            chosen = torch.multinomial(probs, 1, generator=rnd.generator).squeeze(1)
        else:
            chosen = processed.argmax(dim=-1)
        log_prob = F.log_softmax(processed, dim=-1).gather(1, chosen[:, None]).squeeze(1)
        scores += torch.where(running, log_prob, 0.0)
        is_stop = torch.isin(chosen, rnd.stop_ids)
        stopped |= running & is_stop
        running = running & ~is_stop
        fill[:, k] = torch.where(running, chosen, pad)
        lengths += running.long()
        if rnd.on_token is not None:
            for row in torch.nonzero(running).flatten().tolist():
                rnd.on_token(row, rnd.blank, int(chosen[row]))
        if k + 1 == limit or not bool(running.any()):
            break
        tokens = torch.where(running, chosen, pad)
        block = torch.cat([block, tokens[:, None]], dim=1)
    # The last token of a fill cut at the limit is never fed: later blanks do not see it, as in the original.
    return [
        BlankFill(int(rnd.text_positions[r]), fill[r, : lengths[r]].tolist(), float(scores[r]), bool(stopped[r]))
        if rnd.active[r]
        else None
        for r in range(rows)
    ]


def _beam_round(rnd: _Round) -> list[BlankFill | None]:
    """Beam search over ``texts x beams`` rows, vectorized; finished fills are kept per text, best first.

    As in transformers: each step keeps the 2 * beams best continuations of all beams; those of the first
    ``beams`` that end (an end token, or max_new_tokens reached) join the finished fills, scored by summed
    log-probability / (generated tokens, end token included) ** length_penalty; the best ``beams`` that do not
    end continue. A text is done by ``early_stopping`` (see GenerationOptions) or at max_new_tokens.
    """
    state, options = rnd.state, rnd.options
    beams, limit, penalty = options.num_beams, options.max_new_tokens, options.length_penalty
    batch, pad, device = len(rnd.active), rnd.state.pad_id, rnd.active.device
    start = state.length
    row_active = rnd.active.repeat_interleave(beams)  # [B*K]
    row_positions = rnd.text_positions.repeat_interleave(beams)
    tokens = torch.where(row_active, rnd.sop_id, pad)
    block = tokens[:, None]  # [B*K, 1 + k]
    beam_scores = torch.full((batch, beams), float("-inf"), device=device)
    beam_scores[:, 0] = 0.0  # all beams hold the same block at first: let only one of them expand
    done = ~rnd.active
    best_scores = torch.full((batch, beams), float("-inf"), device=device)  # finished fills, best first
    best_tokens = torch.full((batch, beams, limit), pad, dtype=torch.long, device=device)
    best_lengths = torch.zeros((batch, beams), dtype=torch.long, device=device)
    best_stopped = torch.zeros((batch, beams), dtype=torch.bool, device=device)
    first_k = torch.arange(2 * beams, device=device) < beams
    row_offsets = torch.arange(batch, device=device)[:, None] * beams
    for k in range(limit):
        feeds = ~done.repeat_interleave(beams)
        logits = state.step(tokens, row_positions, k + 1, feeds)
        log_probs = rnd.processors(block, F.log_softmax(logits.float(), dim=-1))  # [B*K, V]
        vocab = log_probs.shape[-1]
        candidates = (log_probs + beam_scores.view(-1, 1)).view(batch, beams * vocab)
        top_scores, top_index = candidates.topk(min(2 * beams, beams * vocab), dim=1)  # [B, 2K], best first
        top_beam, top_token = top_index // vocab, top_index % vocab
        is_stop = torch.isin(top_token, rnd.stop_ids)
        ends = is_stop | (k + 1 == limit)

        # finished fills: the candidate's block (minus sop) plus its token unless it is the end token
        history = block[:, 1:].view(batch, beams, k).gather(1, top_beam[..., None].expand(-1, -1, k))
        candidate_tokens = torch.cat([history, torch.where(is_stop, pad, top_token)[..., None]], dim=2)
        candidate_tokens = F.pad(candidate_tokens, (0, limit - k - 1), value=pad)  # [B, 2K, limit]
        finishing = ends & first_k[: ends.shape[1]] & ~done[:, None] & torch.isfinite(top_scores)
        normalized = torch.where(finishing, top_scores / float(k + 1) ** penalty, float("-inf"))
        merged_scores = torch.cat([best_scores, normalized], dim=1)
        best_scores, keep = merged_scores.topk(beams, dim=1)
        best_tokens = torch.cat([best_tokens, candidate_tokens], dim=1).gather(1, keep[..., None].expand(-1, -1, limit))
        best_lengths = torch.cat([best_lengths, (k + 1 - is_stop.long())], dim=1).gather(1, keep)
        best_stopped = torch.cat([best_stopped, is_stop], dim=1).gather(1, keep)

        # running beams: the best continuations that do not end
        running_scores = torch.where(ends, float("-inf"), top_scores)
        beam_scores, order = running_scores.topk(beams, dim=1)
        next_beam, next_token = top_beam.gather(1, order), top_token.gather(1, order)
        full = torch.isfinite(best_scores).all(dim=1)
        if options.early_stopping is True:
            done = done | full
        else:
            horizon = limit if options.early_stopping == "never" and penalty > 0 else k + 1
            best_possible = beam_scores[:, 0] / float(horizon) ** penalty
            done = done | (full & (best_possible <= best_scores[:, -1]))
        if k + 1 == limit or bool(done.all()):
            break
        rows = (row_offsets + next_beam).flatten()
        state.reorder(rows)
        tokens = next_token.flatten()
        block = torch.cat([block.index_select(0, rows), tokens[:, None]], dim=1)

    # Replace the round's keys by each text's best fill, fed to all its beams (later blanks start from it).
    results: list[BlankFill | None] = []
    blocks: list[list[int]] = []
    for b in range(batch):
        if not rnd.active[b]:
            results.append(None)
            blocks += [[]] * beams
            continue
        n, ended = int(best_lengths[b, 0]), bool(best_stopped[b, 0])
        fill_tokens = best_tokens[b, 0, :n].tolist()
        results.append(BlankFill(int(rnd.text_positions[b]), fill_tokens, float(best_scores[b, 0]), ended))
        if rnd.on_token is not None:
            for token in fill_tokens:
                rnd.on_token(b, rnd.blank, token)
        blocks += [[rnd.sop_id, *(fill_tokens if ended else fill_tokens[:-1])]] * beams
    state.crop(start)
    state.append_blocks(blocks, row_positions)
    return results


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
    blanks = [[i for i, t in enumerate(c) if t in blank_set] for c in contexts]
    for i, (context, found) in enumerate(zip(contexts, blanks, strict=True)):
        if not context:
            raise ValueError(f"context {i} is empty")
        if min(context) < 0 or max(context) >= config.vocab_size:
            raise ValueError(f"context {i} holds ids outside the vocabulary [0, {config.vocab_size - 1}]")
        if len(context) > config.max_sequence_length:
            raise ValueError(
                f"context {i} has {len(context)} tokens; the model's positions stop at "
                f"max_sequence_length={config.max_sequence_length}"
            )
        if not found:
            raise ValueError(f"context {i} has no blank (none of the ids {sorted(blank_set)})")
    if options.max_new_tokens > config.max_sequence_length:
        raise ValueError(
            f"max_new_tokens={options.max_new_tokens} is over the block positions the model has "
            f"(max_sequence_length={config.max_sequence_length})"
        )
    bad = [i for i in options.banned_ids if i >= config.vocab_size]
    if bad:
        raise ValueError(f"banned ids {bad} are outside the vocabulary [0, {config.vocab_size - 1}]")

    device = model.device
    processors, warpers = build_logits_processors(options, stop_ids, device)
    generator = None
    if options.do_sample and options.seed is not None:
        generator = torch.Generator(device=device).manual_seed(options.seed)
    rounds = max(map(len, blanks))
    # each round adds at most max_new_tokens keys: sop and the fed tokens (beam search: the best block, re-fed)
    state = _DecodingState(model, contexts, pad_id, options.num_beams, rounds * options.max_new_tokens)
    stop_tensor = torch.tensor(sorted(set(map(int, stop_ids))), dtype=torch.long, device=device)
    results: list[list[BlankFill]] = [[] for _ in contexts]
    for r in range(rounds):
        rnd = _Round(
            state=state,
            active=torch.tensor([len(b) > r for b in blanks], device=device),
            text_positions=torch.tensor([b[r] if len(b) > r else 0 for b in blanks], device=device),
            blank=r,
            sop_id=sop_id,
            stop_ids=stop_tensor,
            options=options,
            processors=processors,
            warpers=warpers,
            generator=generator,
            on_token=on_token,
        )
        fills = _beam_round(rnd) if options.num_beams > 1 else _search_round(rnd)
        for i, blank_fill in enumerate(fills):
            if blank_fill is not None:
                results[i].append(blank_fill)
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

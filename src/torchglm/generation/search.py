"""Search strategies over one part-B block: greedy search, sampling, beam search.

Every text of a :class:`~torchglm.generation.state.DecodingState` that is ``active`` decodes one block at its
blank: ``<|startofpiece|>`` at (blank position, block position 1), then one token per step at block positions
2, 3, ..., until an end token or ``max_new_tokens``. Greedy search and sampling use one row per text; beam search
``num_beams`` consecutive rows per text (``state.fork(num_beams)`` first). The processors see the tokens generated
so far for the block as ``input_ids``: repetition is judged inside a fill, not against the context.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.generation.logits_process import LogitsProcessorList

from .options import GenerationOptions
from .state import DecodingState


@dataclass
class Hypothesis:
    """One decoded block: its tokens (start and end token excluded), score, and how it ended."""

    token_ids: list[int]
    score: float
    """Summed log-probability of the tokens and the end token under the processed scores; beam search divides it
    by (generated tokens, end token included) ** length_penalty."""
    stopped: bool
    """True: ended at an end token; False: cut at max_new_tokens."""


@dataclass
class BlockSearch:
    """What one block search needs: the state, which texts decode and where, and how."""

    state: DecodingState
    active: torch.Tensor  # [T] bool: the text decodes a block now
    text_positions: torch.Tensor  # [T] the blank's text position (0 for inactive texts)
    start_id: int
    stop_ids: torch.Tensor
    options: GenerationOptions
    processors: LogitsProcessorList
    warpers: LogitsProcessorList
    generator: torch.Generator | None = None
    on_token: Callable[[int, int], None] | None = None
    """Greedy search and sampling: called with (text, token id) as each token is chosen."""


def search_block(search: BlockSearch) -> list[list[Hypothesis] | None]:
    """Decode one block of every active text; per text the best ``num_return_sequences`` hypotheses, best first
    (one for greedy search and sampling), None for inactive texts. Beam search leaves the cache holding the final
    beams' keys: crop it to its length before the search to feed something else."""
    if search.options.num_beams > 1 or search.options.beam_scorer == "glm":
        return _beam_search(search)
    return _greedy_or_sample(search)


def _greedy_or_sample(search: BlockSearch) -> list[list[Hypothesis] | None]:
    """Each row takes its own next token (argmax or a sample) until an end token or max_new_tokens."""
    state, options, pad = search.state, search.options, search.state.pad_id
    rows, limit = len(search.active), options.max_new_tokens
    device = search.active.device
    running = search.active.clone()
    tokens = torch.where(running, search.start_id, pad)
    block = tokens[:, None]  # [R, 1 + k]: what the processors see
    fill = torch.full((rows, limit), pad, dtype=torch.long, device=device)
    lengths = torch.zeros(rows, dtype=torch.long, device=device)
    scores = torch.zeros(rows, dtype=torch.float32, device=device)
    stopped = torch.zeros(rows, dtype=torch.bool, device=device)
    for k in range(limit):
        logits = state.step(tokens, search.text_positions, k + 1, running)
        processed = search.processors(block[:, 1:], logits.float())
        if options.do_sample:
            probs = F.softmax(search.warpers(block, processed), dim=-1)
            chosen = torch.multinomial(probs, 1, generator=search.generator).squeeze(1)
        else:
            chosen = processed.argmax(dim=-1)
        log_prob = F.log_softmax(processed, dim=-1).gather(1, chosen[:, None]).squeeze(1)
        scores += torch.where(running, log_prob, 0.0)
        is_stop = torch.isin(chosen, search.stop_ids)
        stopped |= running & is_stop
        running = running & ~is_stop
        fill[:, k] = torch.where(running, chosen, pad)
        lengths += running.long()
        if search.on_token is not None:
            for row in torch.nonzero(running).flatten().tolist():
                search.on_token(row, int(chosen[row]))
        if k + 1 == limit or not bool(running.any()):
            break
        tokens = torch.where(running, chosen, pad)
        block = torch.cat([block, tokens[:, None]], dim=1)
    # The last token of a fill cut at the limit is never fed: the cache does not hold it, as in the original.
    return [
        [Hypothesis(fill[r, : lengths[r]].tolist(), float(scores[r]), bool(stopped[r]))] if search.active[r] else None
        for r in range(rows)
    ]


def _beam_search(search: BlockSearch) -> list[list[Hypothesis] | None]:
    """Beam search over ``texts x beams`` rows, vectorized; finished hypotheses are kept per text, best first.

    As in transformers: each step keeps the (1 + number of stop ids) * beams best continuations of all beams (at
    least 2 * beams), so that at least ``beams`` of them do not end on a stop id; those of the first
    ``beams`` that end join the finished hypotheses, scored by summed log-probability / length **
    length_penalty; the best ``beams`` that do not end continue. ``options.beam_scorer`` says what the length
    counts, when a text is done and what happens at max_new_tokens (see GenerationOptions); ``early_stopping``
    True ends a text as soon as it has ``beams`` finished hypotheses.
    """
    state, options = search.state, search.options
    beams, limit, penalty = options.num_beams, options.max_new_tokens, options.length_penalty
    glm = options.beam_scorer == "glm"
    batch, pad, device = len(search.active), state.pad_id, search.active.device
    if state.rows != batch * beams:
        raise ValueError(f"beam search over {batch} texts x {beams} beams needs {batch * beams} rows, not {state.rows}")
    row_active = search.active.repeat_interleave(beams)  # [B*K]
    row_positions = search.text_positions.repeat_interleave(beams)
    tokens = torch.where(row_active, search.start_id, pad)
    block = tokens[:, None]  # [B*K, 1 + k]
    beam_scores = torch.full((batch, beams), float("-inf"), device=device)
    beam_scores[:, 0] = 0.0  # all beams hold the same block at first: let only one of them expand
    done = ~search.active
    best = _Finished(batch, beams, limit, pad, device)
    width = max(2, 1 + len(search.stop_ids)) * beams  # candidates kept per step, as transformers keeps
    first_k = torch.arange(width, device=device) < beams
    row_offsets = torch.arange(batch, device=device)[:, None] * beams
    for k in range(limit):
        last = k + 1 == limit
        feeds = ~done.repeat_interleave(beams)
        logits = state.step(tokens, row_positions, k + 1, feeds)
        log_probs = search.processors(block[:, 1:], F.log_softmax(logits.float(), dim=-1))  # [B*K, V]
        vocab = log_probs.shape[-1]
        candidates = (log_probs + beam_scores.view(-1, 1)).view(batch, beams * vocab)
        top_scores, top_index = candidates.topk(min(width, beams * vocab), dim=1)  # [B, W], best first
        top_beam, top_token = top_index // vocab, top_index % vocab
        is_stop = torch.isin(top_token, search.stop_ids)
        # glm: only an end token finishes here (the beams running at the limit join below); transformers: the
        # first candidates finish at the limit too
        ends = is_stop if glm else is_stop | last

        # finished hypotheses: the candidate's block (minus the start) plus its token unless it is the end token
        history = block[:, 1:].view(batch, beams, k).gather(1, top_beam[..., None].expand(-1, -1, k))
        candidate_tokens = torch.cat([history, torch.where(is_stop, pad, top_token)[..., None]], dim=2)
        lengths = k + 1 - is_stop.long()  # generated tokens, the end token left out
        finishing = ends & first_k[: ends.shape[1]] & ~done[:, None] & torch.isfinite(top_scores)
        divisor = lengths.clamp(min=1).float() if glm else torch.full_like(top_scores, k + 1)
        best.add(finishing, top_scores / divisor**penalty, candidate_tokens, lengths, is_stop)

        # running beams: the best continuations that do not end
        running_scores = torch.where(ends, float("-inf"), top_scores)
        beam_scores, order = running_scores.topk(beams, dim=1)
        next_beam, next_token = top_beam.gather(1, order), top_token.gather(1, order)
        full = torch.isfinite(best.scores).all(dim=1)
        if options.early_stopping is True:
            done = done | full
        else:
            if glm:  # the step's best candidate over the tokens generated before it
                best_possible = top_scores[:, 0] / float(max(k, 1)) ** penalty
            else:
                horizon = limit if options.early_stopping == "never" and penalty > 0 else k + 1
                best_possible = beam_scores[:, 0] / float(horizon) ** penalty
            done = done | (full & (best_possible <= best.scores[:, -1]))
        if last and glm:  # the beams still running join the finished ones, unless the text is done
            live = ~done[:, None] & torch.isfinite(beam_scores)
            live_tokens = candidate_tokens.gather(1, order[..., None].expand(-1, -1, limit))
            no_stop = torch.zeros_like(live)
            best.add(live, beam_scores / float(limit) ** penalty, live_tokens, torch.full_like(order, limit), no_stop)
        if last or bool(done.all()):
            break
        rows = (row_offsets + next_beam).flatten()
        state.reorder(rows)
        tokens = next_token.flatten()
        block = torch.cat([block.index_select(0, rows), tokens[:, None]], dim=1)

    results: list[list[Hypothesis] | None] = []
    for b in range(batch):
        if not search.active[b]:
            results.append(None)
            continue
        found = []
        for j in range(options.num_return_sequences):
            if not torch.isfinite(best.scores[b, j]):
                break  # fewer finished hypotheses than asked for (a vocabulary smaller than the beams)
            n = int(best.lengths[b, j])
            found.append(Hypothesis(best.tokens[b, j, :n].tolist(), float(best.scores[b, j]), bool(best.stopped[b, j])))
        results.append(found)
    return results


class _Finished:
    """Each text's ``beams`` best finished hypotheses, best first (scores -inf where there are fewer)."""

    def __init__(self, batch: int, beams: int, limit: int, pad: int, device):
        self.beams, self.limit, self.pad = beams, limit, pad
        self.scores = torch.full((batch, beams), float("-inf"), device=device)
        self.tokens = torch.full((batch, beams, limit), pad, dtype=torch.long, device=device)
        self.lengths = torch.zeros((batch, beams), dtype=torch.long, device=device)
        self.stopped = torch.zeros((batch, beams), dtype=torch.bool, device=device)

    def add(self, where, scores, tokens, lengths, stopped) -> None:
        """Merge candidates ``[B, N]`` (tokens ``[B, N, n <= limit]``) where ``where`` holds."""
        tokens = F.pad(tokens, (0, self.limit - tokens.shape[2]), value=self.pad)
        merged = torch.cat([self.scores, torch.where(where, scores, float("-inf"))], dim=1)
        self.scores, keep = merged.topk(self.beams, dim=1)
        self.tokens = torch.cat([self.tokens, tokens], dim=1).gather(1, keep[..., None].expand(-1, -1, self.limit))
        self.lengths = torch.cat([self.lengths, lengths], dim=1).gather(1, keep)
        self.stopped = torch.cat([self.stopped, stopped], dim=1).gather(1, keep)

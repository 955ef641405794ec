"""Pretraining samples from token shards: the original GLM sampling, deterministic, sharded over ranks, resumable.

:class:`BlockDataset` maps a global sample index ``i`` to a packed text of at most ``seq_length`` tokens:

- a document is drawn with probability proportional to its length (a longer document holds more samples);
- a document longer than ``seq_length - 1`` is cut at a random offset moved to the nearest sentence start
  (left or right with equal odds, at most ``seq_length // 2`` tokens), and its end is cut back to a sentence end;
- a shorter one is packed with further drawn documents, ``[CLS] doc [eos] [CLS] doc [eos] ...``, the last one
  cut back to a sentence end to fit.

Its random draws are a counter-based hash of ``(seed, i, draw number)``, so sample ``i`` is a pure function of
``(seed, i)``: no generator state to save, and any worker or rank can build any sample.

:class:`PretrainBatches` turns that into per-rank batches: micro-batch ``g = step * world_size + rank`` holds the
samples ``g * batch_size ...``, built by the blank-infilling builder with the batch seed ``(seed, g)``. Ranks
never share a sample, and ``state_dict()``/``load_state_dict()`` carry only the step.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from .blanks import BlankConfig, BlankInfillingBuilder
from .collate import pad_to_multiple, to_tensors
from .shards import TokenShards
from .special import SpecialIds

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX = (np.uint64(30), np.uint64(0xBF58476D1CE4E5B9), np.uint64(27), np.uint64(0x94D049BB133111EB), np.uint64(31))


def _splitmix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer over a uint64 array, in place (it must be a fresh array): a bijective mix, so
    distinct counters give distinct draws. In place and with ready-made constants: a handful of microseconds."""
    shift1, mul1, shift2, mul2, shift3 = _MIX
    x ^= x >> shift1
    x *= mul1
    x ^= x >> shift2
    x *= mul2
    x ^= x >> shift3
    return x


def _splitmix_int(x: int) -> int:
    """:func:`_splitmix` of one Python integer (the seed's key, mixed once per call without numpy overhead)."""
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _MASK64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_uniforms(seed: int, indices: np.ndarray, first: int, count: int) -> np.ndarray:
    """``[len(indices), count]`` floats in [0, 1): draw ``first + c`` of sample ``indices[b]`` under ``seed``.

    A hash of (seed, index, draw number) instead of a seeded generator per sample: creating a numpy generator
    costs ~20 us, this costs well under 1 us per sample, and it is trivially reproducible anywhere.
    """
    # uint64 array arithmetic wraps silently (only numpy scalars warn), which is what the hash wants.
    key = _splitmix(np.asarray(indices, dtype=np.uint64) ^ np.uint64(_splitmix_int(seed & _MASK64)))
    draws = np.arange(first + 1, first + count + 1, dtype=np.uint64) * np.uint64(_GOLDEN)
    bits = _splitmix(key[:, None] + draws)
    bits >>= np.uint64(11)
    return bits.astype(np.float64) * (1.0 / (1 << 53))


class BlockDataset:
    """Map-style dataset of packed texts over token shards (see the module docstring).

    Example::

        shards = TokenShards("data/shards")
        dataset = BlockDataset(shards, seq_length=512, seed=1234)
        dataset[0]            # np.ndarray, starts with [CLS], at most 512 tokens
        len(dataset)          # samples per epoch: the corpus' tokens // seq_length
    """

    def __init__(
        self,
        shards: TokenShards,
        seq_length: int = 512,
        seed: int = 1234,
        sentence_ends: np.ndarray | None = None,
        ids: SpecialIds | None = None,
        non_sentence_start: float = 0.0,
    ):
        if shards.num_tokens == 0:
            raise ValueError(f"{shards.folder} holds no tokens")
        if seq_length < 4:
            raise ValueError("seq_length must be at least 4")
        self.shards = shards
        self.seq_length = seq_length
        self.seed = int(seed)
        self.ids = ids or shards.special_ids
        self.sentence_ends = shards.sentence_end_table() if sentence_ends is None else np.asarray(sentence_ends)
        self.non_sentence_start = non_sentence_start
        self.doc_lengths = shards.doc_lengths
        self.cumulative = np.cumsum(self.doc_lengths)
        self.total = int(self.cumulative[-1])
        if self.total < 1 << 31:  # half the table to search: fewer cache misses when drawing documents
            self.cumulative = self.cumulative.astype(np.int32)
        mean = self.total / max(1, int((self.doc_lengths > 0).sum()))
        self._pack_draws = int(min(256, max(4, 2 * seq_length / (mean + 1) + 2)))

    def __len__(self) -> int:
        return max(1, self.total // self.seq_length)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.get_batch([index])[0]

    def pick_documents(self, uniforms: np.ndarray) -> np.ndarray:
        """Documents drawn in proportion to their length (a uniform token position, then its document). The
        position is made an integer first: a float query would convert the whole cumulative table on every call."""
        position = np.floor(uniforms * self.total).astype(self.cumulative.dtype)
        return self.cumulative.searchsorted(position, side="right")

    def get_batch(self, indices) -> list[np.ndarray]:
        """The packed texts of several sample indices (views into one buffer holding the batch)."""
        tokens, starts, lengths = self._batch_tokens(indices)
        return [tokens[a : a + n] for a, n in zip(starts.tolist(), lengths.tolist(), strict=True)]

    def get_padded(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """The packed texts of several sample indices as ``[B, T]`` int64 padded with pad, and their lengths ``[B]``:
        what the blank-infilling builder works on, without a list of per-sample arrays in between."""
        tokens, starts, lengths = self._batch_tokens(indices)
        width = int(lengths.max(initial=0))
        padded = np.full((len(lengths), width), self.ids.pad, dtype=np.int64)
        valid = np.arange(width) < lengths[:, None]
        padded[valid] = tokens[np.arange(int(lengths.sum())) + (starts - (lengths.cumsum() - lengths)).repeat(lengths)]
        return padded, lengths

    def _batch_tokens(self, indices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every text of the batch back to back, with its start and length in that buffer.

        A text is a list of segments ``[CLS] + doc[start:start + count]`` (one for a crop, one per document for a
        pack). Segments are planned for the whole batch with array operations, read from the shards with one
        gather, and the last segment of a text is then cut back to a sentence end where the sampling asks for it.
        Draws are those of a per-sample loop, so texts do not depend on the batch they are built in.
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        # Draws 0-3 choose and crop the first document, the next ones are the first round of packing: one call.
        u = sample_uniforms(self.seed, indices, 0, 4 + self._pack_draws)
        picks = self.pick_documents(u)  # one search for the first document and the first round (1-3 unused)
        docs = picks[:, 0]
        long = self.doc_lengths[docs] > self.seq_length - 1
        crop, pack = long.nonzero()[0], (~long).nonzero()[0]
        plan = _Segments()
        self._plan_crops(plan, crop, docs[crop], u[crop])
        self._plan_packs(plan, pack, docs[pack], indices[pack], picks[pack, 4:])
        row, doc, first, count = plan.in_text_order()
        tokens = self.shards.gather(doc, first, count, lead=1)
        sizes = count + 1
        seg_at = sizes.cumsum() - sizes
        tokens[seg_at] = self.ids.cls
        lengths = np.bincount(row, weights=sizes, minlength=len(indices)).astype(np.int64)
        starts = lengths.cumsum() - lengths

        # Cut the last segment of some texts back to its last sentence end, unless that keeps too little.
        cut_rows, min_keep = plan.cut_arrays()
        if len(cut_rows):
            text_end = starts[cut_rows] + lengths[cut_rows]
            seg_count = count[seg_at.searchsorted(text_end - 1, side="right") - 1]
            hit = _last_true(self.sentence_ends[tokens], text_end - seg_count, seg_count)
            keep = np.where(hit + 2 < min_keep, seg_count, hit + 1)  # no sentence end: hit = -1, keep 0
            lengths[cut_rows] -= seg_count - keep
        return tokens, starts, lengths

    def _plan_crops(self, plan: _Segments, rows: np.ndarray, docs: np.ndarray, u: np.ndarray) -> None:
        """A window of a long document, starting at a sentence start and ending at a sentence end if possible:
        the start moves back (``u[3] < 0.5``) or forward to the nearest sentence start, at most ``half`` tokens."""
        if not len(rows):
            return
        size, half = self.seq_length, self.seq_length // 2
        length = self.doc_lengths[docs]
        start = (u[:, 1] * (length - size + 1)).astype(np.int64)
        move = u[:, 2] >= self.non_sentence_start
        back = move & (u[:, 3] < 0.5)
        forward = move & (u[:, 3] >= 0.5) & (start > 0)
        low = np.maximum(start - half, 0)
        high = np.minimum(start + half, length)
        # Back: the last sentence end in [low - 1, start) (start just after it), else low.
        # Forward: the first sentence end in [start - 1, high) (start just after it), else high.
        scan_from = np.where(back, np.maximum(low - 1, 0), start - 1)
        scan_count = np.where(back, start - scan_from, high - scan_from)
        moving = np.flatnonzero(back | forward)
        if len(moving):
            where, n = scan_from[moving], scan_count[moving]
            found = self.sentence_ends[self.shards.gather(docs[moving], where, n)]
            at = n.cumsum() - n
            is_back = back[moving]
            last, first = _last_true(found, at, n), _first_true(found, at, n)
            start[moving] = np.where(
                is_back,
                np.where(last >= 0, where + last + 1, low[moving]),
                np.where(first >= 0, where + first + 1, high[moving]),
            )
        count = np.minimum(size - 1, length - start)
        plan.add(rows, docs, start, count)
        cut = length - start > size - 1  # the rest does not fit: end at the last sentence end (if past half)
        plan.cut(rows[cut], np.full(int(cut.sum()), half))

    def _plan_packs(
        self, plan: _Segments, rows: np.ndarray, docs: np.ndarray, indices: np.ndarray, first_round: np.ndarray
    ) -> None:
        """``[CLS] doc [eos] [CLS] doc ...`` with further length-weighted documents until ``seq_length``: rounds of
        ``_pack_draws`` documents per unfinished text, all texts at once; the document that overflows is cut.

        The first round is one matrix per text (its first document, then the round's draws), so its segments
        come out in text order; a text that needs another round (rare) is sorted into place later.
        """
        if not len(rows):
            return
        size = self.seq_length
        more = np.concatenate((docs[:, None], first_round), axis=1)
        active = np.arange(len(rows))
        total = np.zeros(len(rows), dtype=np.int64)  # tokens so far, [CLS] included
        drawn = 4 + self._pack_draws
        while len(active):
            n_cols = more.shape[1]
            lengths = self.doc_lengths[more]
            reach = total[active, None] + (lengths + 1).cumsum(axis=1)
            stop = (reach < size).sum(axis=1)  # documents that fit whole; the next one (if any) ends the text
            ends = (stop < n_cols).nonzero()[0]
            at = stop[ends]
            room = size - np.where(at > 0, reach[ends, np.maximum(at - 1, 0)], total[active[ends]])
            last_length = lengths[ends, at]
            lengths[ends, at] = np.minimum(room - 1, last_length)
            taken = np.minimum(stop + 1, n_cols)
            taken_docs = np.arange(n_cols) < taken[:, None]
            plan.add(
                rows[active].repeat(taken), more[taken_docs], np.zeros(int(taken.sum()), np.int64), lengths[taken_docs]
            )
            cut = last_length + 1 > room  # cut back to a sentence end, if that keeps half the room
            plan.cut(rows[active[ends[cut]]], room[cut] // 2)
            going = stop == n_cols
            total[active[going]] = reach[going, -1]
            active = active[going]
            if len(active):
                more = self.pick_documents(sample_uniforms(self.seed, indices[active], drawn, self._pack_draws))
                drawn += self._pack_draws


class _Segments:
    """The segments of a batch's texts as they are planned (row, document, first token, count), and the texts
    whose last segment is to be cut back to a sentence end (with the fewest tokens such a cut must keep, + 1)."""

    def __init__(self):
        self.parts: list[tuple[np.ndarray, ...]] = []
        self.cuts: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, rows, docs, first, count) -> None:
        self.parts.append((rows, docs, first, count))

    def cut(self, rows, min_keep) -> None:
        self.cuts.append((rows, min_keep))

    def in_text_order(self) -> tuple[np.ndarray, ...]:
        """``row, doc, first, count`` sorted by row, each row's segments in planning order (one part is sorted)."""
        if len(self.parts) == 1:
            return self.parts[0]
        columns = [np.concatenate(column) for column in zip(*self.parts, strict=True)]
        order = columns[0].argsort(kind="stable")
        return tuple(column[order] for column in columns)

    def cut_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.cuts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return tuple(np.concatenate(column).astype(np.int64, copy=False) for column in zip(*self.cuts, strict=True))


def _last_true(flags: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Offset of the last True in each range ``flags[start:start + count]``, -1 where there is none (a search in
    the few True positions, not a pass over the whole array)."""
    hits = flags.nonzero()[0]
    if not len(hits):
        return np.full(len(starts), -1, dtype=np.int64)
    k = hits.searchsorted(starts + counts) - 1
    at = hits[np.maximum(k, 0)]
    return np.where((k >= 0) & (at >= starts), at - starts, -1)


def _first_true(flags: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Offset of the first True in each range ``flags[start:start + count]``, -1 where there is none."""
    hits = flags.nonzero()[0]
    if not len(hits):
        return np.full(len(starts), -1, dtype=np.int64)
    k = hits.searchsorted(starts)
    at = hits[np.minimum(k, len(hits) - 1)]
    return np.where((k < len(hits)) & (at < starts + counts), at - starts, -1)


class PretrainBatches(torch.utils.data.IterableDataset):
    """Per-rank stream of GLM batches (dicts of tensors), deterministic in (seed, rank, world size, step).

    Example (one process of ``torchrun``)::

        stream = PretrainBatches(dataset, builder, batch_size=8, rank=rank, world_size=world)
        stream.load_state_dict(checkpoint["data"])      # resume: same samples as an uninterrupted run
        for batch in stream.loader(num_workers=2):      # input_ids, position_ids, sep, labels, blank_mode
            ...
            checkpoint["data"] = stream.state_dict()

    Micro-batch ``g = step * world_size + rank`` holds samples ``g * batch_size ... + batch_size - 1``: ranks are
    disjoint and sample ``i`` depends only on ``(seed, i)`` (and on the batch size, which groups samples into the
    batches whose objective is drawn together).
    """

    def __init__(
        self,
        dataset: BlockDataset,
        builder: BlankInfillingBuilder,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        pad_to_multiple_of: int | None = None,
        tensors: bool = True,
    ):
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.dataset = dataset
        self.builder = builder
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.pad_to_multiple_of = pad_to_multiple_of
        self.tensors = tensors
        self.step = 0

    @property
    def seed(self) -> int:
        return self.dataset.seed

    @property
    def steps_per_epoch(self) -> int:
        """Steps after which every rank together has seen ``len(dataset)`` samples (one pass over the tokens)."""
        return max(1, math.ceil(len(self.dataset) / (self.batch_size * self.world_size)))

    def sample_indices(self, step: int) -> np.ndarray:
        group = step * self.world_size + self.rank
        return group * self.batch_size + np.arange(self.batch_size)

    def batch(self, step: int) -> dict:
        """The batch this rank trains on at ``step``."""
        group = step * self.world_size + self.rank
        tokens, lengths = self.dataset.get_padded(self.sample_indices(step))
        batch = self.builder.build_padded(tokens, lengths, seed=(self.seed, group))
        if self.pad_to_multiple_of:
            batch = pad_to_multiple(batch, self.pad_to_multiple_of, self.builder.ids.pad)
        return to_tensors(batch) if self.tensors else batch

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        step = self.step + worker
        while True:
            batch = self.batch(step)
            step += workers
            if info is None:
                self.step = step  # single process: the position moves as batches are handed out
            yield batch

    def loader(self, num_workers: int = 0, **kwargs) -> ResumableLoader:
        """A DataLoader over this stream whose batches keep ``self.step`` up to date in the main process."""
        return ResumableLoader(self, num_workers=num_workers, **kwargs)

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "consumed_samples": self.step * self.world_size * self.batch_size,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume; a different world size continues at the same global sample when the counts divide."""
        if state["seed"] != self.seed or state["batch_size"] != self.batch_size:
            raise ValueError("the data seed and batch size must match the checkpoint's to resume its samples")
        if state["world_size"] == self.world_size:
            self.step = int(state["step"])
            return
        consumed, per_step = int(state["consumed_samples"]), self.world_size * self.batch_size
        if consumed % per_step:
            raise ValueError(f"{consumed} consumed samples is not a whole number of {per_step}-sample steps")
        self.step = consumed // per_step


class ResumableLoader:
    """``torch.utils.data.DataLoader`` over a :class:`PretrainBatches` that counts the batches it hands out.

    Worker ``k`` of ``n`` builds steps ``step + k, step + k + n, ...`` and the DataLoader returns them round-robin,
    so the order is that of a single process; the main-process stream advances one step per batch returned.
    """

    def __init__(self, stream: PretrainBatches, num_workers: int = 0, **kwargs):
        self.stream = stream
        self.num_workers = num_workers
        self.kwargs = kwargs

    def __iter__(self) -> Iterator[dict]:
        if self.num_workers == 0:
            yield from self.stream
            return
        loader = torch.utils.data.DataLoader(self.stream, batch_size=None, num_workers=self.num_workers, **self.kwargs)
        for batch in loader:
            self.stream.step += 1
            yield batch

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)


def build_pretraining_stream(
    shards_dir,
    config: BlankConfig | None = None,
    batch_size: int = 8,
    seed: int = 1234,
    rank: int = 0,
    world_size: int = 1,
    **kwargs,
) -> PretrainBatches:
    """Shards folder + builder options -> per-rank stream; ``config.seq_length`` sets the text length."""
    config = config or BlankConfig()
    shards = TokenShards(shards_dir)
    dataset = BlockDataset(shards, seq_length=config.seq_length, seed=seed)
    builder = BlankInfillingBuilder(config, shards.special_ids, dataset.sentence_ends)
    return PretrainBatches(dataset, builder, batch_size, rank=rank, world_size=world_size, **kwargs)

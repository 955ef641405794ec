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
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer over uint64 arrays: a bijective mix, so distinct counters give distinct draws."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def sample_uniforms(seed: int, indices: np.ndarray, first: int, count: int) -> np.ndarray:
    """``[len(indices), count]`` floats in [0, 1): draw ``first + c`` of sample ``indices[b]`` under ``seed``.

    A hash of (seed, index, draw number) instead of a seeded generator per sample: creating a numpy generator
    costs ~20 us, this costs well under 1 us per sample, and it is trivially reproducible anywhere.
    """
    with np.errstate(over="ignore"):
        key = _splitmix(np.asarray(indices, dtype=np.uint64) ^ _splitmix(np.array([seed & _MASK64], np.uint64)))
        draws = np.arange(first + 1, first + count + 1, dtype=np.uint64) * _GOLDEN
        bits = _splitmix(key[:, None] + draws[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


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
        self._cls = np.array([self.ids.cls], dtype=shards.dtype)
        mean = self.total / max(1, int((self.doc_lengths > 0).sum()))
        self._pack_draws = int(min(256, max(4, 2 * seq_length / (mean + 1) + 2)))

    def __len__(self) -> int:
        return max(1, self.total // self.seq_length)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.get_batch([index])[0]

    def pick_documents(self, uniforms: np.ndarray) -> np.ndarray:
        """Documents drawn in proportion to their length (a uniform token position, then its document)."""
        return np.searchsorted(self.cumulative, np.floor(uniforms * self.total), side="right")

    def get_batch(self, indices) -> list[np.ndarray]:
        """The packed texts of several sample indices (first draws vectorized over the batch)."""
        indices = np.asarray(indices, dtype=np.int64)
        u = sample_uniforms(self.seed, indices, 0, 4)
        docs = self.pick_documents(u[:, 0]).tolist()
        long = self.doc_lengths[docs] > self.seq_length - 1
        packed = np.flatnonzero(~long)
        # The first round of extra documents of every packed sample, drawn for all of them at once.
        draws = self.pick_documents(sample_uniforms(self.seed, indices[packed], 4, self._pack_draws))
        first_round = dict(zip(packed.tolist(), draws, strict=True))
        return [
            self._crop(doc, u[b]) if long[b] else self._pack(doc, int(indices[b]), first_round[b])
            for b, doc in enumerate(docs)
        ]

    def _crop(self, doc: int, u: np.ndarray) -> np.ndarray:
        """A window of a long document, starting at a sentence start and ending at a sentence end if possible."""
        length, size, half = int(self.doc_lengths[doc]), self.seq_length, self.seq_length // 2
        ends = self.sentence_ends
        start = int(u[1] * (length - size + 1))
        if u[2] >= self.non_sentence_start:
            if u[3] < 0.5:  # back to the closest sentence start, at most `half` tokens
                low = max(start - half, 0)
                before = ends[self.shards.tokens(doc, max(low - 1, 0), start)]
                hits = np.flatnonzero(before)
                start = max(low - 1, 0) + int(hits[-1]) + 1 if len(hits) else low
            elif start > 0:  # forward to the next sentence start, at most `half` tokens
                high = min(start + half, length)
                after = ends[self.shards.tokens(doc, start - 1, high)]
                hits = np.flatnonzero(after)
                start = start + int(hits[0]) if len(hits) else high
        body = self.shards.tokens(doc, start, start + size - 1)
        if length - start > size - 1:  # the rest does not fit: end at the last sentence end (if past half)
            hits = np.flatnonzero(ends[body])
            keep = int(hits[-1]) + 1 if len(hits) else 0
            if keep + 1 < half:
                keep = size - 1
            body = body[:keep]
        return np.concatenate((self._cls, body))

    def _pack(self, doc: int, index: int, first_round: np.ndarray | None = None) -> np.ndarray:
        """``[CLS] doc [eos] [CLS] doc ...`` with further length-weighted documents until ``seq_length``."""
        size = self.seq_length
        docs, takes = [np.array([doc])], [self.doc_lengths[[doc]]]
        total = 1 + int(self.doc_lengths[doc])
        drawn = 4
        while total < size:
            if drawn == 4 and first_round is not None:
                more = first_round
            else:
                u = sample_uniforms(self.seed, np.array([index]), drawn, self._pack_draws)[0]
                more = self.pick_documents(u)
            drawn += self._pack_draws
            lengths = self.doc_lengths[more]
            reach = total + np.cumsum(lengths + 1)
            stop = int(np.searchsorted(reach, size, side="left"))
            if stop == len(more):
                docs.append(more)
                takes.append(lengths)
                total = int(reach[-1])
                continue
            room = size - (int(reach[stop - 1]) if stop else total)
            last = int(more[stop])
            keep = min(room - 1, int(lengths[stop]))
            if int(lengths[stop]) + 1 > room:  # cut back to a sentence end, if that keeps half the room
                hits = np.flatnonzero(self.sentence_ends[self.shards.tokens(last, 0, room - 1)])
                keep = int(hits[-1]) + 1 if len(hits) else 0
                if keep + 1 < room // 2:
                    keep = room - 1
            docs.append(more[: stop + 1])
            takes.append(np.append(lengths[:stop], keep))
            break
        return self._gather(np.concatenate(docs), np.concatenate(takes))

    def _gather(self, docs: np.ndarray, takes: np.ndarray) -> np.ndarray:
        """``[CLS] + doc[:take]`` for each document, back to back, with one fancy index per shard (packing a few
        dozen short documents costs a handful of numpy calls, not one slice and copy per document)."""
        sizes = takes + 1
        starts = np.cumsum(sizes) - sizes
        total = int(sizes.sum())
        source = np.repeat(self.shards.doc_offsets[docs] - starts - 1, sizes) + np.arange(total)
        shard_of = self.shards.doc_shards[docs]
        first = int(shard_of[0])
        if (shard_of == first).all():
            out = self.shards.buffers[first][np.maximum(source, 0)]
        else:
            out = np.empty(total, dtype=self.shards.dtype)
            per_token = np.repeat(shard_of, sizes)
            for shard in np.unique(shard_of).tolist():
                where = per_token == shard
                out[where] = self.shards.buffers[shard][np.maximum(source[where], 0)]
        out[starts] = self.ids.cls
        return out


class PretrainBatches(torch.utils.data.IterableDataset):
    """Per-rank stream of GLM batches (dicts of tensors), deterministic in (seed, rank, world size, step).

    Example (one process of ``torchrun``)::

        stream = PretrainBatches(dataset, builder, batch_size=8, rank=rank, world_size=world)
        stream.load_state_dict(checkpoint["data"])      # resume: same samples as an uninterrupted run
        for batch in stream.loader(num_workers=2):      # input_ids, position_ids, sep, labels, task
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
        texts = self.dataset.get_batch(self.sample_indices(step))
        batch = self.builder.build(texts, seed=(self.seed, group))
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

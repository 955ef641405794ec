"""The blank-infilling sample builder: GLM's pretraining objective, vectorized over a batch.

A raw sample is a packed text ``[CLS] doc [eos] [CLS] doc ...`` (see :mod:`torchglm.data.dataset`). The builder
chooses spans (blanks), replaces each by one mask token in part A, and appends the spans in part B, each as
``<|startofpiece|> span`` with targets ``span <|endofpiece|>``::

    text     [CLS] x1 x2 x3 x4 x5 x6            spans (x2 x3) and (x5)
    input    [CLS] x1 [M] x4 [M] x6 | [S] x5 | [S] x2 x3       ("|" = sep; part-B order shuffled)
    target     -   -   -   -   -   -  | x5 [E] | x2 x3 [E]
    position   0   1   2   3   4   5  |  4  4  |  2  2  2      (part B sits at its mask's position)
    block      0   0   0   0   0   0  |  1  2  |  1  2  3      (offset inside the block, from 1)

Part A attends bidirectionally (keys before ``sep``), part B causally. The objectives, chosen per batch with the
original's probabilities: token mode (Poisson(3) span lengths truncated below 40, 15% of the tokens, spread
over the packed documents), sentence mode (whole sentences, ``[sMASK]``, >= 15%), document mode (``[gMASK]``,
one span of 50-100% of the text, or the text's suffix, which has no ``<|endofpiece|>``); plus masked-LM and
causal-LM baselines. Every step is a numpy operation over the whole batch: no per-token Python loop, no
per-sample loop except in the rare ``short_seq_prob`` split and the ``context_mask_ratio`` option, and one
``bisect`` per packed document (not per token) in token mode's span allocation.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from .special import SpecialIds

BLANK_MODES = ("token", "sentence", "document", "mlm", "clm")
"""Names of the ``blank_mode`` codes a batch carries (one per sample), for the per-mode losses in the logs."""
TOKEN, SENTENCE, DOCUMENT, MLM, CLM = range(5)

_HUGE = 1 << 40  # larger than any cumulative span length; marks "no such span"
_STRIDE = 1 << 42  # row offset that keeps per-row sorted tables sorted when flattened


@dataclass(frozen=True)
class BlankConfig:
    """Every option of GLM's pretraining sample builder. Defaults: the original multi-task mix of
    ``config/ds_block_large.sh`` (task masks; token 0.5 / sentence 0.3 / document 0.2) with the original
    flags' defaults elsewhere (``gpt_min_ratio`` 0.5, the paper's 50%-100%; that script used 0.25, see
    ``BLANK_PRESETS``).

    The names follow the original's flags (``--bert-prob`` is ``bert_prob``, ...), so configs carry over.
    """

    objective: str = "glm"
    """'glm' (blank infilling, multi-task mix), 'mlm' (BERT-style masked-LM baseline), 'clm' (causal-LM baseline)."""
    seq_length: int = 512
    """Text length of a sample (the dataset's block size); bounds random positions and short-sequence splits."""
    bert_prob: float = 0.5
    """Probability that a batch uses token mode (short spans, ``[MASK]``)."""
    gap_sentence_prob: float = 0.3
    """Probability that a batch uses sentence mode (whole sentences, ``[sMASK]``); the rest is document mode."""
    gpt_infill_prob: float = 0.5
    """Document mode: probability of a suffix blank instead of one span inside the text (always a suffix when
    the sample packs several documents). The original flag's name, its behaviour."""
    gpt_min_ratio: float = 0.5
    """Document mode: the blank's length is drawn in [gpt_min_ratio * shortest text, longest text - 2]
    (0.5 = the paper's 50%-100%; the original multi-task scripts use 0.25)."""
    bert_ratio: float = 0.15
    """Token mode: fraction of each text to mask (span lengths are drawn until they reach it)."""
    gap_sentence_ratio: float = 0.15
    """Sentence mode: sentences are masked until they cover this fraction of the text."""
    avg_block_length: float = 3.0
    """Token mode: Poisson mean of span lengths."""
    max_block_length: int = 40
    """Token mode: span lengths are 1 .. max_block_length - 1 (the Poisson is truncated below this)."""
    block_mask_prob: float = 0.0
    """Token mode: probability of replacing each part-B input token (not the start) by ``[dBLOCK]``."""
    context_mask_ratio: float = 0.0
    """Token mode: fraction of the text length to replace by ``[dBLOCK]`` among part-A tokens next to a blank."""
    context_mask_range: int = 3
    """How close (in tokens) to a blank a part-A token must be to be chosen by ``context_mask_ratio``."""
    short_seq_prob: float = 0.0
    """Probability that a batch is cut into shorter samples (length in [32, seq_length - 2])."""
    single_span_prob: float = 0.0
    """Probability that a batch is token mode with exactly one span per sample."""
    task_mask: bool = True
    """Use ``[sMASK]``/``[gMASK]`` for sentence/document blanks (else ``[MASK]`` everywhere)."""
    no_shuffle_block: bool = False
    """Keep part-B blocks in text order instead of shuffling them."""
    sentinel_token: bool = False
    """Give span k its own ``[MASKk]``/``<|startofpiecek|>`` (k >= 1) and place part B one position after the blank."""
    random_position: bool = False
    """Shift all positions of a sample by a random offset so that short samples reach every position embedding."""
    encoder_decoder: bool = False
    """Return part A and part B as separate encoder/decoder sequences (spans in text order)."""

    def __post_init__(self) -> None:
        if self.objective not in ("glm", "mlm", "clm"):
            raise ValueError(f"objective must be 'glm', 'mlm' or 'clm', not {self.objective!r}")
        for name in ("bert_prob", "gap_sentence_prob", "gpt_infill_prob", "gpt_min_ratio", "bert_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        for name in ("gap_sentence_ratio", "block_mask_prob", "context_mask_ratio", "short_seq_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if not 0.0 <= self.single_span_prob <= 1.0:
            raise ValueError("single_span_prob must be in [0, 1]")
        if self.bert_prob + self.gap_sentence_prob > 1.0 + 1e-9:
            raise ValueError("bert_prob + gap_sentence_prob must not exceed 1 (document mode takes the rest)")
        if self.max_block_length < 2 or self.avg_block_length <= 0:
            raise ValueError("max_block_length must be >= 2 and avg_block_length > 0")
        if self.short_seq_prob > 0 and self.seq_length < 34:
            raise ValueError("short_seq_prob needs seq_length >= 34 (splits are at least 32 tokens)")
        if self.encoder_decoder and self.objective != "glm":
            raise ValueError("encoder_decoder applies to the 'glm' objective only")

    def span_length_probs(self) -> np.ndarray:
        """P(length = k) for k = 1 .. max_block_length - 1: the Poisson pmf, renormalized."""
        k = np.arange(1, self.max_block_length)
        lam = self.avg_block_length
        log_pmf = k * math.log(lam) - lam - np.array([math.lgamma(x + 1) for x in k])
        pmf = np.exp(log_pmf)
        return pmf / pmf.sum()


BLANK_PRESETS: dict[str, BlankConfig] = {
    # GLM-Base / GLM-Large of the paper: token-level blanks only, no task masks.
    "glm-large": BlankConfig(bert_prob=1.0, gap_sentence_prob=0.0, task_mask=False),
    # The original config/ds_block_large.sh multi-task run, exactly.
    "glm-large-multitask": BlankConfig(gpt_min_ratio=0.25),
    # The original config/ds_block_2B.sh (GLM-2B): adds [dBLOCK] in part B and a few short sequences.
    "glm-2b": BlankConfig(bert_prob=0.4, gpt_min_ratio=0.25, block_mask_prob=0.1, short_seq_prob=0.02),
    # The original config/ds_block_10B_longer.sh (GLM-10B, 1024 tokens).
    "glm-10b": BlankConfig(
        seq_length=1024,
        bert_prob=0.4,
        single_span_prob=0.05,
        gpt_min_ratio=0.25,
        block_mask_prob=0.1,
        short_seq_prob=0.5,
    ),
    "mlm": BlankConfig(objective="mlm", task_mask=False),
    "clm": BlankConfig(objective="clm"),
}


@dataclass
class _Spans:
    """Blanks of a batch in text order: one entry per span (flat over rows, sorted by row then start)."""

    row: np.ndarray
    start: np.ndarray
    length: np.ndarray
    eop: np.ndarray  # False only for document-mode suffixes, whose part B has no <|endofpiece|>

    @classmethod
    def empty(cls) -> _Spans:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, z, z, np.zeros(0, dtype=bool))

    def sorted(self) -> _Spans:
        order = np.argsort(self.row * _STRIDE + self.start)  # one integer key: starts in a row are distinct
        return _Spans(self.row[order], self.start[order], self.length[order], self.eop[order])


def pad_texts(texts: list[np.ndarray], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Stack variable-length token arrays into ``[B, T]`` (padded with ``pad``) and their lengths ``[B]``."""
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    width = int(lengths.max()) if len(texts) else 0
    tokens = np.full((len(texts), width), pad, dtype=np.int64)
    valid = np.arange(width) < lengths[:, None]
    if len(texts):
        tokens[valid] = np.concatenate(texts)
    return tokens, lengths


def _covered(row: np.ndarray, start: np.ndarray, length: np.ndarray, batch: int, width: int) -> np.ndarray:
    """``[B, T]`` mask of the tokens inside the ranges ``start:start + length`` of their rows (ranges do not
    overlap): +1 at each start, -1 at each end, running sum. Starts are distinct and so are ends, so plain
    assignment suffices; a start may equal another range's end, hence two arrays."""
    wide = width + 1
    opens = np.zeros((batch, wide), dtype=np.int8)
    closes = np.zeros((batch, wide), dtype=np.int8)
    opens.ravel()[row * wide + start] = 1
    closes.ravel()[row * wide + start + length] = 1
    opens -= closes
    return opens.cumsum(axis=1, dtype=np.int8)[:, :width] > 0


def _sum_before(values: np.ndarray, group_first: np.ndarray) -> np.ndarray:
    """Sum of ``values`` before each element within its group (groups contiguous; ``group_first[i]`` is the index
    of element i's group's first element)."""
    before = values.cumsum() - values
    return before - before[group_first]


def _exclusive_segment_cumsum(values: np.ndarray, group_sizes: np.ndarray) -> np.ndarray:
    """:func:`_sum_before` with the groups given by their sizes."""
    return _sum_before(values, (group_sizes.cumsum() - group_sizes).repeat(group_sizes))


class BlankInfillingBuilder:
    """Turns a batch of packed texts into a GLM batch (``input_ids``, ``position_ids``, ``sep``, ``labels``,
    ``blank_mode``).

    Example::

        builder = BlankInfillingBuilder(BlankConfig(), SpecialIds.bert_uncased(), sentence_ends)
        batch = builder.build([np.array([101, 7592, 1012, 0])], seed=(1234, 0))   # dict of numpy arrays

    ``build`` is a pure function of its texts and seed. ``stats`` counts what happened (samples per mode,
    spans, spans that did not fit in their text, samples left without any blank), so that nothing is dropped
    silently.
    """

    def __init__(self, config: BlankConfig, ids: SpecialIds, sentence_ends: np.ndarray):
        self.config = config
        self.ids = ids
        ends = np.asarray(sentence_ends, dtype=bool)
        self.sentence_ends = np.zeros(max(len(ends), ids.max_id + 1), dtype=bool)
        self.sentence_ends[: len(ends)] = ends
        needs_dblock = config.objective == "glm" and (config.block_mask_prob > 0 or config.context_mask_ratio > 0)
        if needs_dblock and ids.dblock is None:
            raise ValueError(
                "block_mask_prob/context_mask_ratio need a [dBLOCK] id: "
                "use SpecialIds.with_new_tokens(first_free_id, dblock=True)"
            )
        if config.sentinel_token and not ids.sentinel_masks:
            raise ValueError(
                "sentinel_token needs sentinel ids: use SpecialIds.with_new_tokens(first_free_id, sentinels=n)"
            )
        self._length_cdf = np.cumsum(config.span_length_probs())
        self._length_cdf[-1] = 1.0
        self._sentinel_masks = np.array((ids.mask,) + ids.sentinel_masks, dtype=np.int64)
        self._sentinel_sops = np.array((ids.sop,) + ids.sentinel_sops, dtype=np.int64)
        self.stats: Counter[str] = Counter()

    # ------------------------------------------------------------------ batch-level choices
    def choose_mode(self, rng: np.random.Generator) -> tuple[int, bool, bool]:
        """The batch's objective, whether it is split into short samples, and whether it has one span per sample."""
        cfg = self.config
        split = bool(rng.random() < cfg.short_seq_prob)
        if cfg.objective == "mlm":
            return MLM, split, bool(rng.random() < cfg.single_span_prob)
        if cfg.objective == "clm":
            return CLM, split, False
        single = bool(rng.random() < cfg.single_span_prob)
        r = 0.0 if single else rng.random()
        if r < cfg.bert_prob:
            return TOKEN, split, single
        if r < cfg.bert_prob + cfg.gap_sentence_prob:
            return SENTENCE, split, False
        return DOCUMENT, split, False

    def build(self, texts: list[np.ndarray], seed) -> dict[str, np.ndarray]:
        """Build one batch from packed texts (each starting with ``[CLS]``); ``seed`` is an int or a tuple of ints."""
        return self._build(texts, None, seed)

    def build_padded(self, tokens: np.ndarray, lengths: np.ndarray, seed) -> dict[str, np.ndarray]:
        """:meth:`build` on texts already padded into ``[B, T]`` int64 (``BlockDataset.get_padded``): the same batch,
        without a list of per-sample arrays in between."""
        return self._build(None, (tokens, lengths), seed)

    def _build(self, texts: list[np.ndarray] | None, padded: tuple | None, seed) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        mode, split, single = self.choose_mode(rng)
        if split:
            if texts is None:
                texts = [row[:n] for row, n in zip(padded[0], padded[1].tolist(), strict=True)]
            texts, padded = self.split_short(texts, rng), None
        tokens, lengths = pad_texts(texts, self.ids.pad) if padded is None else padded
        self.stats[f"samples/{BLANK_MODES[mode]}"] += len(lengths)
        if mode == CLM:
            return self.build_causal(tokens, lengths)
        if mode in (TOKEN, MLM):
            spans = self.token_spans(tokens, lengths, rng, single)
        elif mode == SENTENCE:
            spans = self.sentence_spans(tokens, lengths, rng)
        else:
            spans = self.document_spans(tokens, lengths, rng)
        counts = np.bincount(spans.row, minlength=len(lengths))
        self.stats["spans"] += len(spans.row)
        self.stats["samples_without_blanks"] += int((counts == 0).sum())
        if mode == MLM:
            return self.build_masked(tokens, lengths, spans)
        return self.build_blocks(tokens, lengths, spans, mode, rng)

    # ------------------------------------------------------------------ span choice
    def draw_span_lengths(self, rng: np.random.Generator, shape) -> np.ndarray:
        """Span lengths from the truncated Poisson, by inverting its CDF."""
        return self._length_cdf.searchsorted(rng.random(shape), side="right").astype(np.int64) + 1

    def token_spans(
        self, tokens: np.ndarray, lengths: np.ndarray, rng: np.random.Generator, single: bool = False
    ) -> _Spans:
        """Token mode: draw span lengths until they cover ``bert_ratio`` of each text, then spread them over its
        documents as the original does: documents sorted by length, each shorter one taking (in order) the spans
        that fit in ``bert_ratio`` of it, the longest taking all the rest that fit with a gap between spans; the
        spans of a document are placed uniformly with at least one unmasked token between them."""
        ids = self.ids
        batch, width = tokens.shape
        if single:
            span_len = self.draw_span_lengths(rng, (batch, 1))
            count = np.ones(batch, dtype=np.int64)
        else:
            target = np.floor(self.config.bert_ratio * lengths).astype(np.int64)
            k = max(int(target.max(initial=0)), 1)
            span_len = self.draw_span_lengths(rng, (batch, k))
            reached = span_len.cumsum(axis=1) >= target[:, None]
            count = np.where(target > 0, reached.argmax(axis=1) + 1, 0)
        k = span_len.shape[1]
        # Shuffle each row's spans: the last one drawn (the one crossing the target) is longer on average.
        keys = rng.random((batch, k))
        keys[np.arange(k) >= count[:, None]] = 2.0
        span_len = span_len[np.arange(batch)[:, None], keys.argsort(axis=1)]

        # Documents = runs of content tokens (not [CLS], eos or padding).
        cols = np.arange(width)
        content = (cols < lengths[:, None]) & (tokens != ids.eos) & (tokens != ids.cls)
        starts = content.copy()
        starts[:, 1:] &= ~content[:, :-1]
        ends = content.copy()
        ends[:, :-1] &= ~content[:, 1:]
        first = starts.ravel().nonzero()[0]
        last = ends.ravel().nonzero()[0]
        seg_row = first // width
        seg_start = first % width
        seg_len = last - first + 1
        # The original never masks the final token of an unterminated last document.
        seg_len -= ((last % width) == lengths[seg_row] - 1).astype(np.int64)
        order = (seg_row * _STRIDE + seg_len).argsort(kind="stable")  # by row, then shortest first
        seg_row, seg_start, seg_len = seg_row[order], seg_start[order], seg_len[order]
        seg_count = np.bincount(seg_row, minlength=batch)
        seg_rank = np.arange(len(seg_row)) - (seg_count.cumsum() - seg_count).repeat(seg_count)
        seg_last = seg_rank == seg_count[seg_row] - 1

        # Per-row prefix sums of span lengths (C), and of lengths plus gaps (D) flattened with row offsets so that
        # one searchsorted answers "how many of the next spans fit" for every row at once.
        idx = np.arange(k + 1)
        csum = np.zeros((batch, k + 1), dtype=np.int64)
        csum[:, 1:] = span_len.cumsum(axis=1)
        beyond = idx > count[:, None]
        offsets = (np.arange(batch) * _STRIDE)[:, None]
        flat_d = (np.where(beyond, _HUGE, csum + idx) + offsets).ravel()
        budget = np.floor(self.config.bert_ratio * seg_len).astype(np.int64)
        # Every document but a row's longest takes, shortest first, the next spans that fit in its budget: a walk
        # with one bisect per document on the row's prefix sums (a plain loop over documents, which costs less
        # than a few numpy calls per document rank). The longest (one per row) then takes in one go the spans
        # that fit with a gap between them.
        base = np.arange(batch) * (k + 1)
        seg_first = np.zeros(len(seg_row), dtype=np.int64)
        seg_take = np.zeros(len(seg_row), dtype=np.int64)
        shorter = (~seg_last).nonzero()[0]
        next_span = [0] * batch
        if len(shorter):
            prefix, ends = csum.tolist(), (count + 1).tolist()
            firsts, takes = [], []
            for row, room in zip(seg_row[shorter].tolist(), budget[shorter].tolist(), strict=True):
                sums, at = prefix[row], next_span[row]
                fit = bisect.bisect_right(sums, sums[at] + room, at, ends[row]) - 1
                firsts.append(at)
                takes.append(fit - at)
                next_span[row] = fit
            seg_first[shorter] = firsts
            seg_take[shorter] = takes
        pointer = base + np.array(next_span, dtype=np.int64)
        longest = seg_last.nonzero()[0]
        at = pointer[seg_row[longest]]
        fit = flat_d.searchsorted(flat_d[at] + seg_len[longest] + 1, side="right") - 1
        seg_first[longest] = at - base[seg_row[longest]]
        seg_take[longest] = fit - at
        pointer[seg_row[longest]] = fit
        next_span = pointer - base
        unplaced = int((count - next_span).sum())
        if unplaced:
            self.stats["unplaced_spans"] += unplaced

        # Place the spans inside their documents.
        has = seg_take > 0
        g_take = seg_take[has]
        g_row, g_start, g_len, g_first = seg_row[has], seg_start[has], seg_len[has], seg_first[has]
        group = np.repeat(np.arange(len(g_take)), g_take)
        within = np.arange(len(group)) - (g_take.cumsum() - g_take).repeat(g_take)
        length = span_len[g_row[group], g_first[group] + within]
        total = np.bincount(group, weights=length, minlength=len(g_take)).astype(np.int64)
        room = g_len - total - g_take + 1  # free places: the gaps are 0 .. room
        places = np.floor(rng.random(len(group)) * (room[group] + 1)).astype(np.int64)
        places = np.sort(group * _STRIDE + places) - group * _STRIDE  # ascending within each document
        before = _exclusive_segment_cumsum(length + 1, g_take)
        start = g_start[group] + places + before
        spans = _Spans(g_row[group], start, length, np.ones(len(group), dtype=bool))
        return spans.sorted()

    def sentence_spans(self, tokens: np.ndarray, lengths: np.ndarray, rng: np.random.Generator) -> _Spans:
        """Sentence mode: whole sentences (ending in a sentence-end token, or the text's unterminated tail), in a
        random order, until they cover ``gap_sentence_ratio`` of the text. A fragment cut short by the end of a
        document is not a sentence, and ``[CLS]``/eos are never part of one."""
        ids = self.ids
        batch, width = tokens.shape
        content = (np.arange(width) < lengths[:, None]) & (tokens != ids.eos) & (tokens != ids.cls)
        is_end = self.sentence_ends[np.minimum(tokens, len(self.sentence_ends) - 1)] & content
        starts = content.copy()
        starts[:, 1:] &= ~content[:, :-1] | is_end[:, :-1]
        stops = content.copy()
        stops[:, :-1] &= is_end[:, :-1] | ~content[:, 1:]
        first = starts.ravel().nonzero()[0]
        last = stops.ravel().nonzero()[0]
        row = first // width
        keep = is_end.ravel()[last] | ((last % width) == lengths[row] - 1)
        row, first, last = row[keep], first[keep], last[keep]
        length = last - first + 1
        order = np.lexsort((rng.random(len(row)), row))
        row, first, length = row[order], first[order], length[order]
        covered = _exclusive_segment_cumsum(length, np.bincount(row, minlength=batch))
        target = np.maximum(np.floor(self.config.gap_sentence_ratio * lengths).astype(np.int64), 1)
        take = covered < target[row]
        row, first, length = row[take], first[take], length[take]
        return _Spans(row, first % width, length, np.ones(len(row), dtype=bool)).sorted()

    def document_spans(self, tokens: np.ndarray, lengths: np.ndarray, rng: np.random.Generator) -> _Spans:
        """Document mode: one blank per sample of a length drawn once per batch in
        [gpt_min_ratio * shortest, longest - 2] (capped at each text's length - 2): a suffix when the sample packs
        several documents or with probability ``gpt_infill_prob``, else a span placed uniformly in the document."""
        ids = self.ids
        batch, width = tokens.shape
        low = int(self.config.gpt_min_ratio * int(lengths.min()))
        high = max(int(lengths.max()) - 2, low)
        longest = int(rng.integers(low, high + 1))
        gen = np.minimum(longest, lengths - 2)
        is_eos = (tokens == ids.eos) & (np.arange(width) < lengths[:, None])
        first_eos = np.where(is_eos.any(axis=1), is_eos.argmax(axis=1), -1)
        multiple = (first_eos != -1) & (first_eos != lengths - 1)
        suffix = multiple | (rng.random(batch) < self.config.gpt_infill_prob)
        # Infill: the document is the text without [CLS] and without its last token (eos or the cut-off end).
        place = np.floor(rng.random(batch) * (lengths - 2 - gen + 1)).astype(np.int64)
        start = np.where(suffix, lengths - gen, 1 + place)
        ok = gen > 0
        rows = ok.nonzero()[0]
        return _Spans(rows, start[ok], gen[ok], ~suffix[ok])

    def split_short(self, texts: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        """``short_seq_prob``: cut every text into (seq_length - 1) // n crops of about n tokens (n drawn per batch
        in [32, seq_length - 2]), each starting at a sentence start and ending at a sentence end where possible."""
        ids = self.ids
        n = int(rng.integers(32, self.config.seq_length - 1))
        splits = (self.config.seq_length - 1) // n
        out = []
        for text in texts:  # rare path (a few percent of batches); every step inside is vectorized
            body = np.asarray(text[1:], dtype=np.int64)
            size = len(body)
            if n >= size:
                out.extend(np.concatenate(([ids.cls], body)) for _ in range(splits))
                continue
            boundary = self.sentence_ends[np.minimum(body, len(self.sentence_ends) - 1)] | (body == ids.eos)
            boundary |= body == ids.cls
            positions = np.arange(size)
            good_start = np.zeros(size, dtype=bool)
            good_start[0] = True
            good_start[1:] = boundary[:-1] & (body[1:] != ids.eos) & (body[1:] != ids.cls)
            last_start = np.maximum.accumulate(np.where(good_start, positions, 0))
            good_end = np.zeros(size + 1, dtype=bool)
            good_end[1:] = boundary
            last_end = np.maximum.accumulate(np.where(good_end, np.arange(size + 1), 0))
            begin = last_start[rng.integers(0, size - n, size=splits)]
            end = last_end[begin + n]
            end = np.where(end - begin < n // 2, begin + n, end)
            for b, e in zip(begin.tolist(), end.tolist(), strict=True):
                out.append(np.concatenate(([ids.cls], body[b:e])))
        return out

    # ------------------------------------------------------------------ layouts
    def build_blocks(
        self,
        tokens: np.ndarray,
        lengths: np.ndarray,
        spans: _Spans,
        mode: int,
        rng: np.random.Generator,
    ) -> dict[str, np.ndarray]:
        """Part A (the text, each span replaced by one blank) then part B (the spans, in shuffled order).

        Spans must be sorted by row then start (as ``_Spans`` keeps them). Part A is one compress of the text and
        its positions are its columns, so per-span quantities come from the span list, and every output is
        filled by flat scatters: a few dozen numpy calls per batch, whatever the batch size.
        """
        cfg, ids = self.config, self.ids
        batch, width = tokens.shape
        n_spans = len(spans.row)

        # Part A: the text without the span interiors (each span keeps its first token, which becomes the blank).
        interior = _covered(spans.row, spans.start + 1, spans.length - 1, batch, width)
        keep = ~interior & (np.arange(width) < lengths[:, None])
        a_tokens = tokens[keep]
        per_row = np.bincount(spans.row, minlength=batch)
        row_first = (per_row.cumsum() - per_row)[spans.row]  # index of the first span of each span's row
        sep = keep.sum(axis=1)
        # A span's blank sits where its start lands in part A: after the interiors of the row's earlier spans.
        blank_at = spans.start - _sum_before(spans.length - 1, row_first)
        shift = None
        if cfg.random_position:
            # Original: offset in [0, seq_length - last position) when the sample does not reach the end.
            suffix_row = np.zeros(batch, dtype=bool)
            suffix_row[spans.row[~spans.eop]] = True
            room = cfg.seq_length - (sep - 1)
            shift = np.where(room > 1, np.floor(rng.random(batch) * np.maximum(room, 1)), 0).astype(np.int64)
            shift = np.where(suffix_row, 0, shift)

        # Part-B order: shuffled within each row (or text order), and the index of each span in it.
        if cfg.no_shuffle_block or cfg.encoder_decoder:
            order = np.arange(n_spans)
        else:
            order = np.lexsort((rng.random(n_spans), spans.row))
        rank = np.empty(n_spans, dtype=np.int64)
        rank[order] = np.arange(n_spans) - (per_row.cumsum() - per_row).repeat(per_row)

        # Blank tokens in part A.
        if mode == SENTENCE:
            blank = ids.smask if cfg.task_mask else ids.mask
        elif mode == DOCUMENT:
            blank = ids.gmask if cfg.task_mask else ids.mask
        elif cfg.sentinel_token:
            blank = self._sentinel(self._sentinel_masks, rank)
        else:
            blank = ids.mask

        # Part B, element by element: span s contributes its start token then its tokens (block offset j).
        o_row, o_start = spans.row[order], spans.start[order]
        o_len, o_eop = spans.length[order], spans.eop[order]
        o_size = o_len + o_eop
        o_offset = _sum_before(o_size, row_first)  # the order only permutes spans within their row
        elem = np.arange(n_spans).repeat(o_size)
        j = np.arange(len(elem)) - (o_size.cumsum() - o_size).repeat(o_size)
        e_row, e_len = o_row[elem], o_len[elem]
        text_at = e_row * width + o_start[elem]
        flat_tokens = tokens.ravel()
        if cfg.sentinel_token:
            sop = self._sentinel(self._sentinel_sops, rank[order])[elem]
        else:
            sop = ids.sop
        b_input = np.where(j == 0, sop, flat_tokens[text_at + np.maximum(j - 1, 0)])
        b_target = np.where(j == e_len, ids.eop, flat_tokens[text_at + np.minimum(j, e_len - 1)])
        b_pos = (blank_at[order] if shift is None else blank_at[order] + shift[o_row])[elem]
        if cfg.sentinel_token:
            b_pos = b_pos + o_eop[elem]  # original: part B sits at the position after the span
        if mode == TOKEN and cfg.block_mask_prob > 0:
            hide = (j > 0) & (rng.random(len(elem)) < cfg.block_mask_prob)
            b_input = np.where(hide, ids.dblock, b_input)
        b_label = np.where(b_target == ids.cls, -100, b_target)
        b_col = o_offset[elem] + j
        part_b = np.bincount(o_row, weights=o_size, minlength=batch).astype(np.int64)
        modes = np.full(batch, mode, dtype=np.int64)

        part_a = (a_tokens, sep, spans.row, blank_at, blank, shift)
        if cfg.encoder_decoder:
            input_ids, position_ids = self._part_a(*part_a, int(sep.max(initial=0)))
            decoder = self._decoder(batch, e_row, b_col, b_input, b_label, b_pos, j, int(part_b.max(initial=0)))
            return {"input_ids": input_ids, "position_ids": position_ids, "sep": sep, **decoder, "blank_mode": modes}

        out_len = int((sep + part_b).max(initial=0))
        input_ids, position_ids = self._part_a(*part_a, out_len)
        labels = np.full((batch, out_len), -100, dtype=np.int64)
        b_dest = sep[e_row] + b_col
        input_ids.ravel()[e_row * out_len + b_dest] = b_input
        labels.ravel()[e_row * out_len + b_dest] = b_label
        dest = e_row * (2 * out_len) + b_dest
        position_ids.ravel()[dest] = b_pos
        position_ids.ravel()[dest + out_len] = j + 1
        if mode == TOKEN and cfg.context_mask_ratio > 0:
            self._mask_context(input_ids, sep, lengths, rng)
        self.stats["target_tokens"] += int(np.count_nonzero(b_label != -100))
        return {"input_ids": input_ids, "position_ids": position_ids, "sep": sep, "labels": labels, "blank_mode": modes}

    def _part_a(self, a_tokens, sep, span_row, blank_at, blank, shift, out_len: int) -> tuple[np.ndarray, np.ndarray]:
        """``input_ids`` and ``position_ids`` (``[B, out_len]``, ``[B, 2, out_len]``) holding part A: the kept
        text tokens of every row back to back in ``a_tokens``, blanks written over the spans' first tokens, and
        text positions that are the columns (plus a row's random shift)."""
        batch = len(sep)
        input_ids = np.full((batch, out_len), self.ids.pad, dtype=np.int64)
        row_first = np.arange(batch) * out_len - (sep.cumsum() - sep)
        input_ids.ravel()[np.arange(len(a_tokens)) + row_first.repeat(sep)] = a_tokens
        input_ids.ravel()[span_row * out_len + blank_at] = blank
        position_ids = np.zeros((batch, 2, out_len), dtype=np.int64)
        columns = np.arange(out_len)
        text_positions = columns + shift[:, None] if shift is not None else columns
        position_ids[:, 0] = np.where(columns < sep[:, None], text_positions, 0)
        return input_ids, position_ids

    def _decoder(self, batch, e_row, b_col, b_input, b_label, b_pos, j, tgt_len: int) -> dict[str, np.ndarray]:
        """Encoder-decoder layout: part B (spans in text order) as its own padded decoder sequences."""
        decoder_input_ids = np.full((batch, tgt_len), self.ids.pad, dtype=np.int64)
        decoder_position_ids = np.zeros((batch, 2, tgt_len), dtype=np.int64)
        labels = np.full((batch, tgt_len), -100, dtype=np.int64)
        dest = e_row * tgt_len + b_col
        decoder_input_ids.ravel()[dest] = b_input
        labels.ravel()[dest] = b_label
        dest = e_row * (2 * tgt_len) + b_col
        decoder_position_ids.ravel()[dest] = b_pos
        decoder_position_ids.ravel()[dest + tgt_len] = j + 1
        return {"decoder_input_ids": decoder_input_ids, "decoder_position_ids": decoder_position_ids, "labels": labels}

    def _sentinel(self, table: np.ndarray, rank: np.ndarray) -> np.ndarray:
        if len(rank) and rank.max() >= len(table):
            raise ValueError(f"a sample has {rank.max() + 1} spans but only {len(table)} sentinel ids are set")
        return table[rank]

    def _mask_context(self, input_ids: np.ndarray, sep: np.ndarray, lengths: np.ndarray, rng) -> None:
        """``context_mask_ratio``: hide ``ratio * text length`` part-A tokens among those within
        ``context_mask_range`` of a blank (after it) or of the end of their stretch of text (before a blank)."""
        cfg, ids = self.config, self.ids
        reach = cfg.context_mask_range
        for b in range(input_ids.shape[0]):  # option off by default; each row is vectorized
            part_a = input_ids[b, : sep[b]]
            is_blank = part_a == ids.mask
            if cfg.sentinel_token:
                is_blank |= np.isin(part_a, self._sentinel_masks)
            cols = np.arange(len(part_a))
            prev_blank = np.maximum.accumulate(np.where(is_blank, cols, -1))
            next_stop = np.minimum.accumulate(np.where(is_blank, cols, len(part_a))[::-1])[::-1]
            near = ((prev_blank >= 0) & (cols - prev_blank - 1 < reach)) | (next_stop - cols <= reach)
            candidates = np.flatnonzero(near & ~is_blank)
            count = min(int(cfg.context_mask_ratio * lengths[b]), len(candidates))
            if count:
                chosen = rng.choice(candidates, size=count, replace=False)
                input_ids[b, chosen] = ids.dblock

    def build_masked(self, tokens: np.ndarray, lengths: np.ndarray, spans: _Spans) -> dict[str, np.ndarray]:
        """Masked-LM baseline: every token of a span becomes ``[MASK]`` in place; attention fully bidirectional."""
        ids = self.ids
        batch, width = tokens.shape
        covered = _covered(spans.row, spans.start, spans.length, batch, width)
        valid = np.arange(width) < lengths[:, None]
        input_ids = np.where(covered, ids.mask, tokens)
        labels = np.where(covered & valid & (tokens != ids.cls), tokens, -100)
        position_ids = np.zeros((batch, 2, width), dtype=np.int64)
        position_ids[:, 0] = np.where(valid, np.arange(width), 0)
        self.stats["target_tokens"] += int((labels != -100).sum())
        return {
            "input_ids": input_ids,
            "position_ids": position_ids,
            "sep": lengths.astype(np.int64),
            "labels": labels,
            "blank_mode": np.full(batch, MLM, dtype=np.int64),
        }

    def build_causal(self, tokens: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
        """Causal-LM baseline: ``sep = 0`` (no bidirectional part); the label at i is the token at i + 1."""
        ids = self.ids
        batch, width = tokens.shape
        valid = np.arange(width) < lengths[:, None]
        labels = np.full((batch, width), -100, dtype=np.int64)
        nxt = tokens[:, 1:]
        labels[:, :-1] = np.where(valid[:, 1:] & (nxt != ids.cls), nxt, -100)
        position_ids = np.zeros((batch, 2, width), dtype=np.int64)
        position_ids[:, 0] = np.where(valid, np.arange(width), 0)
        self.stats["target_tokens"] += int((labels != -100).sum())
        return {
            "input_ids": tokens.copy(),
            "position_ids": position_ids,
            "sep": np.zeros(batch, dtype=np.int64),
            "labels": labels,
            "blank_mode": np.full(batch, CLM, dtype=np.int64),
        }

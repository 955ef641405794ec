"""The blank-infilling builder: exact layouts on hand-made spans, and distributions over many samples."""

from __future__ import annotations

import numpy as np
import pytest

from torchglm.data.blanks import (
    BLANK_PRESETS,
    CLM,
    DOCUMENT,
    MLM,
    SENTENCE,
    TOKEN,
    BlankConfig,
    BlankInfillingBuilder,
    _Spans,
    pad_texts,
)
from torchglm.data.special import SpecialIds

IDS = SpecialIds.bert_uncased()
PERIOD = 1012
WORDS = (2000, 3000)  # ordinary word ids, none a sentence end
ENDS = np.zeros(30526, dtype=bool)
ENDS[PERIOD] = True
M, S, E, G, SM = IDS.mask, IDS.sop, IDS.eop, IDS.gmask, IDS.smask


def builder(**options) -> BlankInfillingBuilder:
    return BlankInfillingBuilder(BlankConfig(**options), IDS, ENDS)


def spans(rows, starts, lengths, eop=None) -> _Spans:
    rows, starts, lengths = (np.array(x, dtype=np.int64) for x in (rows, starts, lengths))
    eop = np.ones(len(rows), dtype=bool) if eop is None else np.array(eop, dtype=bool)
    return _Spans(rows, starts, lengths, eop)


def random_text(rng, length: int, sentence_every: int = 0, docs: int = 1) -> np.ndarray:
    """[CLS] words ... [eos] [CLS] words ...: ``docs`` packed documents, the last one cut off."""
    pieces, left = [], length
    for d in range(docs):
        size = left if d == docs - 1 else max(3, left // (docs - d))
        body = rng.integers(*WORDS, size=size - 1)
        if sentence_every:
            body[sentence_every - 1 :: sentence_every] = PERIOD
        if d < docs - 1:
            body[-1] = IDS.eos
        pieces.append(np.concatenate(([IDS.cls], body)))
        left -= size
    return np.concatenate(pieces)[:length]


def fill_blanks(out: dict, row: int) -> list[int]:
    """Rebuild the original text from a built sample: every blank of part A replaced by its part-B targets."""
    sep = int(out["sep"][row])
    inputs, labels = out["input_ids"][row], out["labels"][row]
    pos, block = out["position_ids"][row]
    part_b = {}
    for col in range(sep, len(inputs)):
        if labels[col] == -100 and block[col] == 0:
            continue
        part_b.setdefault(int(pos[col]), []).append((int(block[col]), int(labels[col])))
    text = []
    for col in range(sep):
        if inputs[col] in (M, G, SM):
            block_targets = [t for _, t in sorted(part_b.pop(int(pos[col])))]
            assert block_targets[-1] == E
            text += block_targets[:-1]
        else:
            text.append(int(inputs[col]))
    assert not part_b, "part-B blocks without a blank"
    return text


# ---------------------------------------------------------------------------- layouts on known spans
def test_token_layout_known_spans():
    text = np.array([IDS.cls, 11, 12, 13, 14, 15, 16])
    tokens, lengths = pad_texts([text], IDS.pad)
    b = builder(no_shuffle_block=True)
    out = b.build_blocks(tokens, lengths, spans([0, 0], [2, 5], [2, 1]), TOKEN, np.random.default_rng(0))
    assert out["input_ids"][0].tolist() == [101, 11, M, 14, M, 16, S, 12, 13, S, 15]
    assert out["labels"][0].tolist() == [-100] * 6 + [12, 13, E, 15, E]
    assert out["position_ids"][0, 0].tolist() == [0, 1, 2, 3, 4, 5, 2, 2, 2, 4, 4]
    assert out["position_ids"][0, 1].tolist() == [0] * 6 + [1, 2, 3, 1, 2]
    assert out["sep"].tolist() == [6]
    assert out["blank_mode"].tolist() == [TOKEN]


def test_shuffled_blocks_keep_their_positions():
    text = np.array([IDS.cls, 11, 12, 13, 14, 15, 16])
    tokens, lengths = pad_texts([text], IDS.pad)
    orders = set()
    for seed in range(20):
        out = builder().build_blocks(tokens, lengths, spans([0, 0], [2, 5], [2, 1]), TOKEN, np.random.default_rng(seed))
        part_b = out["input_ids"][0, 6:].tolist()
        assert part_b in ([S, 12, 13, S, 15], [S, 15, S, 12, 13])
        if part_b[1] == 15:
            assert out["position_ids"][0, 0, 6:].tolist() == [4, 4, 2, 2, 2]
            assert out["labels"][0, 6:].tolist() == [15, E, 12, 13, E]
        orders.add(part_b[1])
        assert fill_blanks(out, 0) == text.tolist()
    assert orders == {12, 15}


def test_sentence_and_document_layouts():
    text = np.array([IDS.cls, 11, 12, PERIOD, 14, 15, PERIOD])
    tokens, lengths = pad_texts([text], IDS.pad)
    out = builder().build_blocks(tokens, lengths, spans([0], [4], [3]), SENTENCE, np.random.default_rng(0))
    assert out["input_ids"][0].tolist() == [101, 11, 12, PERIOD, SM, S, 14, 15, PERIOD]
    assert out["labels"][0].tolist() == [-100] * 5 + [14, 15, PERIOD, E]
    # Document suffix: no <|endofpiece|>; part B is sop + span[:-1], targets the span (as the original).
    text = np.array([IDS.cls, 11, 12, 13, 14, 15])
    tokens, lengths = pad_texts([text], IDS.pad)
    out = builder().build_blocks(tokens, lengths, spans([0], [3], [3], eop=[False]), DOCUMENT, np.random.default_rng(0))
    assert out["input_ids"][0].tolist() == [101, 11, 12, G, S, 13, 14]
    assert out["labels"][0].tolist() == [-100] * 4 + [13, 14, 15]
    assert out["position_ids"][0].tolist() == [[0, 1, 2, 3, 3, 3, 3], [0, 0, 0, 0, 1, 2, 3]]
    assert out["sep"].tolist() == [4]
    # Without task masks every blank is [MASK].
    out = builder(task_mask=False).build_blocks(
        tokens, lengths, spans([0], [3], [3], [False]), DOCUMENT, np.random.default_rng(0)
    )
    assert out["input_ids"][0, 3] == M


def test_padding_between_rows():
    texts = [np.array([IDS.cls, 11, 12, 13]), np.array([IDS.cls, 21, 22, 23, 24, 25])]
    tokens, lengths = pad_texts(texts, IDS.pad)
    out = builder(no_shuffle_block=True).build_blocks(
        tokens, lengths, spans([0, 1], [1, 2], [1, 2]), TOKEN, np.random.default_rng(0)
    )
    assert out["input_ids"].shape == (2, 8)
    assert out["input_ids"][0].tolist() == [101, M, 12, 13, S, 11, 0, 0]
    assert out["labels"][0].tolist() == [-100] * 4 + [11, E, -100, -100]
    assert out["position_ids"][0, :, 6:].tolist() == [[0, 0], [0, 0]]
    assert out["sep"].tolist() == [4, 5]


def test_options_sentinel_random_position_block_mask_context_mask():
    text = np.array([IDS.cls, 11, 12, 13, 14, 15, 16])
    tokens, lengths = pad_texts([text], IDS.pad)
    ids = IDS.with_new_tokens(30526, sentinels=4, dblock=True)
    b = BlankInfillingBuilder(BlankConfig(sentinel_token=True, no_shuffle_block=True), ids, ENDS)
    out = b.build_blocks(tokens, lengths, spans([0, 0], [2, 5], [2, 1]), TOKEN, np.random.default_rng(0))
    m1, s1 = ids.sentinel_masks[0], ids.sentinel_sops[0]
    assert out["input_ids"][0].tolist() == [101, 11, M, 14, m1, 16, S, 12, 13, s1, 15]
    assert out["position_ids"][0, 0, 6:].tolist() == [3, 3, 3, 5, 5]  # one after the blank, as the original

    b = BlankInfillingBuilder(BlankConfig(random_position=True, seq_length=64), ids, ENDS)
    shifts = set()
    for seed in range(30):
        out = b.build_blocks(tokens, lengths, spans([0], [2], [2]), TOKEN, np.random.default_rng(seed))
        pos = out["position_ids"][0, 0]
        shift = int(pos[0])
        shifts.add(shift)
        assert pos.tolist() == [shift + p for p in [0, 1, 2, 3, 4, 5, 2, 2, 2]]
        assert 0 <= shift < 64 - 5
    assert len(shifts) > 10

    b = BlankInfillingBuilder(BlankConfig(block_mask_prob=0.5), ids, ENDS)
    long_text = np.concatenate(([IDS.cls], np.arange(2000, 2200)))
    tokens2, lengths2 = pad_texts([long_text], IDS.pad)
    out = b.build_blocks(tokens2, lengths2, spans([0], [10], [100]), TOKEN, np.random.default_rng(0))
    part_b = out["input_ids"][0, out["sep"][0] :]
    hidden = (part_b == ids.dblock).mean()
    assert part_b[0] == S and 0.35 < hidden < 0.65
    assert (out["labels"][0, out["sep"][0] : -1] == np.arange(2009, 2109)).all()  # targets stay the tokens

    b = BlankInfillingBuilder(BlankConfig(context_mask_ratio=0.1, context_mask_range=3), ids, ENDS)
    out = b.build_blocks(tokens2, lengths2, spans([0, 0], [50, 120], [5, 5]), TOKEN, np.random.default_rng(0))
    hidden = np.flatnonzero(out["input_ids"][0] == ids.dblock)
    # min(int(0.1 * 201) = 20, candidates): 3 tokens each side of both blanks, 3 at the end of part A = 15.
    assert hidden.tolist() == [47, 48, 49, 51, 52, 53, 113, 114, 115, 117, 118, 119, 190, 191, 192]
    assert hidden.max() < out["sep"][0]

    with pytest.raises(ValueError, match="dBLOCK"):
        BlankInfillingBuilder(BlankConfig(block_mask_prob=0.1), IDS, ENDS)
    with pytest.raises(ValueError, match="sentinel"):
        BlankInfillingBuilder(BlankConfig(sentinel_token=True), IDS, ENDS)


def test_encoder_decoder_layout():
    text = np.array([IDS.cls, 11, 12, 13, 14, 15, 16])
    tokens, lengths = pad_texts([text], IDS.pad)
    out = builder(encoder_decoder=True).build_blocks(
        tokens, lengths, spans([0, 0], [2, 5], [2, 1]), TOKEN, np.random.default_rng(0)
    )
    assert out["input_ids"][0].tolist() == [101, 11, M, 14, M, 16]
    assert out["decoder_input_ids"][0].tolist() == [S, 12, 13, S, 15]
    assert out["labels"][0].tolist() == [12, 13, E, 15, E]
    assert out["decoder_position_ids"][0].tolist() == [[2, 2, 2, 4, 4], [1, 2, 3, 1, 2]]


def test_masked_and_causal_baselines():
    text = np.array([IDS.cls, 11, 12, 13, IDS.eos, IDS.cls, 21])
    tokens, lengths = pad_texts([text], IDS.pad)
    out = builder(objective="mlm").build_masked(tokens, lengths, spans([0], [2], [2]))
    assert out["input_ids"][0].tolist() == [101, 11, M, M, 0, 101, 21]
    assert out["labels"][0].tolist() == [-100, -100, 12, 13, -100, -100, -100]
    assert out["sep"].tolist() == [7] and out["position_ids"][0, 0].tolist() == list(range(7))
    out = builder(objective="clm").build_causal(tokens, lengths)
    assert out["input_ids"][0].tolist() == text.tolist()
    assert out["labels"][0].tolist() == [11, 12, 13, IDS.eos, -100, 21, -100]  # no [CLS] targets
    assert out["sep"].tolist() == [0]
    rng = np.random.default_rng(0)
    texts = [random_text(rng, 100) for _ in range(4)]
    assert (builder(objective="mlm").build(texts, 0)["blank_mode"] == MLM).all()
    assert (builder(objective="clm").build(texts, 0)["blank_mode"] == CLM).all()


# ---------------------------------------------------------------------------- distributions
def collect(b: BlankInfillingBuilder, texts_fn, batches: int, batch_size: int = 16):
    outs = []
    for seed in range(batches):
        texts = texts_fn(np.random.default_rng(seed + 10_000), batch_size)
        outs.append((texts, b.build(texts, seed)))
    return outs


def test_token_mode_fraction_span_lengths_and_targets():
    b = builder(bert_prob=1.0, gap_sentence_prob=0.0, seq_length=512)

    def texts_fn(rng, size):
        return [random_text(rng, 512, docs=int(rng.integers(1, 4))) for _ in range(size)]

    lengths, fractions = [], []
    for texts, out in collect(b, texts_fn, 40):
        assert (out["blank_mode"] == TOKEN).all()
        for row, text in enumerate(texts):
            assert fill_blanks(out, row) == text.tolist()  # every part-B target is the original token
            sep = out["sep"][row]
            block = out["position_ids"][row, 1]
            starts = np.flatnonzero(block == 1)
            ends = np.append(starts[1:], (out["labels"][row] != -100).sum() + sep)
            span_lengths = ends - starts - 1
            lengths += span_lengths.tolist()
            fractions.append(span_lengths.sum() / len(text))
            assert span_lengths.sum() >= int(0.15 * len(text))
            assert not np.isin(out["labels"][row], [IDS.cls]).any()
    assert b.stats["unplaced_spans"] == 0
    assert 0.15 <= np.mean(fractions) < 0.165
    # Span lengths against Poisson(3) truncated to 1..39: total-variation distance over ~15k spans.
    probs = BlankConfig().span_length_probs()
    hist = np.bincount(lengths, minlength=41)[1:40] / len(lengths)
    assert max(lengths) < 40 and min(lengths) >= 1
    assert 0.5 * np.abs(hist - probs).sum() < 0.03, (hist[:8], probs[:8])


def test_spans_never_cover_boundaries_and_spread_over_documents():
    b = builder(bert_prob=1.0, gap_sentence_prob=0.0)
    rng = np.random.default_rng(0)
    texts = [random_text(rng, 512, docs=4) for _ in range(64)]
    out = b.build(texts, 3)
    docs_hit = []
    for row, text in enumerate(texts):
        sep = out["sep"][row]
        part_a = out["input_ids"][row, :sep]
        # Blanks sit where content was: [CLS] and eos of every document are still in part A.
        assert (part_a == IDS.cls).sum() == (text == IDS.cls).sum()
        assert (part_a == IDS.eos).sum() == (text == IDS.eos).sum()
        assert part_a[-1] == text[-1]  # the last token of a cut-off document is never masked
        doc_of = np.cumsum(part_a == IDS.cls)
        docs_hit.append(len(set(doc_of[part_a == M].tolist())))
    assert np.mean(docs_hit) > 2.5


def test_sentence_mode_coverage():
    b = builder(bert_prob=0.0, gap_sentence_prob=1.0)

    def texts_fn(rng, size):
        return [random_text(rng, 512, sentence_every=int(rng.integers(5, 30)), docs=2) for _ in range(size)]

    for texts, out in collect(b, texts_fn, 10):
        assert (out["blank_mode"] == SENTENCE).all()
        for row, text in enumerate(texts):
            assert fill_blanks(out, row) == text.tolist()
            sep = out["sep"][row]
            part_a = out["input_ids"][row, :sep]
            blanks = np.flatnonzero(part_a == SM)
            assert len(blanks) and not (part_a == M).any()
            assert all(part_a[i - 1] in (PERIOD, IDS.cls, IDS.eos, SM) for i in blanks)  # whole sentences
            targets = out["labels"][row, sep:]
            covered = (targets != E).sum()
            assert covered >= int(0.15 * len(text))
            assert set(targets[np.flatnonzero(targets == E) - 1].tolist()) <= {PERIOD} | set(text[-1:].tolist())


def test_document_mode_ratio_and_suffix():
    b = builder(bert_prob=0.0, gap_sentence_prob=0.0, gpt_infill_prob=0.5)

    def texts_fn(rng, size):
        return [random_text(rng, 512, docs=1) for _ in range(size)]

    ratios, suffixes = [], 0
    for texts, out in collect(b, texts_fn, 30, batch_size=8):
        assert (out["blank_mode"] == DOCUMENT).all()
        for row, text in enumerate(texts):
            sep = out["sep"][row]
            part_a = out["input_ids"][row, :sep]
            assert (part_a == G).sum() == 1
            n_targets = (out["labels"][row] != -100).sum()
            if part_a[-1] == G:  # suffix: targets are the text's end, no <|endofpiece|>
                suffixes += 1
                span = n_targets
                assert out["labels"][row, sep : sep + span].tolist() == text[len(text) - span :].tolist()
            else:
                span = n_targets - 1
                assert fill_blanks(out, row) == text.tolist()
            ratios.append(span / len(text))
    assert 0.5 <= min(ratios) and max(ratios) <= 1.0
    assert 0.3 < suffixes / len(ratios) < 0.7
    # A sample packing several documents always gets a suffix.
    rng = np.random.default_rng(1)
    out = b.build([random_text(rng, 300, docs=3) for _ in range(8)], 5)
    assert (out["input_ids"][np.arange(8), out["sep"] - 1] == G).all()


def test_multitask_mix_per_batch_and_determinism():
    b = builder()  # token 0.5 / sentence 0.3 / document 0.2
    rng = np.random.default_rng(0)
    texts = [random_text(rng, 256, sentence_every=12) for _ in range(4)]
    tasks = []
    for seed in range(300):
        task, split, single = b.choose_mode(np.random.default_rng((7, seed)))
        tasks.append(task)
        assert not split and not single
    freq = np.bincount(tasks, minlength=3) / len(tasks)
    assert abs(freq[TOKEN] - 0.5) < 0.08 and abs(freq[SENTENCE] - 0.3) < 0.08 and abs(freq[DOCUMENT] - 0.2) < 0.08
    first, again = b.build(texts, (1, 2)), b.build(texts, (1, 2))
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert len(set(first["blank_mode"].tolist())) == 1  # one objective per batch
    other = b.build(texts, (1, 3))
    assert any(first[k].shape != other[k].shape or not np.array_equal(first[k], other[k]) for k in first)


def test_single_span_and_short_sequences():
    b = builder(single_span_prob=1.0)
    rng = np.random.default_rng(0)
    texts = [random_text(rng, 200) for _ in range(8)]
    out = b.build(texts, 0)
    assert (out["blank_mode"] == TOKEN).all()
    assert ((out["input_ids"] == M).sum(axis=1) == 1).all()

    b = builder(short_seq_prob=1.0, seq_length=200, bert_prob=1.0, gap_sentence_prob=0.0)
    texts = [random_text(rng, 200, sentence_every=9, docs=2) for _ in range(4)]
    out = b.build(texts, 1)
    assert out["input_ids"].shape[0] >= 4  # each text cut into (seq_length - 1) // n samples of n tokens
    for row in range(out["input_ids"].shape[0]):
        assert out["input_ids"][row, 0] == IDS.cls and out["sep"][row] <= 200


def test_presets_parse():
    for name, config in BLANK_PRESETS.items():
        assert isinstance(config, BlankConfig), name
    with pytest.raises(ValueError):
        BlankConfig(bert_prob=0.8, gap_sentence_prob=0.3)
    with pytest.raises(ValueError):
        BlankConfig(objective="t5")

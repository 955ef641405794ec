"""GLM's input layout: ``build_batch`` on hand-written cases, through a tiny model, and against the vectorised
pretraining builder, which writes the same layout with numpy (``torchglm.data.blanks``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from torchglm import GLMConfig, GLMForConditionalGeneration
from torchglm.data.blanks import BLANK_PRESETS, DOCUMENT, SENTENCE, TOKEN, BlankInfillingBuilder
from torchglm.data.collate import to_tensors
from torchglm.data.special import SpecialIds
from torchglm.layout import Block, Sample, block_columns, build_batch, extend_mask, model_inputs

# Tiny id space for the hand-written cases: pad 0, [CLS] 1, start 5, end 6, words 2-4 and 7-9.
PAD, CLS, SOP, EOP = 0, 1, 5, 6
N = -100
T, F = True, False


def as_lists(batch) -> dict:
    return {key: value.tolist() for key, value in batch.items()}


# ---------------------------------------------------------------------------------------------------------------
# build_batch on tiny examples


def two_samples() -> list[Sample]:
    return [
        Sample([CLS, 2, 3], [Block.span(SOP, [7, 8], position=1, end_id=EOP)]),
        Sample([CLS, 4], [Block.span(SOP, [9], position=1, end_id=EOP)]),
    ]


def test_packed_layout_gives_sep():
    out = build_batch(two_samples(), pad_id=PAD)
    assert set(out) == {"input_ids", "position_ids", "sep", "labels", "block_index"}
    assert as_lists(out) == {
        "input_ids": [[CLS, 2, 3, SOP, 7, 8], [CLS, 4, SOP, 9, PAD, PAD]],
        "position_ids": [[[0, 1, 2, 1, 1, 1], [0, 0, 0, 1, 2, 3]], [[0, 1, 1, 1, 0, 0], [0, 0, 1, 2, 0, 0]]],
        "sep": [3, 2],
        "labels": [[N, N, N, 7, 8, EOP], [N, N, 9, EOP, N, N]],
        "block_index": [[-1, -1, -1, 0, 0, 0], [-1, -1, 0, 0, -1, -1]],
    }
    assert set(model_inputs(out)) == {"input_ids", "position_ids", "sep"}
    # explicit_mask: the same layout, the mask spelled out (padding keys hidden, padding queries see part A).
    explicit = build_batch(two_samples(), pad_id=PAD, explicit_mask=True)
    assert "sep" not in explicit
    assert explicit["attention_mask"][1, 0].tolist() == [
        [T, T, F, F, F, F],
        [T, T, F, F, F, F],
        [T, T, T, F, F, F],
        [T, T, T, T, F, F],
        [T, T, F, F, F, F],  # padding query: part A only
        [T, T, F, F, F, F],
    ]
    assert set(model_inputs(explicit)) == {"input_ids", "position_ids", "attention_mask"}


ALIGNED_ROW0_MASK = [
    [T, T, T, F, F, F],
    [T, T, T, F, F, F],
    [T, T, T, F, F, F],
    [T, T, T, T, F, F],
    [T, T, T, T, T, F],
    [T, T, T, T, T, T],
]


def test_align_right_padding():
    out = build_batch(two_samples(), pad_id=PAD, align=True)
    assert "sep" not in out and out["attention_mask"].shape == (2, 1, 6, 6)
    assert out["attention_mask"].dtype == torch.bool
    assert out["input_ids"].tolist() == [[CLS, 2, 3, SOP, 7, 8], [CLS, 4, PAD, SOP, 9, PAD]]
    assert out["position_ids"].tolist() == [
        [[0, 1, 2, 1, 1, 1], [0, 0, 0, 1, 2, 3]],
        [[0, 1, 0, 1, 1, 0], [0, 0, 0, 1, 2, 0]],
    ]
    assert out["labels"].tolist() == [[N, N, N, 7, 8, EOP], [N, N, N, 9, EOP, N]]
    assert out["block_index"].tolist() == [[-1, -1, -1, 0, 0, 0], [-1, -1, -1, 0, 0, -1]]
    assert out["attention_mask"][0, 0].tolist() == ALIGNED_ROW0_MASK
    assert out["attention_mask"][1, 0].tolist() == [
        [T, T, F, F, F, F],
        [T, T, F, F, F, F],
        [T, T, F, F, F, F],  # padding query (column 2): part A
        [T, T, F, T, F, F],
        [T, T, F, T, T, F],
        [T, T, F, F, F, F],  # padding query (column 5): part A
    ]


def test_align_left_padding():
    out = build_batch(two_samples(), pad_id=PAD, align=True, pad_side="left")
    assert out["input_ids"].tolist() == [[CLS, 2, 3, SOP, 7, 8], [PAD, CLS, 4, SOP, 9, PAD]]
    assert out["position_ids"].tolist() == [
        [[0, 1, 2, 1, 1, 1], [0, 0, 0, 1, 2, 3]],
        [[0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 2, 0]],
    ]
    assert out["labels"].tolist() == [[N, N, N, 7, 8, EOP], [N, N, N, 9, EOP, N]]
    assert out["block_index"].tolist() == [[-1, -1, -1, 0, 0, 0], [-1, -1, -1, 0, 0, -1]]
    assert out["attention_mask"][0, 0].tolist() == ALIGNED_ROW0_MASK
    assert out["attention_mask"][1, 0].tolist() == [
        [F, T, T, F, F, F],  # padding query (column 0): part A
        [F, T, T, F, F, F],
        [F, T, T, F, F, F],
        [F, T, T, T, F, F],
        [F, T, T, T, T, F],
        [F, T, T, F, F, F],
    ]
    with pytest.raises(ValueError, match="pad_side"):
        build_batch(two_samples(), pad_id=PAD, align=True, pad_side="middle")


def test_align_equal_part_a_keeps_sep():
    samples = [Sample([CLS, 2], [Block.span(SOP, [7], 1, EOP)]), Sample([CLS, 3], [Block.span(SOP, [8, 9], 1, EOP)])]
    out = build_batch(samples, pad_id=PAD, align=True)
    assert out["sep"].tolist() == [2, 2] and "attention_mask" not in out
    assert out["input_ids"].tolist() == [[CLS, 2, SOP, 7, PAD], [CLS, 3, SOP, 8, 9]]


def test_align_int():
    out = build_batch(two_samples(), pad_id=PAD, align=4)
    assert out["input_ids"].tolist() == [[CLS, 2, 3, PAD, SOP, 7, 8], [CLS, 4, PAD, PAD, SOP, 9, PAD]]
    assert out["position_ids"].tolist() == [
        [[0, 1, 2, 0, 1, 1, 1], [0, 0, 0, 0, 1, 2, 3]],
        [[0, 1, 0, 0, 1, 1, 0], [0, 0, 0, 0, 1, 2, 0]],
    ]
    assert out["labels"].tolist() == [[N, N, N, N, 7, 8, EOP], [N, N, N, N, 9, EOP, N]]
    assert out["block_index"].tolist() == [[-1, -1, -1, -1, 0, 0, 0], [-1, -1, -1, -1, 0, 0, -1]]
    assert out["attention_mask"][0, 0].tolist() == [
        [T, T, T, F, F, F, F],
        [T, T, T, F, F, F, F],
        [T, T, T, F, F, F, F],
        [T, T, T, F, F, F, F],
        [T, T, T, F, T, F, F],
        [T, T, T, F, T, T, F],
        [T, T, T, F, T, T, T],
    ]
    # Part A padded to the column in every sample (equal lengths): not expressible as sep.
    same = build_batch([Sample([CLS, 2], [Block([SOP], 1)])] * 2, pad_id=PAD, align=3)
    assert "attention_mask" in same and same["input_ids"].tolist() == [[CLS, 2, PAD, SOP]] * 2
    with pytest.raises(ValueError, match="shorter than the longest part A"):
        build_batch(two_samples(), pad_id=PAD, align=2)


def test_blocks_isolated_choices():
    choices = [Block([SOP, 7], position=3), Block([SOP, 8, 9], position=3)]  # no labels: scoring inputs
    out = build_batch([Sample([CLS, 2, 3], choices)], pad_id=PAD, blocks_see_each_other=False)
    assert "labels" not in out and "sep" not in out
    assert out["input_ids"].tolist() == [[CLS, 2, 3, SOP, 7, SOP, 8, 9]]
    assert out["position_ids"].tolist() == [[[0, 1, 2, 3, 3, 3, 3, 3], [0, 0, 0, 1, 2, 1, 2, 3]]]
    assert out["block_index"].tolist() == [[-1, -1, -1, 0, 0, 1, 1, 1]]
    assert out["attention_mask"][0, 0].tolist() == [
        [T, T, T, F, F, F, F, F],
        [T, T, T, F, F, F, F, F],
        [T, T, T, F, F, F, F, F],
        [T, T, T, T, F, F, F, F],
        [T, T, T, T, T, F, F, F],
        [T, T, T, F, F, T, F, F],  # the second choice does not see the first
        [T, T, T, F, F, T, T, F],
        [T, T, T, F, F, T, T, T],
    ]
    # Seeing each other: the same inputs, the second block sees the first (expressible as sep).
    linked = build_batch([Sample([CLS, 2, 3], choices)], pad_id=PAD)
    assert linked["sep"].tolist() == [3] and torch.equal(linked["input_ids"], out["input_ids"])


def test_block_span_with_and_without_end():
    block = Block.span(SOP, [7, 8], position=4, end_id=EOP)
    assert (block.input_ids, block.position, block.block_position, block.labels) == (
        [SOP, 7, 8],
        [4, 4, 4],
        [1, 2, 3],
        [7, 8, EOP],
    )
    block = Block.span(SOP, [7, 8, 9], position=4)  # scoring a continuation: no end token
    assert (block.input_ids, block.position, block.block_position, block.labels) == (
        [SOP, 7, 8],
        [4, 4, 4],
        [1, 2, 3],
        [7, 8, 9],
    )
    assert Block.span(SOP, [], position=2, end_id=EOP).input_ids == [SOP]
    with pytest.raises(ValueError, match="empty span"):
        Block.span(SOP, [], position=2)
    with pytest.raises(ValueError, match="labels"):
        Block([SOP, 7], 1, labels=[7])
    with pytest.raises(ValueError, match="positions"):
        Block([SOP, 7], [1, 2, 3])
    assert Block([SOP, 7, 8], position=torch.tensor(3), block_position=2).block_position == [2, 3, 4]


def test_block_join_per_token_positions():
    first = Block.span(SOP, [7], position=1, end_id=EOP)
    second = Block.span(SOP, [8, 9], position=3, end_id=EOP)
    joined = Block.join([first, second])
    assert joined.input_ids == [SOP, 7, SOP, 8, 9]
    assert joined.position == [1, 1, 3, 3, 3]
    assert joined.block_position == [1, 2, 1, 2, 3]
    assert joined.labels == [7, EOP, 8, 9, EOP]
    assert Block.join([first, Block([SOP, 4], position=5)]).labels == [7, EOP, N, N]
    assert Block.join([Block([SOP], 1), Block([SOP], 2)]).labels is None
    out = build_batch([Sample([CLS, 2, 3, 4], [joined])], pad_id=PAD)
    assert out["position_ids"].tolist() == [[[0, 1, 2, 3, 1, 1, 3, 3, 3], [0, 0, 0, 0, 1, 2, 1, 2, 3]]]
    assert out["block_index"].tolist() == [[-1] * 4 + [0] * 5]


def test_length_padding_and_error():
    out = build_batch(two_samples(), pad_id=PAD, length=8)
    assert out["sep"].tolist() == [3, 2]
    assert out["input_ids"].tolist() == [[CLS, 2, 3, SOP, 7, 8, PAD, PAD], [CLS, 4, SOP, 9, PAD, PAD, PAD, PAD]]
    assert out["position_ids"].tolist() == [
        [[0, 1, 2, 1, 1, 1, 0, 0], [0, 0, 0, 1, 2, 3, 0, 0]],
        [[0, 1, 1, 1, 0, 0, 0, 0], [0, 0, 1, 2, 0, 0, 0, 0]],
    ]
    assert out["labels"].tolist() == [[N, N, N, 7, 8, EOP, N, N], [N, N, 9, EOP, N, N, N, N]]
    assert out["block_index"].tolist() == [[-1, -1, -1, 0, 0, 0, -1, -1], [-1, -1, 0, 0, -1, -1, -1, -1]]
    masked = build_batch(two_samples(), pad_id=PAD, length=8, align=True)
    assert masked["attention_mask"].shape == (2, 1, 8, 8)
    assert not masked["attention_mask"][:, 0, :, 6:].any()  # nobody sees the padding
    assert build_batch(two_samples(), pad_id=PAD, length=6)["input_ids"].shape == (2, 6)
    with pytest.raises(ValueError, match="sample 0 takes 6 tokens, over the length 5"):
        build_batch(two_samples(), pad_id=PAD, length=5)
    with pytest.raises(ValueError, match="no samples"):
        build_batch([], pad_id=PAD)


def test_position_offset():
    sample = Sample([CLS, 2, 3], [Block.span(SOP, [7], position=11, end_id=EOP)], position_offset=10)
    out = build_batch([sample, Sample([CLS, 4])], pad_id=PAD)
    assert out["position_ids"].tolist() == [[[10, 11, 12, 11, 11], [0, 0, 0, 1, 2]], [[0, 1, 0, 0, 0], [0] * 5]]
    assert out["input_ids"].tolist() == [[CLS, 2, 3, SOP, 7], [CLS, 4, PAD, PAD, PAD]]
    left = build_batch([sample, Sample([CLS, 4, 2, 3])], pad_id=PAD, align=True, pad_side="left")
    assert left["position_ids"][0].tolist() == [[0, 10, 11, 12, 11, 11], [0, 0, 0, 0, 1, 2]]


# ---------------------------------------------------------------------------------------------------------------
# block_columns and extend_mask (the decoding core's view of the same layout)


def test_block_columns():
    blocks = [Block.span(SOP, [7, 8], position=4, end_id=EOP), None, Block([9], position=2), Block([], 3)]
    out = block_columns(blocks, pad_id=PAD)
    assert as_lists(out) == {
        "input_ids": [[SOP, 7, 8], [PAD] * 3, [9, PAD, PAD], [PAD] * 3],
        "position_ids": [[[4, 4, 4], [1, 2, 3]], [[0] * 3] * 2, [[2, 0, 0], [1, 0, 0]], [[0] * 3] * 2],
        "labels": [[7, 8, EOP], [N] * 3, [N] * 3, [N] * 3],
        "block_index": [[0, 0, 0], [-1] * 3, [0, -1, -1], [-1] * 3],
    }
    assert block_columns([None, None], pad_id=PAD)["input_ids"].shape == (2, 0)


def test_extend_mask_small():
    visible = torch.tensor([[T, T, F], [T, F, F]])
    real = torch.tensor([[T, T], [T, F]])
    assert extend_mask(visible, real).tolist() == [
        [[[T, T, F, T, F], [T, T, F, T, T]]],
        [[[T, F, F, T, F], [T, F, F, T, F]]],  # the padding query sees what its row sees; nobody sees it
    ]


@pytest.mark.parametrize("pad_side", ["right", "left"])
def test_extend_mask_agrees_with_build_batch(pad_side):
    """A batch built whole equals, column block by column block, a cache of part A extended with blocks.

    Column blocks must line up to compare: build_batch packs a row's blocks back to back and block_columns pads
    each appended block to the widest, so every column block but the last has one width in all rows.
    """
    parts_a = [[CLS, 2, 3, 4], [CLS, 2], [CLS, 3, 4]]
    column_blocks = [  # one list per column block, one entry per row
        [Block.span(SOP, [7, 8], 4, EOP), Block.span(SOP, [9, 9], 1, EOP), Block([SOP, 7, 8], 2)],
        [Block.span(SOP, [7], 2, EOP), Block([SOP, 8], 1, 5), Block.span(SOP, [9, 2], 1)],
        [Block.span(SOP, [8, 9, 7, 8], 1, EOP), None, Block([SOP], 0)],
    ]
    samples = [
        Sample(a, [blocks[r] for blocks in column_blocks if blocks[r] is not None]) for r, a in enumerate(parts_a)
    ]
    whole = build_batch(samples, pad_id=PAD, align=True, pad_side=pad_side)
    mask = whole["attention_mask"][:, 0]
    width = max(map(len, parts_a))
    lengths = torch.tensor([len(a) for a in parts_a])
    columns = torch.arange(width)
    visible = columns < lengths[:, None] if pad_side == "right" else columns >= width - lengths[:, None]
    assert torch.equal(mask[:, :width, :width].any(dim=1), visible)  # part A: the cached keys
    keys = width
    for blocks in column_blocks:
        cols = block_columns(blocks, pad_id=PAD)
        real = cols["block_index"] >= 0
        w = real.shape[1]
        rows = slice(keys, keys + w)
        for key in ("input_ids", "labels"):
            assert torch.equal(cols[key], whole[key][:, rows]), key
        assert torch.equal(cols["position_ids"], whole["position_ids"][:, :, rows])
        extended = extend_mask(visible, real)[:, 0]  # [R, W, K + W]
        built = mask[:, rows, : keys + w]
        assert not mask[:, rows, keys + w :].any()  # nothing later is seen
        # Real queries: the same rows. Padding queries see part A in build_batch and every visible key in
        # extend_mask; their outputs are never used, and in both nobody sees them and they see no padding.
        assert torch.equal(built[real], extended[real])
        seen_padding = torch.cat([~visible, ~real], dim=1)[:, None, :]
        assert not (built & seen_padding).any() and not (extended & seen_padding).any()
        for r, q in (~real).nonzero().tolist():
            assert torch.equal(built[r, q, :width], visible[r, :width]) and not built[r, q, width:].any()
        visible = torch.cat([visible, real], dim=1)
        keys += w
    assert keys == whole["input_ids"].shape[1]


# ---------------------------------------------------------------------------------------------------------------
# Through a tiny model: the mask forms and the padding rule do not change what real tokens compute


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    config = GLMConfig(
        vocab_size=32,
        hidden_size=32,
        num_layers=2,
        num_attention_heads=4,
        max_sequence_length=64,
        embedding_dropout_prob=0.0,
        attention_dropout_prob=0.0,
        output_dropout_prob=0.0,
    )
    return GLMForConditionalGeneration(config).eval()


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**model_inputs(batch), use_cache=False).logits


def model_samples() -> list[Sample]:
    return [
        Sample(
            [CLS, 11, 3, 12, 13, 2],
            [Block.span(SOP, [14, 15], position=2, end_id=EOP), Block.span(SOP, [16], position=5, end_id=EOP)],
        ),
        Sample([CLS, 17, 3], [Block.span(SOP, [18, 19, 20], position=2, end_id=EOP)], position_offset=4),
        Sample([CLS, 21, 22, 23, 3, 24, 25, 26, 2], [Block.span(SOP, [27], position=4)]),
    ]


def real_columns(batch) -> torch.Tensor:
    """``[B, L]`` True at part-A and block tokens of a packed batch (part A before ``sep``)."""
    in_b = batch["block_index"] >= 0
    return in_b | (torch.arange(in_b.shape[1]) < batch["sep"][:, None])


def test_model_sep_and_explicit_mask_agree(tiny_model):
    packed = build_batch(model_samples(), pad_id=PAD)
    explicit = build_batch(model_samples(), pad_id=PAD, explicit_mask=True)
    assert "sep" in packed and "attention_mask" in explicit
    real = real_columns(packed)
    assert real.sum() < real.numel()  # some padding
    torch.testing.assert_close(logits(tiny_model, packed)[real], logits(tiny_model, explicit)[real])


@pytest.mark.parametrize("pad_side", ["right", "left"])
def test_model_aligned_batch_equals_each_sample_alone(tiny_model, pad_side):
    samples = model_samples()
    batch = build_batch(samples, pad_id=PAD, align=True, pad_side=pad_side)
    assert "attention_mask" in batch
    out = logits(tiny_model, batch)
    width = max(len(s.part_a) for s in samples)
    for i, sample in enumerate(samples):
        alone = logits(tiny_model, build_batch([sample], pad_id=PAD))[0]
        n, b = len(sample.part_a), sum(len(block) for block in sample.blocks)
        first = width - n if pad_side == "left" else 0
        torch.testing.assert_close(out[i, first : first + n], alone[:n])
        torch.testing.assert_close(out[i, width : width + b], alone[n : n + b])


def test_model_isolated_choices_equal_each_choice_alone(tiny_model):
    part_a = [CLS, 11, 12, 3, 13, 2]
    choices = [Block.span(SOP, [14, 15], 3), Block.span(SOP, [16, 17, 18], 3), Block.span(SOP, [19], 3)]
    batch = build_batch([Sample(part_a, choices)], pad_id=PAD, blocks_see_each_other=False)
    out = logits(tiny_model, batch)[0]
    column = len(part_a)
    for choice in choices:
        alone = logits(tiny_model, build_batch([Sample(part_a, [choice])], pad_id=PAD))[0]
        torch.testing.assert_close(out[: len(part_a)], alone[: len(part_a)])
        torch.testing.assert_close(out[column : column + len(choice)], alone[len(part_a) :])
        column += len(choice)
    linked = logits(tiny_model, build_batch([Sample(part_a, choices)], pad_id=PAD))[0]
    assert not torch.allclose(linked[len(part_a) + 2 :], out[len(part_a) + 2 :])  # seeing each other differs


# ---------------------------------------------------------------------------------------------------------------
# The pretraining builder against a per-sample statement of the same layout
#
# Presets and options covered: those whose output is the text rearranged, nothing rewritten. Left out:
# ``block_mask_prob`` (part-B inputs replaced by [dBLOCK] at random, so glm-2b / glm-10b), ``context_mask_ratio``
# (part-A tokens near blanks replaced by [dBLOCK]): both rewrite tokens by a random draw no statement of the
# layout can know; ``encoder_decoder``: part B goes to a separate decoder sequence, a layout build_batch does not
# make; ``short_seq_prob``: rows are random crops, not the given texts. The mlm baseline puts labels on part A
# (no part B); the clm baseline is checked below as one block after an empty part A.

PERIOD = 1012
WORDS = (2000, 3000)  # ordinary word ids, none a sentence end
ENDS = np.zeros(WORDS[1] + 1, dtype=bool)
ENDS[PERIOD] = True
ID_SETS = {
    "bert": SpecialIds.bert_uncased().with_new_tokens(30526, sentinels=64),  # pad == eos == 0
    "distinct": SpecialIds(pad=1, eos=2, cls=3, mask=4, sop=5, eop=6, gmask=7, smask=8).with_new_tokens(
        9, sentinels=64
    ),
}
LENGTHS = (9, 23, 64, 130, 257, 512)
OPTIONS = {
    "plain": {},
    "sentinel": {"sentinel_token": True},
    "random_position": {"random_position": True},
    "sentinel_random_position": {"sentinel_token": True, "random_position": True},
    "unshuffled": {"no_shuffle_block": True},
}


def packed_text(rng: np.random.Generator, length: int, ids: SpecialIds) -> np.ndarray:
    """[CLS] doc [eos] [CLS] doc ...: documents of random lengths with sentence ends, cut at ``length`` (one
    document in about a third of the texts); sometimes ending exactly with eos."""
    tokens: list[int] = []
    single = rng.random() < 0.35
    while len(tokens) < length:
        size = length if single else int(rng.integers(1, max(length, 3)))
        body = rng.integers(*WORDS, size=size)
        body[rng.random(size) < 0.1] = PERIOD
        tokens += [ids.cls, *body.tolist(), ids.eos]
    text = np.array(tokens[:length], dtype=np.int64)
    if rng.random() < 0.25:
        text[-1] = ids.eos
    return text


def recover_spans(out: dict, row: int, ids: SpecialIds, sentinel: bool):
    """From the builder's output: ``sep``, the position shift and the spans in part-B order, each as
    (blank column in part A, span tokens, has <|endofpiece|>)."""
    sep = int(out["sep"][row])
    inputs, labels = out["input_ids"][row].tolist(), out["labels"][row].tolist()
    pos, block_pos = out["position_ids"][row].tolist()
    shift = pos[0]  # part A's text positions are its columns plus the row's shift
    end = sep
    while end < len(inputs) and block_pos[end] > 0:  # part B: block positions from 1, padding 0
        end += 1
    assert not any(block_pos[end:]) and not any(block_pos[:sep])
    starts = [c for c in range(sep, end) if block_pos[c] == 1]
    assert starts[:1] == ([sep] if end > sep else [])
    spans = []
    for s, e in zip(starts, [*starts[1:], end][: len(starts)], strict=True):
        # The only -100 inside a block is a [CLS] target (never predicted): a document-mode suffix may hold one.
        targets = [ids.cls if t == N else t for t in labels[s:e]]
        eop = targets[-1] == ids.eop  # a document-mode suffix ends without <|endofpiece|>
        tokens = targets[:-1] if eop else targets
        assert inputs[s + 1 : e] == tokens[: e - s - 1]  # inputs: the start token, then the span
        spans.append((pos[s] - shift - int(sentinel and eop), tokens, eop))
    return sep, shift, spans


def state_sample(text: list[int], spans, mode: int, shift: int, ids: SpecialIds, cfg) -> Sample:
    """The sample as a Sample: part A is the text with each span replaced by its blank (from the text and the
    spans' text starts, not from the builder's output), part B the span blocks in the builder's order."""
    text_order = sorted(range(len(spans)), key=lambda k: spans[k][0])
    removed, text_start = 0, {}
    for k in text_order:
        column, tokens, _ = spans[k]
        text_start[k] = column + removed
        removed += len(tokens) - 1

    def blank_id(rank: int) -> int:
        if mode == SENTENCE:
            return ids.smask if cfg.task_mask else ids.mask
        if mode == DOCUMENT:
            return ids.gmask if cfg.task_mask else ids.mask
        return (ids.mask, *ids.sentinel_masks)[rank] if cfg.sentinel_token else ids.mask

    part_a, blank_at, at = [], {}, 0
    for k in text_order:
        part_a += text[at : text_start[k]]
        blank_at[k] = len(part_a)
        part_a.append(blank_id(k))
        at = text_start[k] + len(spans[k][1])
    part_a += text[at:]
    blocks = []
    for k, (_, tokens, eop) in enumerate(spans):
        sop = (ids.sop, *ids.sentinel_sops)[k] if cfg.sentinel_token else ids.sop
        position = blank_at[k] + shift + int(cfg.sentinel_token and eop)  # sentinels: one after the blank
        block = Block.span(sop, tokens, position=position, end_id=ids.eop if eop else None)
        block.labels = [N if t == ids.cls else t for t in block.labels]  # [CLS] is never a target
        blocks.append(block)
    return Sample(part_a, blocks, position_offset=shift)


@pytest.mark.parametrize("ids_name", list(ID_SETS))
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("preset", ["glm-large", "glm-large-multitask"])
def test_pretraining_builder_matches_build_batch(preset, option, ids_name):
    ids = ID_SETS[ids_name]
    cfg = dataclasses.replace(BLANK_PRESETS[preset], **OPTIONS[option])
    builder = BlankInfillingBuilder(cfg, ids, ENDS)
    blank_ids = {ids.mask, ids.smask, ids.gmask, *ids.sentinel_masks}
    seen = {"modes": set(), "suffix": 0, "infill": 0, "cls_label": 0, "eos_in_span": 0, "sentinel": 0, "shift": 0}
    for seed in range(16 if preset == "glm-large-multitask" else 8):
        rng = np.random.default_rng((seed, 99))
        texts = [packed_text(rng, int(n), ids) for n in rng.choice(LENGTHS, size=8)]
        out = builder.build(texts, (seed, 7))
        mode = int(out["blank_mode"][0])
        assert (out["blank_mode"] == mode).all()
        seen["modes"].add(mode)
        samples = []
        for row, text in enumerate(texts):
            sep, shift, spans = recover_spans(out, row, ids, cfg.sentinel_token)
            # The recovered spans are right: filling the blanks gives back the text exactly.
            blanks = {column: tokens for column, tokens, _ in spans}
            assert len(blanks) == len(spans)
            part_a, filled = out["input_ids"][row, :sep].tolist(), []
            for column, token in enumerate(part_a):
                if column in blanks:
                    assert token in blank_ids
                    filled += blanks.pop(column)
                else:
                    assert token not in blank_ids
                    filled.append(token)
            assert not blanks and filled == text.tolist()
            # The random shift: none without random_position, nor on a document-mode suffix.
            if not cfg.random_position or any(not eop for *_, eop in spans):
                assert shift == 0
            else:
                assert 0 <= shift < max(cfg.seq_length - (sep - 1), 1)
            samples.append(state_sample(text.tolist(), spans, mode, shift, ids, cfg))
            seen["suffix"] += sum(not eop for *_, eop in spans)
            seen["infill"] += sum(eop for *_, eop in spans) if mode == DOCUMENT else 0
            seen["cls_label"] += sum(ids.cls in tokens for _, tokens, _ in spans)
            seen["eos_in_span"] += sum(ids.eos in tokens for _, tokens, _ in spans)
            seen["sentinel"] += max(len(spans) - 1, 0) if cfg.sentinel_token and mode == TOKEN else 0
            seen["shift"] += shift > 0
        built = build_batch(samples, pad_id=ids.pad)
        expected = to_tensors(out)
        assert "sep" in built and "attention_mask" not in built
        labels = built.get("labels", torch.full_like(built["input_ids"], N))
        for key, value in (
            ("input_ids", built["input_ids"]),
            ("position_ids", built["position_ids"]),
            ("sep", built["sep"]),
            ("labels", labels),
        ):
            assert torch.equal(value, expected[key]), (key, seed)
    # What these seeds exercise (deterministic: the builder is a pure function of its texts and seed).
    assert seen["modes"] == ({TOKEN} if preset == "glm-large" else {TOKEN, SENTENCE, DOCUMENT}), seen
    if preset == "glm-large-multitask":
        assert seen["suffix"] and seen["infill"] and seen["cls_label"] and seen["eos_in_span"], seen
    assert bool(seen["sentinel"]) == cfg.sentinel_token and bool(seen["shift"]) == cfg.random_position, seen


@pytest.mark.parametrize("ids_name", list(ID_SETS))
def test_causal_baseline_matches_build_batch(ids_name):
    """The clm baseline is GLM's layout with an empty part A: one block at positions 0.., block position 0."""
    ids = ID_SETS[ids_name]
    builder = BlankInfillingBuilder(BLANK_PRESETS["clm"], ids, ENDS)
    rng = np.random.default_rng(5)
    texts = [packed_text(rng, int(n), ids) for n in rng.choice(LENGTHS, size=8)]
    out = builder.build(texts, 3)
    samples = []
    for text in texts:
        text = text.tolist()
        targets = [N if t == ids.cls else t for t in [*text[1:], N]]
        samples.append(Sample([], [Block(text, list(range(len(text))), [0] * len(text), targets)]))
    built, expected = build_batch(samples, pad_id=ids.pad), to_tensors(out)
    for key in ("input_ids", "position_ids", "sep", "labels"):
        assert torch.equal(built[key], expected[key]), key

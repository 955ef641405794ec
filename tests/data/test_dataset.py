"""Shards, the block dataset (sampling, cropping, packing) and the per-rank resumable batch stream."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from torchglm.data import (
    BlankConfig,
    BlankInfillingBuilder,
    BlockDataset,
    PretrainBatches,
    SpecialIds,
    TokenShards,
    write_token_shards,
)
from torchglm.data.collate import pad_to_multiple

IDS = SpecialIds.bert_uncased()
PERIOD = 1012


def make_docs(rng, count, low, high, sentence_every=10):
    docs = []
    for _ in range(count):
        doc = rng.integers(2000, 3000, size=int(rng.integers(low, high)))
        doc[sentence_every - 1 :: sentence_every] = PERIOD
        docs.append(doc)
    return docs


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    docs = make_docs(rng, 200, 5, 60) + make_docs(rng, 10, 800, 3000)
    write_token_shards(folder, docs, 30526, IDS, [PERIOD], documents_per_shard=50)
    return TokenShards(folder, verify=True), docs


def test_shards_roundtrip(shards):
    reader, docs = shards
    assert reader.num_documents == len(docs) and reader.dtype == np.uint16
    assert len(reader.buffers) == 5
    for i in (0, 49, 50, 209):
        assert reader.document(i).tolist() == docs[i].tolist() + [IDS.eos]
    assert reader.tokens(209, 5, 12).tolist() == docs[209][5:12].tolist()
    assert reader.sentence_end_table()[PERIOD] and reader.sentence_end_table().sum() == 1
    manifest = json.loads((reader.folder / "manifest.json").read_text())
    assert manifest["complete"] and manifest["tokens"] == sum(len(d) + 1 for d in docs)
    assert reader.special_ids == IDS


def test_documents_drawn_in_proportion_to_length(shards):
    reader, _ = shards
    dataset = BlockDataset(reader, seq_length=128, seed=3)
    picks = dataset.pick_documents(np.random.default_rng(0).random(200_000))
    freq = np.bincount(picks, minlength=reader.num_documents) / len(picks)
    expected = reader.doc_lengths / reader.doc_lengths.sum()
    assert np.abs(freq - expected).max() < 0.01


def test_samples_crop_and_pack(shards):
    reader, _ = shards
    dataset = BlockDataset(reader, seq_length=128, seed=3)
    crops = packs = 0
    for i in range(400):
        sample = dataset[i]
        assert sample[0] == IDS.cls and 2 <= len(sample) <= 128
        # Every document in the sample starts with [CLS]; [CLS] only ever follows eos.
        cls_at = np.flatnonzero(sample == IDS.cls)
        assert all(sample[j - 1] == IDS.eos for j in cls_at[1:])
        if len(cls_at) == 1 and sample[-1] != IDS.eos:  # a window of a long document
            crops += 1
            assert sample[-1] == PERIOD or len(sample) == 128  # cut at a sentence end when possible
        else:
            packs += 1
    assert crops > 100 and packs > 20
    assert np.array_equal(dataset.get_batch([5, 9])[1], dataset[9])
    again = BlockDataset(reader, seq_length=128, seed=3)
    assert all(np.array_equal(dataset[i], again[i]) for i in range(50))
    other = BlockDataset(reader, seq_length=128, seed=4)
    assert not all(np.array_equal(dataset[i], other[i]) for i in range(50))


def stream(reader, rank=0, world=1, batch_size=4, seed=11):
    dataset = BlockDataset(reader, seq_length=96, seed=seed)
    builder = BlankInfillingBuilder(BlankConfig(seq_length=96), IDS, dataset.sentence_ends)
    return PretrainBatches(dataset, builder, batch_size, rank=rank, world_size=world)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ranks_are_disjoint_and_deterministic(shards):
    reader, _ = shards
    ranks = [stream(reader, rank=r, world=3) for r in range(3)]
    seen = set()
    for step in range(20):
        for s in ranks:
            indices = set(s.sample_indices(step).tolist())
            assert not indices & seen
            seen |= indices
    assert seen == set(range(20 * 3 * 4))
    # Rank r at step s = the single-process stream's micro-batch s * world + r (same samples, same blanks).
    single = stream(reader)
    assert same(ranks[2].batch(5), single.batch(5 * 3 + 2))
    assert same(stream(reader, rank=1, world=3).batch(4), ranks[1].batch(4))


def test_resume_sees_the_same_batches(shards):
    reader, _ = shards
    straight = stream(reader)
    expected = [b for _, b in zip(range(8), straight, strict=False)]
    first = stream(reader)
    for _, _batch in zip(range(5), first, strict=False):
        pass
    state = first.state_dict()
    assert state["step"] == 5
    resumed = stream(reader)
    resumed.load_state_dict(state)
    assert all(same(a, b) for a, b in zip(resumed, expected[5:8], strict=False))
    # Two ranks taking over from one: global sample positions continue.
    two = stream(reader, rank=0, world=2)
    two.load_state_dict({**state, "step": 4, "consumed_samples": 16})
    assert two.step == 2 and two.sample_indices(two.step)[0] == 16
    with pytest.raises(ValueError):
        stream(reader, seed=12).load_state_dict(state)


def test_dataloader_workers_match_single_process(shards):
    reader, _ = shards
    expected = [stream(reader).batch(step) for step in range(5)]
    s = stream(reader)
    loader = s.loader(num_workers=2)
    got = [b for _, b in zip(range(5), loader, strict=False)]
    assert all(same(a, b) for a, b in zip(got, expected, strict=False))
    assert s.step == 5


def test_batch_format(shards):
    reader, _ = shards
    batch = stream(reader).batch(0)
    assert set(batch) == {"input_ids", "position_ids", "sep", "labels", "blank_mode"}
    b, length = batch["input_ids"].shape
    assert batch["position_ids"].shape == (b, 2, length) and batch["sep"].shape == (b,)
    assert all(t.dtype == torch.int64 for t in batch.values())
    padded = pad_to_multiple({k: v.numpy() for k, v in batch.items()}, 64, IDS.pad)
    width = padded["input_ids"].shape[1]
    assert width % 64 == 0 and width - length < 64
    for key, fill in (("input_ids", IDS.pad), ("labels", -100), ("position_ids", 0)):
        assert (padded[key][..., :length] == batch[key].numpy()).all()  # the batch itself, then padding
        assert (padded[key][..., length:] == fill).all()
    assert (padded["sep"] == batch["sep"].numpy()).all()

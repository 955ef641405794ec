"""Model folders: sharded safetensors, lean loading, position-table growth, and the errors bad folders give."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from torchglm import GLMConfig, GLMForConditionalGeneration
from torchglm.cli import main
from torchglm.convert import convert
from torchglm.errors import InputError


def tiny(max_sequence_length: int = 32, seed: int = 0) -> GLMForConditionalGeneration:
    torch.manual_seed(seed)
    config = GLMConfig(
        num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=96, max_sequence_length=max_sequence_length
    )
    return GLMForConditionalGeneration(config).eval()


def logits(model, length: int = 12, offset: int = 0) -> torch.Tensor:
    ids = torch.arange(3, 3 + length)[None] % model.config.vocab_size
    positions = torch.stack([torch.arange(length) + offset, torch.zeros(length, dtype=torch.long)])[None]
    with torch.no_grad():
        return model(ids, positions, torch.tensor([length // 2])).logits


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name].dtype == sb[name].dtype, name
        assert torch.equal(sa[name], sb[name]), name


def test_sharded_save_load_round_trip(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    shards = sorted(p.name for p in (tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 2 and not (tmp_path / "sharded" / "model.safetensors").exists()
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards
    again = GLMForConditionalGeneration.from_pretrained(tmp_path / "sharded").eval()
    assert_same_weights(model, again)
    assert torch.equal(logits(model), logits(again))


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_saved_weights_get_the_mode_the_umask_gives_config_json(tmp_path, umask):
    """safetensors >= 0.8 writes 0600 whatever the umask (safetensors#782); the save follows the umask again."""
    import os

    old = os.umask(umask)
    try:
        tiny().save_pretrained(tmp_path / "m", max_shard_size="20KB")
    finally:
        os.umask(old)
    weights = sorted((tmp_path / "m").glob("*.safetensors"))
    assert len(weights) > 2
    expected = 0o666 & ~umask
    assert (tmp_path / "m" / "config.json").stat().st_mode & 0o777 == expected
    assert {w.stat().st_mode & 0o777 for w in weights} == {expected}


def test_sharded_folder_converts_and_convert_writes_shards(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert main(["convert", str(tmp_path / "sharded"), str(tmp_path / "one"), "--dtype", "bfloat16"]) == 0
    assert (tmp_path / "one" / "model.safetensors").is_file()
    assert_same_weights(model.to(torch.bfloat16), GLMForConditionalGeneration.from_pretrained(tmp_path / "one"))
    assert main(["convert", str(tmp_path / "one"), str(tmp_path / "again"), "--max-shard-size", "20KB"]) == 0
    assert len(list((tmp_path / "again").glob("model-*-of-*.safetensors"))) > 2
    assert_same_weights(model, GLMForConditionalGeneration.from_pretrained(tmp_path / "again"))


@pytest.mark.parametrize("source", ["safetensors", "sharded", "bin"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_lean_loading_equals_eager_loading(tmp_path, source, dtype):
    """The lean path (meta device, tensors read one by one and cast as they load) against the plain one: a model
    built on the CPU and filled with ``load_state_dict`` from the whole file, then cast."""
    model = tiny().half()
    folder = tmp_path / source
    if source == "bin":  # the released layout: a bare fp16 state dict without the "glm." prefix
        folder.mkdir()
        model.config.save_pretrained(folder)
        torch.save({k.removeprefix("glm."): v for k, v in model.state_dict().items()}, folder / "pytorch_model.bin")
    else:
        model.save_pretrained(folder, **({"max_shard_size": "20KB"} if source == "sharded" else {}))
    eager = tiny(seed=1)
    eager.load_state_dict(model.state_dict())
    eager = eager.to(dtype)
    lean = GLMForConditionalGeneration.from_pretrained(folder, dtype=dtype).eval()
    assert_same_weights(eager, lean)
    assert torch.equal(logits(eager), logits(lean))
    assert {p.device.type for p in lean.parameters()} == {"cpu"}


def test_lean_loading_reproduces_the_original_logits(shared_dir):
    """The released-format golden checkpoint through the lean path gives the original code's logits."""
    golden = shared_dir / "golden" / "glm-ref-tiny"
    cases = load_file(golden / "cases.safetensors")
    model = GLMForConditionalGeneration.from_pretrained(golden, dtype=torch.float32, device="cpu").eval()
    with torch.no_grad():
        out = model(cases["sep_input_ids"], cases["sep_position_ids"], cases["sep_sep"]).logits
    torch.testing.assert_close(out, cases["sep_logits"], atol=1e-4, rtol=0)


def test_generation_config_is_read_from_the_folder(tmp_path):
    model = tiny()
    model.generation_config.max_new_tokens = 7
    model.save_pretrained(tmp_path / "m")
    assert GLMForConditionalGeneration.from_pretrained(tmp_path / "m").generation_config.max_new_tokens == 7


def test_growing_the_position_tables_keeps_old_rows_and_logits(tmp_path, caplog):
    model = tiny(max_sequence_length=16)
    model.save_pretrained(tmp_path / "m")
    with caplog.at_level(logging.WARNING, logger="torchglm.model"):
        grown = GLMForConditionalGeneration.from_pretrained(tmp_path / "m", max_sequence_length=40).eval()
    assert grown.config.max_sequence_length == 40
    for name in ("glm.transformer.position_embeddings.weight", "glm.transformer.block_position_embeddings.weight"):
        old, new = model.state_dict()[name], grown.state_dict()[name]
        assert new.shape == (41, old.shape[1])
        assert torch.equal(new[:17], old)
        assert 0.01 < new[17:].std().item() < 0.03  # the init's N(0, 0.02), not zeros or a copy
    assert torch.equal(logits(model), logits(grown))  # positions 0..11 only use old rows
    logits(grown, length=12, offset=28)  # positions past the old table now exist
    assert sum("position_embeddings.weight: 17 -> 41 rows" in r.message for r in caplog.records) == 2
    # not asked for: the table keeps its size, and a config that disagrees with its weights is still an error
    assert GLMForConditionalGeneration.from_pretrained(tmp_path / "m").config.max_sequence_length == 16
    with pytest.raises(InputError, match="positions cannot shrink"):
        GLMForConditionalGeneration.from_pretrained(tmp_path / "m", max_sequence_length=8)


def test_a_shard_index_naming_a_missing_file_is_an_error_naming_it(tmp_path):
    tiny().save_pretrained(tmp_path / "m", max_shard_size="20KB")
    shards = sorted((tmp_path / "m").glob("model-*.safetensors"))
    shards[1].unlink()
    with pytest.raises(InputError, match=rf"index.json names shard {shards[1].name}, which is missing"):
        GLMForConditionalGeneration.from_pretrained(tmp_path / "m")


def test_a_shard_with_a_wrong_shape_is_an_error_naming_key_and_file(tmp_path):
    tiny().save_pretrained(tmp_path / "m", max_shard_size="20KB")
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    name = "glm.transformer.layers.1.mlp.dense_h_to_4h.weight"
    shard = tmp_path / "m" / index["weight_map"][name]
    tensors = load_file(shard)
    tensors[name] = torch.zeros(tensors[name].shape[0] - 1, tensors[name].shape[1])
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"mismatched shapes .*{name}.*\(in {shard.name}\)"):
        GLMForConditionalGeneration.from_pretrained(tmp_path / "m")


def test_a_failed_conversion_leaves_no_output(tmp_path):
    tiny().save_pretrained(tmp_path / "m", max_shard_size="20KB")
    shard = sorted((tmp_path / "m").glob("model-*.safetensors"))[-1]
    shard.write_bytes(b"\0" * 16)
    with pytest.raises(InputError, match=rf"{shard.name}: not a safetensors file"):
        convert(tmp_path / "m", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]

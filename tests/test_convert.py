"""Converting original model-parallel checkpoints and released folders."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file

from torchglm import GLMForConditionalGeneration
from torchglm.checkpoint import load_model_parallel_checkpoint, split_model_parallel
from torchglm.cli import main


def test_merging_original_shards_gives_the_unsplit_checkpoint(shared_dir):
    golden = shared_dir / "golden"
    merged = load_model_parallel_checkpoint(golden / "glm-ref-tiny-mp2")
    full = torch.load(golden / "glm-ref-tiny" / "pytorch_model.bin", weights_only=True)
    assert merged.keys() == full.keys()
    for name in full:
        assert torch.equal(merged[name], full[name]), name
    # and splitting is the exact inverse of the original tool's split
    for rank, shard in enumerate(split_model_parallel(full, 2)):
        original = torch.load(
            golden / "glm-ref-tiny-mp2" / "1000" / f"mp_rank_{rank:02d}_model_states.pt", weights_only=True
        )["module"]
        for name in full:
            assert torch.equal(shard[name], original[name]), (rank, name)


def test_convert_command_round_trip(shared_dir, tmp_path):
    golden = shared_dir / "golden"
    out = tmp_path / "tiny"
    assert (
        main(
            [
                "convert",
                str(golden / "glm-ref-tiny-mp2"),
                str(out),
                "--config",
                str(golden / "glm-ref-tiny" / "config.json"),
            ]
        )
        == 0
    )
    cases = load_file(golden / "glm-ref-tiny" / "cases.safetensors")
    model = GLMForConditionalGeneration.from_pretrained(out).eval()
    with torch.no_grad():
        logits = model(cases["sep_input_ids"], cases["sep_position_ids"], cases["sep_sep"]).logits
    torch.testing.assert_close(logits, cases["sep_logits"], atol=1e-4, rtol=0)

    # torchglm folder -> 4-way original layout -> torchglm folder gives the same weights
    assert main(["convert", str(out), str(tmp_path / "mp4"), "--model-parallel", "4"]) == 0
    assert len(list((tmp_path / "mp4" / "1").glob("mp_rank_*_model_states.pt"))) == 4
    assert main(["convert", str(tmp_path / "mp4"), str(tmp_path / "back"), "--config", str(out / "config.json")]) == 0
    again = GLMForConditionalGeneration.from_pretrained(tmp_path / "back")
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name


def test_a_converted_released_folder_is_complete_and_readable(shared_dir, tmp_path, capsys):
    import os

    out = tmp_path / "fill"
    assert main(["convert", str(shared_dir / "golden" / "glm-ref-fill"), str(out)]) == 0
    assert {"vocab.txt", "tokenizer_config.json", "config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    capsys.readouterr()
    assert main(["fill", "--model", str(out), "--max-new-tokens", "4", "a [MASK] b"]) == 0  # loads alone
    assert capsys.readouterr().out.strip()


def test_convert_errors_name_the_problem(shared_dir, tmp_path, capsys):
    golden = shared_dir / "golden"
    for argv, message in [
        ([str(golden / "glm-ref-tiny-mp2"), str(tmp_path / "a")], "give --preset or --config"),
        ([str(golden / "glm-ref-tiny-mp2"), str(tmp_path / "a"), "--preset", "base"],
         "2 layers of width 64, the config 12 of width 768"),
        ([str(golden / "glm-ref-tiny"), str(tmp_path)], "exists; choose a new output folder"),
    ]:  # fmt: skip
        assert main(["convert", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert not (tmp_path / "a").exists()
    assert main(["unknown-command"]) == 2


def test_corrupt_weight_files_and_missing_shards_are_named(shared_dir, tmp_path, capsys):
    import os
    import shutil

    from torchglm.errors import InputError

    golden = shared_dir / "golden"
    folder = tmp_path / "model"
    shutil.copytree(golden / "glm-ref-fill", folder)
    weights = folder / "pytorch_model.bin"
    good = weights.read_bytes()
    for content, message in [
        (b"", "the weight file is empty"),
        (os.urandom(4096), "not a PyTorch checkpoint (neither a zip archive nor a pickle"),
        (good[: len(good) // 2], "a torch archive cut short"),
    ]:
        weights.write_bytes(content)
        with pytest.raises(InputError, match=re.escape(f"pytorch_model.bin: {message}")):
            GLMForConditionalGeneration.from_pretrained(folder)
        assert main(["fill", "--model", str(folder), "a [MASK]"]) == 2
        err = capsys.readouterr().err
        assert "pytorch_model.bin" in err and "Traceback" not in err
    weights.unlink()
    GLMForConditionalGeneration.from_pretrained(golden / "glm-ref-fill").save_pretrained(folder)
    safetensors = folder / "model.safetensors"
    safetensors.write_bytes(safetensors.read_bytes()[:100])
    with pytest.raises(InputError, match="model.safetensors: not a safetensors file, or cut short"):
        GLMForConditionalGeneration.from_pretrained(folder)
    shards = tmp_path / "mp2"
    shutil.copytree(golden / "glm-ref-tiny-mp2", shards)
    (shards / "1000" / "mp_rank_01_model_states.pt").unlink()
    with pytest.raises(InputError, match="saved by 2-way model parallelism, but 1 shard"):
        load_model_parallel_checkpoint(shards)
    (shards / "1000" / "mp_rank_00_model_states.pt").rename(shards / "1000" / "mp_rank_01_model_states.pt")
    with pytest.raises(InputError, match=r"shard\(s\) of rank \[0\] missing"):
        load_model_parallel_checkpoint(shards)

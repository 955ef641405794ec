"""Converting original model-parallel checkpoints and released folders."""

from __future__ import annotations

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


def test_convert_errors_name_the_problem(shared_dir, tmp_path):
    golden = shared_dir / "golden"
    with pytest.raises(ValueError, match="give --preset or --config"):
        main(["convert", str(golden / "glm-ref-tiny-mp2"), str(tmp_path / "a")])
    with pytest.raises(ValueError, match="2 layers of width 64, the config 12 of width 768"):
        main(["convert", str(golden / "glm-ref-tiny-mp2"), str(tmp_path / "a"), "--preset", "base"])
    with pytest.raises(FileExistsError, match="exists"):
        main(["convert", str(golden / "glm-ref-tiny"), str(tmp_path)])
    assert not (tmp_path / "a").exists()
    assert main(["unknown-command"]) == 2

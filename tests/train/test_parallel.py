"""Multi-process training on CPU (gloo) through ``torchrun``: FSDP2, tensor parallelism with activation
checkpointing, DeepSpeed ZeRO-2, each against the one-process run of the same global batch.

Marked ``slow`` (each launch starts two Python processes); CI runs them like every other test.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from torchglm.train.config import job_config_from_dict
from torchglm.train.parallel import clip_grad_norm, transformer_blocks
from torchglm.train.pretrain import plan_run, train

from .conftest import check, run_pretrain, tiny_job, train_losses, write_job

STEPS = 5
NO_DROPOUT = {"overrides": {"vocab_size": 256, "embedding_dropout_prob": 0.0, "attention_dropout_prob": 0.0,
                            "output_dropout_prob": 0.0}}  # fmt: skip


def job_for(shards, output_dir, **sections):
    return tiny_job(shards, output_dir, model=NO_DROPOUT, train={"steps": STEPS}, **sections)


@pytest.fixture(scope="module")
def single_process_run(shards, tmp_path_factory):
    """5 steps, global batch 8 as 2 x 4 (gradient accumulation) in one process, fp32: losses and final weights."""
    root = tmp_path_factory.mktemp("single")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = train(plan_run(job_config_from_dict(job_for(shards, root / "run")), world_size=1))
    finally:
        torch.set_num_threads(threads)
    losses = train_losses(root / "run")
    assert len(losses) == STEPS
    return losses, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.fixture(scope="module")
def single_process_losses(single_process_run):
    return single_process_run[0]


def assert_close(losses, reference, tolerance):
    assert sorted(losses) == sorted(reference)
    worst = max(abs(losses[s] - reference[s]) for s in reference)
    assert worst <= tolerance, f"max |difference| {worst:.2e} > {tolerance}: {losses} vs {reference}"


@pytest.mark.slow
def test_fsdp2_two_processes_match_one(shards, tmp_path, single_process_losses):
    config = write_job(tmp_path / "job.yaml", job_for(shards, tmp_path / "run", checkpoint={"interval": STEPS}))
    result = check(run_pretrain(config, nproc=2))
    assert "on 2 process(es) (dp 2 x tp 1), 1 accumulation step(s)" in result.stderr
    assert_close(train_losses(tmp_path / "run"), single_process_losses, 1e-4)
    assert (tmp_path / "run" / "checkpoints" / "step-00000005" / "rank-00001.pt").is_file()


@pytest.mark.slow
def test_tensor_parallel_with_activation_checkpointing_matches_one_process(shards, tmp_path, single_process_run):
    losses, weights = single_process_run
    job = job_for(shards, tmp_path / "run", parallel={"tp_size": 2, "activation_checkpointing": True})
    job["checkpoint"].update(export_final=True)
    result = check(run_pretrain(write_job(tmp_path / "job.yaml", job), nproc=2))
    assert "(dp 1 x tp 2), 2 accumulation step(s)" in result.stderr
    assert_close(train_losses(tmp_path / "run"), losses, 1e-4)
    from torchglm import GLMForConditionalGeneration

    # whole weights, plain names, the released q|k|v layout: the one-process run's weights after the same steps
    exported = GLMForConditionalGeneration.from_pretrained(tmp_path / "run" / "final").state_dict()
    assert sorted(exported) == sorted(weights)
    for name, value in weights.items():
        torch.testing.assert_close(exported[name], value, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
def test_deepspeed_zero2_two_processes(shards, tmp_path, single_process_losses):
    job = job_for(shards, tmp_path / "run", parallel={"engine": "deepspeed", "zero_stage": 2})
    job["checkpoint"].update(interval=STEPS)
    result = check(run_pretrain(write_job(tmp_path / "job.yaml", job), nproc=2))
    assert "on 2 process(es)" in result.stderr
    assert_close(train_losses(tmp_path / "run"), single_process_losses, 1e-4)
    assert (tmp_path / "run" / "checkpoints" / "step-00000005" / "trainer.json").is_file()

    # a crafted optimizer file (a pickle that runs a command) is refused by --dry-run and --resume, unloaded
    import json
    import os

    from torchglm.train.deepspeed import check_pickles

    folder = tmp_path / "run" / "checkpoints" / "step-00000005" / "deepspeed"
    check_pickles(folder)  # DeepSpeed's own files pass
    marker = tmp_path / "pwned"

    class Crafted:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"optimizer_state_dict": Crafted()}, folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    # a crafted checkpoint comes with a trainer.json whose recorded hashes match the crafted files
    from torchglm.train.checkpoint import file_digests

    state_file = folder.parent / "trainer.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "files": file_digests(folder.parent)}))
    job["train"]["steps"] = STEPS + 1
    resumed = run_pretrain(write_job(tmp_path / "job.yaml", job), "--resume", nproc=2)
    assert resumed.returncode != 0 and "unpickling it could run code" in resumed.stderr
    assert not marker.exists()


def test_blocks_are_found_from_no_split_modules():
    from torchglm import GLMConfig, GLMForConditionalGeneration

    model = GLMForConditionalGeneration(GLMConfig.from_preset("tiny", vocab_size=256))
    blocks = transformer_blocks(model)
    assert [type(b).__name__ for _, _, b in blocks] == ["GLMBlock", "GLMBlock"]


def test_clip_grad_norm_matches_torch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    model(torch.randn(4, 8)).pow(2).sum().backward()
    reference = [p.grad.clone() for p in model.parameters()]
    norm = clip_grad_norm(model.parameters(), 0.5)
    expected = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in reference]))
    assert norm == pytest.approx(float(expected), rel=1e-6)
    clipped = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()]))
    assert float(clipped) == pytest.approx(0.5, rel=1e-4)


@pytest.mark.slow
def test_tensor_parallel_inference_runs_each_ranks_heads_and_matches_one_process(tmp_path):
    """2-way TP on gloo: forward, backward and cached greedy and beam fills equal the plain model's within 1e-5;
    each rank's attention runs heads / 2 heads and its KV cache holds half of the keys and values."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from .conftest import _free_port, child_env

    child = Path(__file__).with_name("tensor_parallel_child.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(_free_port()), str(child), str(tmp_path)]  # fmt: skip
    result = subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank-{rank}.json").read_text())
        assert report["logits"] <= 1e-5 and report["loss"] <= 1e-5 and report["grads"] <= 1e-5, report
        assert report["heads_run"] == [2]  # 4 heads over 2 ranks, in every layer
        assert report["cache_keys"] == report["cache_values"] == [3, 2, 12, 8]  # [rows, heads / tp, keys, dim]
        assert report["fill_split"] == report["fill_plain"]
        assert len({tuple(map(tuple, r)) for r in report["fill_plain"]}) > 1  # fills that differ: a real check
        assert report["beam_split"] == report["beam_plain"] and report["beam_score_difference"] <= 1e-5

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


# ----------------------------------------------------------------------------------------------------------------
# tensor-parallel inference: a saved folder loaded over 2 ranks, each reading its shard


def _run_torchrun(args, timeout=300, **kwargs):
    import subprocess
    import sys

    from .conftest import _free_port, child_env

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(_free_port()), *map(str, args)]  # fmt: skip
    return subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.mark.slow
def test_tensor_parallel_loading_reads_each_ranks_shard_and_matches_one_process(tmp_path):
    """A sharded safetensors folder loaded over 2 gloo ranks: forward logits within 1e-5 of the whole model,
    the same greedy fills; every rank holds and reads only its half of the split tensors (hand-written local
    shapes, q|k|v rows as ``tensor_parallel_layout`` regroups them). With ../shared, the released-format
    ``glm-ref-fill`` (a memory-mapped pytorch_model.bin) gives the golden fills and transformers' ``generate``."""
    import json
    from pathlib import Path

    from torchglm import GLMConfig, GLMForConditionalGeneration
    from torchglm.model import tensor_parallel_layout

    hidden, heads, vocab, width = 32, 4, 98, 64
    config = GLMConfig(
        vocab_size=vocab, hidden_size=hidden, num_layers=2, num_attention_heads=heads, intermediate_size=width,
        max_sequence_length=64, initializer_range=0.3,  # peaked predictions: fills that vary from token to token
    )  # fmt: skip
    torch.manual_seed(0)
    model = GLMForConditionalGeneration(config)
    model.save_pretrained(tmp_path / "tiny", max_shard_size="20KB")
    full = model.state_dict()
    assert len(list((tmp_path / "tiny").glob("model-*.safetensors"))) > 2
    golden = Path(__file__).resolve().parents[3] / "shared" / "golden" / "glm-ref-fill"
    args = [Path(__file__).with_name("tensor_parallel_inference_child.py"), tmp_path, tmp_path / "tiny"]
    result = _run_torchrun(args + ([golden] if golden.is_dir() else []))
    assert result.returncode == 0, result.stderr[-4000:]

    half = {  # the split tensors' local shapes on each of 2 ranks; everything else whole
        "glm.word_embeddings.weight": [vocab // 2, hidden],
        "attention.query_key_value.weight": [3 * hidden // 2, hidden],
        "attention.query_key_value.bias": [3 * hidden // 2],
        "attention.dense.weight": [hidden, hidden // 2],
        "mlp.dense_h_to_4h.weight": [width // 2, hidden],
        "mlp.dense_h_to_4h.bias": [width // 2],
        "mlp.dense_4h_to_h.weight": [hidden, width // 2],
    }
    expected_shapes = {
        name: next((shape for suffix, shape in half.items() if name.endswith(suffix)), list(value.shape))
        for name, value in full.items()
    }
    whole_bytes = sum(v.numel() * 4 for v in full.values())
    qkv = "glm.transformer.layers.0.attention.query_key_value.weight"
    regrouped = tensor_parallel_layout({qkv: full[qkv]}, heads, 2)[qkv].chunk(2)
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank-{rank}.json").read_text())
        assert report["logits"] <= 1e-5, report["logits"]
        assert report["fill_split"] == report["fill_plain"]
        assert len({json.dumps(r) for r in report["fill_plain"]}) > 1  # fills that differ: a real check
        assert report["local_shapes"] == expected_shapes
        assert report["bytes_read"] == sum(4 * torch.Size(s).numel() for s in expected_shapes.values())
        assert report["bytes_read"] < 0.6 * whole_bytes
        assert torch.equal(torch.tensor(report["local_qkv"]), regrouped[rank])
        assert report["cache_keys"] == [3, heads // 2, 12, hidden // heads]  # this rank's heads only
        if golden.is_dir():
            cases = json.loads((golden / "fill_cases.json").read_text())["cases"]
            assert report["golden_fills"] == [case["fills"] for case in cases]
            assert report["golden_logits"] <= 1e-5
            assert report["generate_split"] == report["generate_plain"]


@pytest.mark.slow
def test_fill_tensor_parallel_through_torchrun_prints_once_what_one_process_prints(tmp_path, capsys):
    """``torchrun -m torchglm.cli fill --tensor-parallel`` on the built-in model, texts on stdin (read by rank 0,
    sent to rank 1): rank 0's output is the one-process output, once."""
    import json

    from torchglm.cli import main

    texts = ["The [MASK] sat on the mat.", "Paris is the capital of [MASK].", "Once upon a time"]
    assert main(["fill", "--max-new-tokens", "6", "--json", *texts]) == 0
    expected = capsys.readouterr().out
    assert len(expected.splitlines()) == 3
    args = ["-m", "torchglm.cli", "fill", "--tensor-parallel", "--max-new-tokens", "6", "--json"]
    result = _run_torchrun(args, input="\n".join(texts) + "\n")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "over 2 ranks" in result.stderr
    ours, theirs = ([json.loads(line) for line in out.splitlines()] for out in (result.stdout, expected))
    assert len(ours) == 3  # rank 1 printed nothing
    for split, whole in zip(ours, theirs, strict=True):  # the same fills; scores summed in another order
        scores = [blank.pop("score") for blank in split["blanks"]], [blank.pop("score") for blank in whole["blanks"]]
        assert split == whole
        assert scores[0] == pytest.approx(scores[1], abs=1e-5)


def test_tensor_parallel_size_must_divide_heads_width_and_vocabulary(capsys, monkeypatch, tmp_path):
    """Checked from config.json alone, before a process group or a weight: one line naming the limit, exit 2."""
    import torch.distributed as dist

    from torchglm import GLMConfig
    from torchglm.cli import main
    from torchglm.errors import InputError
    from torchglm.train.parallel import check_tensor_parallel_size

    monkeypatch.setenv("WORLD_SIZE", "3")  # what torchrun --nproc-per-node 3 sets
    assert main(["fill", "--tensor-parallel", "a [MASK]"]) == 2  # the built-in glm-tiny-en: 4 heads
    assert capsys.readouterr().err.strip().splitlines() == [
        "torchglm fill: error: tensor-parallel size 3 does not divide the 4 attention heads"
    ]
    assert not dist.is_initialized()
    config = GLMConfig(vocab_size=98, hidden_size=32, num_attention_heads=4, intermediate_size=90)
    with pytest.raises(InputError, match=r"^tensor-parallel size 4 does not divide the 98 vocabulary entries"):
        check_tensor_parallel_size(GLMConfig(vocab_size=98, hidden_size=32, num_attention_heads=4), 4)
    with pytest.raises(InputError, match=r"^tensor-parallel size 4 does not divide the 90 MLP width"):
        check_tensor_parallel_size(config, 4)
    check_tensor_parallel_size(config, 2)  # 4 heads, 90 wide, 98 entries: all split in two
    # a folder that is not a model, or a bad --tokenizer, is one line too, before any process group
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{ not json")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["fill", "--tensor-parallel", "--model", str(broken), "a [MASK]"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"torchglm fill: error: --model {broken}: cannot read its config.json (")
    assert main(["fill", "--tensor-parallel", "--tokenizer", str(tmp_path / "nowhere"), "a [MASK]"]) == 2
    assert "--tokenizer" in capsys.readouterr().err and not dist.is_initialized()


def test_tensor_parallel_loading_names_a_mis_shaped_tensor_and_its_file(tmp_path):
    """One gloo rank (a mesh of 1): the loaded model gives from_pretrained's logits exactly; a shard whose tensor
    does not fit config.json is an error naming the file, the tensor and both shapes."""
    import re

    import torch.distributed as dist
    from safetensors.torch import load_file, save_file
    from torch.distributed.device_mesh import init_device_mesh

    from torchglm import GLMConfig, GLMForConditionalGeneration
    from torchglm.errors import InputError
    from torchglm.train.parallel import load_tensor_parallel

    from .conftest import _free_port

    config = GLMConfig(vocab_size=96, hidden_size=32, num_layers=2, num_attention_heads=4, max_sequence_length=32)
    GLMForConditionalGeneration(config).save_pretrained(tmp_path / "tiny")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        ids = torch.randint(0, 96, (2, 9))
        with torch.inference_mode():
            whole = GLMForConditionalGeneration.from_pretrained(tmp_path / "tiny").eval()(ids).logits
            assert torch.equal(load_tensor_parallel(tmp_path / "tiny", mesh)(ids).logits, whole)
        weights = load_file(tmp_path / "tiny" / "model.safetensors")
        name = "glm.transformer.layers.1.mlp.dense_4h_to_h.weight"
        weights[name] = weights[name][:, :-1].contiguous()
        save_file(weights, tmp_path / "tiny" / "model.safetensors", metadata={"format": "pt"})
        expected = f"model.safetensors: tensor {name} has shape [32, 127], " + "{}config.json makes it [32, 128]"
        with pytest.raises(InputError, match=re.escape(expected).replace("\\{\\}", ".*")):
            load_tensor_parallel(tmp_path / "tiny", mesh)
    finally:
        dist.destroy_process_group()

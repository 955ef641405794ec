"""The pretrain command end to end on CPU: a run that learns and exports, exact resume after SIGKILL, a save cut
short by a crash, and bad input refused before any compute."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import pytest
import torch

from torchglm import GLMForConditionalGeneration
from torchglm.train.checkpoint import CheckpointError
from torchglm.train.config import ConfigError, job_config_from_dict
from torchglm.train.pretrain import Plan, plan_run, train

from .conftest import check, run_pretrain, tiny_job, train_losses, write_job

DROPOUT_ON = {"overrides": {"vocab_size": 256, "output_dropout_prob": 0.1, "attention_dropout_prob": 0.1}}


def test_tiny_run_learns_and_exports(shards, tmp_path):
    job = tiny_job(
        shards,
        tmp_path / "run",
        train={"steps": 30, "eval_interval": 30, "eval_batches": 2},
        optim={"lr": 3e-3},
        checkpoint={"interval": 10, "keep_last": 2, "export_final": True},
        logging={"interval": 5, "progress_bar": False, "tensorboard": True, "peak_tflops": 1.0},
    )
    trainer = train(plan_run(job_config_from_dict(job), world_size=1))
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/loss" in r]
    assert [r["step"] for r in evals] == [0, 30]
    assert evals[1]["eval/loss"] < evals[0]["eval/loss"] - 0.2  # from ~5.5 (uniform over 256 ids)
    last = [r for r in records if r.get("step") == 30 and "loss" in r][0]
    assert {"lr", "grad_norm", "tokens_per_s", "mfu"} <= set(last) and last["skipped_steps"] == 0
    assert any(key.startswith("loss/") for key in last)  # per-objective losses
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-00000020", "step-00000030"]
    assert list((tmp_path / "run" / "tensorboard").iterdir())
    exported = GLMForConditionalGeneration.from_pretrained(tmp_path / "run" / "final")
    trained = trainer.model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in exported.state_dict().items())
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "run" / "training.png").read_bytes()[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def uninterrupted(shards, tmp_path_factory):
    """Losses of a 10-step run with dropout on (so RNG states matter), checkpoints every 3 steps."""
    root = tmp_path_factory.mktemp("uninterrupted")
    job = tiny_job(shards, root / "run", model=DROPOUT_ON, checkpoint={"interval": 3, "keep_last": 2})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1): same kernels, same bits
    try:
        train(plan_run(job_config_from_dict(job), world_size=1))
    finally:
        torch.set_num_threads(threads)
    return train_losses(root / "run")


def test_sigkill_and_resume_reproduces_losses_exactly(shards, tmp_path, uninterrupted):
    """Killed right after step 7 (checkpoints at 3 and 6), resumed; batches come from a DataLoader worker here,
    from the training process in the reference run."""
    job = tiny_job(
        shards, tmp_path / "run", model=DROPOUT_ON, checkpoint={"interval": 3, "keep_last": 2}, data={"num_workers": 1}
    )
    config = write_job(tmp_path / "job.yaml", job)
    os.environ["TORCHGLM_TEST_KILL_AFTER_STEP"] = "7"
    try:
        killed = run_pretrain(config)
    finally:
        del os.environ["TORCHGLM_TEST_KILL_AFTER_STEP"]
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert max(train_losses(tmp_path / "run")) == 6  # step 7 finished but was never logged
    resumed = check(run_pretrain(config, "--resume"))
    assert "resumed from" in resumed.stderr and "step-00000006" in resumed.stderr
    losses = train_losses(tmp_path / "run")
    assert losses == uninterrupted  # every step, bit for bit
    assert len(losses) == 10


def test_checkpoint_interrupted_mid_save_is_ignored_with_warning(shards, tmp_path, uninterrupted):
    job = tiny_job(shards, tmp_path / "run", model=DROPOUT_ON, checkpoint={"interval": 3, "keep_last": 2})
    config = write_job(tmp_path / "job.yaml", job)
    os.environ["TORCHGLM_TEST_KILL_IN_SAVE"] = "6"
    try:
        killed = run_pretrain(config)
    finally:
        del os.environ["TORCHGLM_TEST_KILL_IN_SAVE"]
    assert killed.returncode == -9, killed.stderr[-2000:]
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000003", "step-00000006.partial"]
    assert any((checkpoints / "step-00000006.partial").iterdir())  # the model and optimizer files were written
    resumed = check(run_pretrain(config, "--resume"))
    assert "ignoring" in resumed.stderr and "step-00000006.partial" in resumed.stderr
    assert "resumed from" in resumed.stderr and "step-00000003" in resumed.stderr
    assert train_losses(tmp_path / "run") == uninterrupted
    assert not list(checkpoints.glob("*.partial"))  # removed by the next successful save


# ----------------------------------------------------------------------------------------------------------------
# Bad input: clear errors, before the model exists


def test_batch_not_divisible_by_world_size(shards, tmp_path):
    job = job_config_from_dict(tiny_job(shards, tmp_path, train={"global_batch_size": 12, "micro_batch_size": 4}))
    plan_run(job, world_size=1)
    with pytest.raises(ConfigError, match=r"global_batch_size \(12\) is not divisible by the data-parallel size \(8"):
        plan_run(job, world_size=8)
    with pytest.raises(ConfigError, match="samples per rank is not a multiple of train.micro_batch_size"):
        plan_run(job, world_size=2)  # 6 per rank, micro 4


def test_data_folder_without_shards(shards, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    job = job_config_from_dict(tiny_job(shards, tmp_path, data={"path": str(empty)}))
    with pytest.raises(ConfigError, match="holds no token shards.*prepare-data"):
        plan_run(job, world_size=1)
    job = job_config_from_dict(tiny_job(shards, tmp_path, data={"path": str(tmp_path / "missing")}))
    with pytest.raises(ConfigError, match="does not exist"):
        plan_run(job, world_size=1)


def test_shards_with_more_ids_than_the_model(shards, tmp_path):
    job = tiny_job(shards, tmp_path, model={"overrides": {"vocab_size": 128}})
    with pytest.raises(ConfigError, match="tokenized with 256 ids but the model's vocab_size is 128"):
        plan_run(job_config_from_dict(job), world_size=1)


def test_resume_from_another_model(shards, tmp_path):
    source = tiny_job(shards, tmp_path / "a", checkpoint={"interval": 1}, train={"steps": 1})
    train(plan_run(job_config_from_dict(source), world_size=1))
    other = tiny_job(
        shards,
        tmp_path / "b",
        model={"overrides": {"vocab_size": 256, "hidden_size": 128}},
        checkpoint={"resume": str(tmp_path / "a" / "checkpoints")},
    )
    with pytest.raises(CheckpointError, match=r"saved by another model \(hidden_size: checkpoint 64 vs this run 128"):
        plan_run(job_config_from_dict(other), world_size=1)


def test_fresh_start_over_earlier_checkpoints_is_refused(shards, tmp_path):
    job = tiny_job(shards, tmp_path / "a", checkpoint={"interval": 1}, train={"steps": 1})
    train(plan_run(job_config_from_dict(job), world_size=1))
    with pytest.raises(ConfigError, match="already holds checkpoints of an earlier run: pass --resume"):
        plan_run(job_config_from_dict(job), world_size=1)


def test_resume_folder_without_checkpoints(shards, tmp_path):
    job = tiny_job(shards, tmp_path, checkpoint={"resume": str(tmp_path)})
    with pytest.raises(CheckpointError, match="holds no complete checkpoint"):
        plan_run(job_config_from_dict(job), world_size=1)
    # 'latest' in a fresh run folder starts from scratch: a first start and a restart use the same command
    fresh = tiny_job(shards, tmp_path / "fresh", checkpoint={"resume": "latest"})
    assert plan_run(job_config_from_dict(fresh), world_size=1).resume_from is None


def test_cli_reports_errors_before_compute(shards, tmp_path, capsys):
    from torchglm import cli

    config = write_job(tmp_path / "job.yaml", tiny_job(shards, tmp_path / "run"))
    assert cli.main(["pretrain", "--config", str(config), "--dry-run"]) == 0
    assert "ok: 1 process(es)" in capsys.readouterr().out
    assert cli.main(["pretrain", "--config", str(config), "--train.global_batch_size", "6"]) == 2
    assert "is not a multiple of train.micro_batch_size" in capsys.readouterr().err
    bad = tiny_job(shards, tmp_path / "run")
    bad["optim"]["learning_rate"] = 1e-3
    assert cli.main(["pretrain", "--config", str(write_job(tmp_path / "bad.yaml", bad))]) == 2
    assert "unknown field" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing was started
    with pytest.raises(SystemExit):
        cli.main(["pretrain", "--config", str(config), "--optim.learning_rate", "1"])
    assert "unrecognized arguments: --optim.learning_rate" in capsys.readouterr().err


def test_invalid_model_and_objective_values(shards, tmp_path):
    with pytest.raises(ConfigError, match="model: unknown GLM preset 'huge'"):
        plan_run(job_config_from_dict(tiny_job(shards, tmp_path, model={"preset": "huge"})), world_size=1)
    job = tiny_job(shards, tmp_path, model={"overrides": {"vocab_size": 256, "num_attention_heads": 5}})
    with pytest.raises(ConfigError, match="model: .*hidden_size \\(64\\) is not a multiple of num_attention_heads"):
        plan_run(job_config_from_dict(job), world_size=1)
    job = tiny_job(shards, tmp_path, data={"blanks": {"seq_length": 64, "bert_prob": 1.5}})
    with pytest.raises(ConfigError, match="data.blanks: bert_prob must be in"):
        plan_run(job_config_from_dict(job), world_size=1)
    job = tiny_job(shards, tmp_path, data={"blanks": {"seq_length": 64, "block_mask_prob": 0.1}})
    with pytest.raises(ConfigError, match="data.blanks do not fit .*dBLOCK"):
        plan_run(job_config_from_dict(job), world_size=1)
    job = tiny_job(shards, tmp_path, data={"blanks": {"seq_length": 256}})
    with pytest.raises(ConfigError, match=r"seq_length \(256\) exceeds the model's max_sequence_length \(128\)"):
        plan_run(job_config_from_dict(job), world_size=1)


def test_dry_run_plan(shards, tmp_path):
    plan = plan_run(job_config_from_dict(tiny_job(shards, tmp_path)), world_size=2)
    assert isinstance(plan, Plan) and (plan.dp_size, plan.accumulation) == (2, 1)
    assert plan_run(job_config_from_dict(tiny_job(shards, tmp_path)), world_size=1).accumulation == 2


def test_partial_checkpoint_as_resume_target(shards, tmp_path):
    source = tiny_job(shards, tmp_path / "a", checkpoint={"interval": 1}, train={"steps": 1})
    train(plan_run(job_config_from_dict(source), world_size=1))
    final = tmp_path / "a" / "checkpoints" / "step-00000001"
    partial = final.with_name(final.name + ".partial")
    shutil.copytree(final, partial)
    job = tiny_job(shards, tmp_path / "b", checkpoint={"resume": str(partial)})
    with pytest.raises(CheckpointError, match="interrupted"):
        plan_run(job_config_from_dict(job), world_size=1)


def test_blank_infilling_loss_matches_the_model_loss(shards):
    """The loss at target positions only equals the model's own mean cross-entropy over every position."""
    import dataclasses

    from torchglm import GLMConfig
    from torchglm.data import BLANK_MODES, BLANK_PRESETS, build_pretraining_stream
    from torchglm.losses import BlankInfillingLoss

    blanks = dataclasses.replace(BLANK_PRESETS["glm-large-multitask"], seq_length=64)
    stream = build_pretraining_stream(shards["train"], blanks, batch_size=4, seed=3)
    model = GLMForConditionalGeneration(GLMConfig.from_preset("tiny", vocab_size=256)).eval()
    objective = BlankInfillingLoss(BLANK_MODES)
    for step in range(4):
        batch = stream.batch(step)
        with torch.no_grad():
            sums = objective(model, batch)
            reference = model(batch["input_ids"], batch["position_ids"], batch["sep"], labels=batch["labels"]).loss
        assert float(sums.total / sums.count) == pytest.approx(float(reference), rel=1e-5)
        assert int(sums.count) == objective.count(batch) == int((batch["labels"] != -100).sum())
        assert set(sums.parts) == set(BLANK_MODES)
        mode = BLANK_MODES[int(batch["blank_mode"][0])]
        assert float(sums.parts[mode][0]) == pytest.approx(float(sums.total), rel=1e-5)


def test_a_second_run_on_a_live_run_folder_is_refused_before_writing(shards, tmp_path):
    job = tiny_job(shards, tmp_path / "run", train={"steps": 2})
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").write_text(f"{os.getpid()}\n")  # this test process: alive
    with pytest.raises(CheckpointError, match=rf"in use by a live run \(pid {os.getpid()}"):
        train(plan_run(job_config_from_dict(job), world_size=1))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]  # nothing written


def test_the_plan_refuses_what_the_run_would_fail_on(shards, tmp_path):
    """--dry-run runs plan_run: each of these is refused there, before any compute or write."""
    import math

    def plan(**sections):
        return plan_run(job_config_from_dict(tiny_job(shards, tmp_path / "run", **sections)), world_size=1)

    for lr in (math.nan, math.inf):
        with pytest.raises(ConfigError, match="optim.lr"):
            plan(optim={"lr": lr})
    locked = tmp_path / "read-only"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # root writes anywhere: nothing to test then
            with pytest.raises(ConfigError, match="is not a writable folder"):
                plan_run(job_config_from_dict(tiny_job(shards, locked / "run")), world_size=1)
    finally:
        locked.chmod(0o700)
    (tmp_path / "a-file").write_text("")  # a run folder under a file: unwritable for root too
    with pytest.raises(ConfigError, match="a-file is not a writable folder"):
        plan_run(job_config_from_dict(tiny_job(shards, tmp_path / "a-file" / "run")), world_size=1)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    (tmp_path / "broken" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match="model.init_from: .*pytorch_model.bin: the weight file is empty"):
        plan(model={"preset": "tiny", "overrides": {"vocab_size": 256}, "init_from": str(tmp_path / "broken")})


def test_resume_with_another_seed_or_batch_is_refused_before_config_yaml_is_touched(shards, tmp_path):
    job = tiny_job(shards, tmp_path / "run", train={"steps": 2}, checkpoint={"interval": 1, "keep_last": 1})
    train(plan_run(job_config_from_dict(job), world_size=1))
    before = (tmp_path / "run" / "config.yaml").read_text()
    for change, field_name in (({"seed": 7}, "train.seed"), ({"global_batch_size": 16}, "train.global_batch_size")):
        changed = tiny_job(shards, tmp_path / "run", train={"steps": 4, **change},
                           checkpoint={"interval": 1, "keep_last": 1, "resume": "latest"})  # fmt: skip
        with pytest.raises(CheckpointError, match=f"cannot be resumed exactly with {field_name}"):
            plan_run(job_config_from_dict(changed), world_size=1)
    assert (tmp_path / "run" / "config.yaml").read_text() == before


def test_a_truncated_token_shard_is_named_by_the_plan(shards, tmp_path):
    import shutil

    copy = tmp_path / "train"
    shutil.copytree(shards["train"], copy)
    shard = sorted(copy.glob("*.bin"))[0]
    shard.write_bytes(shard.read_bytes()[:-2])
    job = tiny_job({"train": copy, "eval": shards["eval"]}, tmp_path / "run")
    with pytest.raises(ConfigError, match=rf"data.path: {shard}: \d+ bytes, the manifest says \d+"):
        plan_run(job_config_from_dict(job), world_size=1)


def test_changed_token_shards_are_caught_by_the_sampled_and_the_full_hash(shards, tmp_path):
    from torchglm.data.shards import sample_spans

    from .conftest import write_shards

    copy = write_shards(tmp_path / "train", 1500, 3)  # shards larger than the 64 KiB the sampled hash reads
    shard = max(copy.glob("*.bin"), key=lambda p: p.stat().st_size)
    data = bytearray(shard.read_bytes())
    sampled = {i for start, length in sample_spans(len(data)) for i in range(start, start + length)}
    inside, outside = min(sampled), next(i for i in range(len(data)) if i not in sampled)
    data[outside] ^= 0x01  # a byte the sampled hash does not read: only the full hash sees it
    shard.write_bytes(bytes(data))
    job = tiny_job({"train": copy, "eval": shards["eval"]}, tmp_path / "run")
    plan_run(job_config_from_dict(job), world_size=1)  # sizes and sampled hash agree
    job["data"]["verify"] = True
    with pytest.raises(ConfigError, match=rf"data.path: {shard}: its SHA-256 differs from the manifest's"):
        plan_run(job_config_from_dict(job), world_size=1)
    data[inside] ^= 0x01
    shard.write_bytes(bytes(data))
    job["data"]["verify"] = False
    with pytest.raises(ConfigError, match=rf"data.path: {shard}: its sampled SHA-256 differs"):
        plan_run(job_config_from_dict(job), world_size=1)

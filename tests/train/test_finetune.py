"""The finetuning recipe (seq2seq): epochs of examples, the CLI run end to end on the tiny reference model, best
checkpoint, results, exact resume, and its errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from torchglm.cli import main
from torchglm.train.finetune import EpochBatches


def test_epoch_batches_cover_each_epoch_and_resume_in_place():
    samples = list(range(10))
    streams = [EpochBatches(samples, 2, list, seed=5, rank=r, world_size=2) for r in range(2)]
    assert streams[0].per_epoch == 2  # 10 // (2 x 2): the last incomplete global batch is dropped
    iterators = [iter(s) for s in streams]
    epoch = [next(iterators[r]) for _ in range(2) for r in range(2)]
    seen = [x for batch in epoch for x in batch]
    assert len(seen) == 8 and len(set(seen)) == 8  # no sample twice in an epoch, ranks disjoint
    following = [next(iterators[0]) for _ in range(3)]
    resumed = EpochBatches(samples, 2, list, seed=5, rank=0, world_size=2)
    fresh = iter(resumed)
    next(fresh), next(fresh)
    state = resumed.state_dict()
    again = EpochBatches(samples, 2, list, seed=5, rank=0, world_size=2)
    again.load_state_dict(state)
    assert next(iter(again)) == following[0]
    assert EpochBatches(samples, 2, list, seed=6)._order(0) != streams[0]._order(0)  # the seed shuffles


@pytest.fixture
def xsum_folder(shared_dir, tmp_path):
    lines = (shared_dir / "data" / "xsum" / "test1000.jsonl").read_text().splitlines()
    folder = tmp_path / "xsum"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(lines[10:18]) + "\n")
    (folder / "dev.jsonl").write_text("\n".join(lines[20:22]) + "\n")
    return folder


def finetune(shared_dir, data, out, *extra):
    return main(
        [
            "finetune", "seq2seq", "--task", "xsum", "--model", str(shared_dir / "golden" / "glm-ref-fill"),
            "--data", str(data), "--output", str(out),
            "--task.src_seq_length", "48", "--task.tgt_seq_length", "12", "--task.eval_examples", "2",
            "--task.num_beams", "2", "--task.min_new_tokens", "2", "--train.global_batch_size", "4",
            "--train.micro_batch_size", "2", "--optim.lr", "3e-3", "--schedule.warmup_ratio", "0.0",
            "--train.eval_interval", "4", "--checkpoint.interval", "4", "--logging.progress_bar", "false",
            "--logging.tensorboard", "false", *extra,
        ]
    )  # fmt: skip


def test_finetune_learns_keeps_the_best_and_resumes_exactly(shared_dir, xsum_folder, tmp_path):
    run = tmp_path / "run"
    assert finetune(shared_dir, xsum_folder, run, "--train.steps", "8") == 0
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r and "step" in r and "eval/loss" not in r]
    evals = [r for r in records if "eval/loss" in r]
    assert losses[-1] < losses[0] and evals[-1]["eval/loss"] < evals[0]["eval/loss"]
    assert {"eval/rouge1", "eval/rouge2", "eval/rougeL", "eval/rougeLsum"} <= set(evals[-1])
    results = json.loads((run / "results.json").read_text())
    best = json.loads((run / "best" / "metrics.json").read_text())
    assert results["best"] == best and best["step"] in (0, 4, 8)
    assert best["rouge1"] == max(e["rouge1"] for e in results["evaluations"])
    assert (run / "training.png").stat().st_size > 0
    from torchglm import GLMForConditionalGeneration, GLMTokenizer

    GLMForConditionalGeneration.from_pretrained(run / "best")
    GLMTokenizer.from_pretrained(run / "final")

    # a run killed after its step-4 checkpoint, resumed: the same final weights as the uninterrupted run
    again = tmp_path / "again"
    assert finetune(shared_dir, xsum_folder, again, "--train.steps", "8") == 0
    shutil.rmtree(again / "checkpoints" / "step-00000008")
    shutil.rmtree(again / "final")
    assert finetune(shared_dir, xsum_folder, again, "--train.steps", "8", "--resume") == 0
    want, got = load_file(run / "final" / "model.safetensors"), load_file(again / "final" / "model.safetensors")
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_finetune_errors_name_the_problem(shared_dir, xsum_folder, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.jsonl").write_text(json.dumps({"document": "a b c", "summary": "x"}) + "\n" + '{"document": "d"}\n')
    (bad / "dev.jsonl").write_text(json.dumps({"document": "a b c", "summary": "x"}) + "\n")
    assert finetune(shared_dir, bad, tmp_path / "r1", "--train.steps", "2") == 2
    assert 'train.jsonl, line 2: field "summary" is missing' in capsys.readouterr().err
    assert finetune(shared_dir, xsum_folder, tmp_path / "r2", "--train.steps", "2", "--task.name", "xsumm") == 2
    assert "not one of" in capsys.readouterr().err
    assert finetune(shared_dir, xsum_folder, tmp_path / "r3", "--train.steps", "2", "--task.epochs", "-1") == 2
    assert "task.epochs must be > 0" in capsys.readouterr().err
    assert finetune(shared_dir, xsum_folder, tmp_path / "r4", "--task.train_split", "nope") == 2
    assert "neither nope.jsonl nor nope.source" in capsys.readouterr().err
    assert finetune(shared_dir, xsum_folder, tmp_path / "r5", "--dry-run") == 0
    assert "ok: 8 training and 2 dev examples" in capsys.readouterr().out


def test_every_finetune_preset_loads():
    from pathlib import Path

    import yaml

    from torchglm.tasks import seq2seq, superglue
    from torchglm.train.config import load_job_config
    from torchglm.train.finetune import ClozeJob, Seq2SeqJob

    presets = sorted((Path(__file__).resolve().parents[2] / "configs" / "finetune").glob("*.yaml"))
    assert len(presets) >= 13
    for preset in presets:
        name = yaml.safe_load(preset.read_text())["task"]["name"]
        if name in seq2seq.TASKS:
            job, task = load_job_config(preset, root=Seq2SeqJob), seq2seq.TASKS[name]
            if preset.stem == name:  # the original's settings: the preset agrees with the task's table
                assert (job.task.src_seq_length, job.task.tgt_seq_length) == (task.src_seq_length,
                                                                              task.tgt_seq_length)  # fmt: skip
        else:
            job = load_job_config(preset, root=ClozeJob)
            assert name in superglue.TASKS
            if preset.stem == name:
                assert job.task.seq_length == superglue.SEQ_LENGTH[name]
                assert (job.optim.lr, job.schedule.warmup_ratio, job.schedule.decay_style) == (1e-5, 0.1, "linear")


@pytest.mark.slow
def test_finetune_under_torchrun_matches_one_process(shared_dir, xsum_folder, tmp_path):
    """FSDP2 over 2 processes (gloo): the same losses as one process with the same global batch; rank 0 decodes
    the gathered weights for the dev ROUGE and writes best/."""
    import subprocess
    import sys

    from .conftest import child_env

    no_dropout = []
    for name in ("embedding_dropout_prob", "attention_dropout_prob", "output_dropout_prob"):
        no_dropout += [f"--model.overrides.{name}", "0.0"]
    one = tmp_path / "one"
    assert finetune(shared_dir, xsum_folder, one, "--train.steps", "4", *no_dropout) == 0
    two = tmp_path / "two"
    args = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "torchglm.cli",
        "finetune", "seq2seq", "--task", "xsum", "--model", str(shared_dir / "golden" / "glm-ref-fill"),
        "--data", str(xsum_folder), "--output", str(two), "--task.src_seq_length", "48", "--task.tgt_seq_length",
        "12", "--task.eval_examples", "2", "--task.num_beams", "2", "--task.min_new_tokens", "2",
        "--train.global_batch_size", "4", "--train.micro_batch_size", "2", "--optim.lr", "3e-3",
        "--schedule.warmup_ratio", "0.0", "--train.eval_interval", "4", "--checkpoint.interval", "4",
        "--logging.progress_bar", "false", "--logging.tensorboard", "false", "--train.steps", "4", *no_dropout,
    ]  # fmt: skip
    done = subprocess.run(args, env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    def records(run):
        return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]

    losses = [
        {r["step"]: r["loss"] for r in records(run) if "loss" in r and "eval/loss" not in r} for run in (one, two)
    ]
    assert losses[0].keys() == losses[1].keys()
    assert all(abs(losses[0][k] - losses[1][k]) < 1e-4 for k in losses[0])
    rouge = [[r["eval/rouge1"] for r in records(run) if "eval/rouge1" in r] for run in (one, two)]
    assert rouge[0] == pytest.approx(rouge[1], abs=1e-6)
    assert (two / "best" / "metrics.json").is_file() and (two / "final" / "model.safetensors").is_file()


def test_overriding_one_field_keeps_the_jobs_other_defaults():
    from torchglm.train.config import load_job_config
    from torchglm.train.finetune import ClozeJob, Seq2SeqJob

    job = load_job_config(None, ["--schedule.warmup_ratio", "0.05", "--train.steps", "5"], root=ClozeJob)
    assert (job.schedule.decay_style, job.schedule.min_lr_ratio, job.schedule.warmup_ratio) == ("linear", 0.0, 0.05)
    assert (job.train.global_batch_size, job.train.steps, job.optim.lr) == (16, 5, 1e-5)
    job = load_job_config(None, ["--optim.lr", "1e-3"], root=Seq2SeqJob)
    assert (job.optim.lr, job.optim.weight_decay, job.schedule.decay_style) == (1e-3, 0.1, "linear")


@pytest.mark.parametrize("task, steps", [("rte", 40), ("copa", 30)])
def test_cloze_finetuning_overfits_32_training_examples(shared_dir, tmp_path, task, steps):
    """Through the CLI, on the tiny reference model: RTE (single-token) and COPA (multi-token, mirrored to 64)
    reach 100% accuracy on their own training examples."""
    out = tmp_path / task
    args = [
        "finetune", "superglue", "--task", task, "--model", str(shared_dir / "golden" / "glm-ref-fill"),
        "--data", str(shared_dir / "data" / "superglue"), "--output", str(out), "--task.dev_split", "train",
        "--task.seq_length", "128", "--train.steps", str(steps), "--train.eval_interval", str(steps),
        "--optim.lr", "2e-3", "--schedule.warmup_ratio", "0.05", "--checkpoint.interval", "0",
        "--logging.progress_bar", "false", "--logging.tensorboard", "false",
    ]  # fmt: skip
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["evaluations"][0]["accuracy"] < 75  # the reference model does not know the task
    assert results["best"]["accuracy"] == 100.0 and results["best"]["step"] == steps
    from torchglm.tasks import superglue

    assert results["pattern_id"] == superglue.DEFAULT_PATTERN[task]
    # best/ is a from_pretrained folder that scores the training examples perfectly on its own
    assert main(["evaluate", "superglue", "--task", task, "--model", str(out / "best"), "--split", "train",
                 "--seq-length", "128", "--data", str(shared_dir / "data" / "superglue"), "--output",
                 str(tmp_path / "eval"), "--no-progress"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["metrics"]["accuracy"] == 100.0


def test_the_classification_head_overfits_32_training_examples(shared_dir, tmp_path, capsys):
    """The alternative to the cloze: GLMForSequenceClassification over [CLS] A [SEP] B [eos], through the CLI."""
    from torchglm import GLMTokenizer
    from torchglm.model import GLMForSequenceClassification
    from torchglm.tasks import superglue

    out = tmp_path / "rte-head"
    args = [
        "finetune", "superglue", "--task", "rte", "--task.head", "classifier", "--data",
        str(shared_dir / "data" / "superglue"), "--model", str(shared_dir / "golden" / "glm-ref-fill"),
        "--output", str(out), "--task.dev_split", "train", "--task.seq_length", "128", "--train.steps", "60",
        "--train.eval_interval", "60", "--optim.lr", "2e-3", "--schedule.warmup_ratio", "0.05",
        "--checkpoint.interval", "0", "--logging.progress_bar", "false", "--logging.tensorboard", "false",
    ]  # fmt: skip
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["head"] == "classifier" and results["best"]["accuracy"] == 100.0
    model = GLMForSequenceClassification.from_pretrained(out / "best").eval()
    tokenizer = GLMTokenizer.from_pretrained(out / "best")
    path = superglue.task_file(shared_dir / "data" / "superglue", "rte", "train")
    examples = superglue.read_examples("rte", path, "train")
    again = superglue.evaluate_classifier(model, tokenizer, "rte", examples, seq_length=128)
    assert again.metrics["accuracy"] == 100.0
    assert main([*args[:6], "--task", "copa", *args[6:]]) == 2  # multi-choice tasks: the cloze only
    assert main([*args, "--task.loss", "mix"]) == 2
    assert "task.loss mix: an LM loss of the answer, for the cloze head only" in capsys.readouterr().err

    # torchglm evaluate superglue tells the classifier folder by its config and scores it with the head
    data = str(shared_dir / "data" / "superglue")
    evaluate = ["evaluate", "superglue", "--task", "rte", "--model", str(out / "best"), "--split", "train",
                "--seq-length", "128", "--data", data, "--output", str(tmp_path / "eval"), "--no-progress"]  # fmt: skip
    assert main(evaluate) == 0
    record = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert record["head"] == "classifier" and record["pool_token"] == "cls" and record["metrics"]["accuracy"] == 100.0
    rows = [json.loads(line) for line in (tmp_path / "eval" / "RTE.jsonl").read_text().splitlines()]
    assert rows == [{"idx": e.idx, "label": e.label} for e in examples]  # all right: the gold labels, by name
    capsys.readouterr()
    assert main([*evaluate, "--pattern-id", "0"]) == 2
    assert "a classification-head model (GLMForSequenceClassification), it reads no pattern" in capsys.readouterr().err
    assert main([*evaluate[:2], "--task", "cb", *evaluate[4:]]) == 2
    assert "its classification head has 2 labels, cb has 3" in capsys.readouterr().err


def test_lora_through_peft_trains_adapters_only_and_reloads(shared_dir, tmp_path):
    pytest.importorskip("peft")
    import peft
    from safetensors.torch import load_file

    from torchglm import GLMForConditionalGeneration

    base_folder = shared_dir / "golden" / "glm-ref-fill"

    def run(out, *extra):
        return main([
            "finetune", "superglue", "--task", "rte", "--task.lora_rank", "8", "--model", str(base_folder),
            "--data", str(shared_dir / "data" / "superglue"), "--output", str(out), "--task.dev_split", "train",
            "--task.seq_length", "128", "--train.steps", "60", "--train.eval_interval", "60", "--optim.lr", "1e-2",
            "--schedule.warmup_ratio", "0.05", "--checkpoint.interval", "30", "--logging.progress_bar", "false",
            "--logging.tensorboard", "false", *extra,
        ])  # fmt: skip

    out = tmp_path / "lora"
    assert run(out) == 0
    assert json.loads((out / "results.json").read_text())["best"]["accuracy"] == 100.0
    merged = GLMForConditionalGeneration.from_pretrained(out / "final").state_dict()
    original = GLMForConditionalGeneration.from_pretrained(base_folder).state_dict()
    changed = {k for k in merged if not torch.equal(merged[k], original[k])}
    assert changed and all(k.split(".")[-2] in {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}
                           for k in changed)  # only the adapted layers moved  # fmt: skip
    # the adapters alone, loaded onto the base model with PEFT, give the merged model's logits
    adapted = peft.PeftModel.from_pretrained(GLMForConditionalGeneration.from_pretrained(base_folder),
                                             out / "final" / "adapter").eval()  # fmt: skip
    plain = GLMForConditionalGeneration.from_pretrained(out / "final").eval()
    ids = torch.tensor([[101, 2023, 103, 1012, 0, 30522]])
    positions = torch.tensor([[[0, 1, 2, 3, 4, 2], [0, 0, 0, 0, 0, 1]]])
    with torch.no_grad():
        want = plain(ids, positions, attention_mask=torch.tensor([5])).logits
        got = adapted(input_ids=ids, position_ids=positions, attention_mask=torch.tensor([5])).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # killed after its step-30 checkpoint and resumed: the uninterrupted run's adapters exactly
    again = tmp_path / "again"
    assert run(again) == 0
    shutil.rmtree(again / "checkpoints" / "step-00000060")
    shutil.rmtree(again / "final")
    assert run(again, "--resume") == 0
    first, second = (load_file(o / "final" / "adapter" / "adapter_model.safetensors") for o in (out, again))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_early_stopping_stops_after_patience_evaluations_without_a_better_dev_metric(shared_dir, tmp_path, capsys):
    """A learning rate too small to move any weight: the dev accuracy of step 0 is never beaten, so with patience 2
    the run stops after the evaluations of steps 2 and 4, with its checkpoint, best/ (step 0), final/ and the reason."""
    out = tmp_path / "stop"
    args = [
        "finetune", "superglue", "--task", "rte", "--model", str(shared_dir / "golden" / "glm-ref-fill"),
        "--data", str(shared_dir / "data" / "superglue"), "--output", str(out), "--task.dev_split", "train",
        "--task.eval_examples", "8", "--task.seq_length", "64", "--task.early_stop_patience", "2",
        "--train.steps", "20", "--train.eval_interval", "2", "--optim.lr", "1e-30", "--optim.weight_decay", "0",
        "--checkpoint.interval", "2", "--logging.progress_bar", "false", "--logging.tensorboard", "false",
    ]  # fmt: skip
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert [e["step"] for e in results["evaluations"]] == [0, 2, 4]
    assert len({e["accuracy"] for e in results["evaluations"]}) == 1  # nothing moved
    assert results["stopped_at_step"] == 4 and results["best"]["step"] == 0
    reason = results["stop_reason"]
    assert reason.startswith("early stop: accuracy not above") and reason.endswith("for 2 evaluations")
    steps = [json.loads(line).get("step") for line in (out / "log.jsonl").read_text().splitlines()]
    assert max(s for s in steps if s is not None) == 4
    assert (out / "checkpoints" / "step-00000004").is_dir() and (out / "final" / "model.safetensors").is_file()
    assert json.loads((out / "best" / "metrics.json").read_text())["step"] == 0
    # Exact resume: killed after step 2 (one evaluation without a better score counted), the run still stops at 4
    again = tmp_path / "again"
    shutil.copytree(out, again)
    shutil.rmtree(again / "checkpoints" / "step-00000004")
    shutil.rmtree(again / "final")
    assert main([*args, "--output", str(again), "--resume"]) == 0
    resumed = json.loads((again / "results.json").read_text())
    assert [e["step"] for e in resumed["evaluations"]] == [4] and resumed["stopped_at_step"] == 4
    assert resumed["stop_reason"] == reason
    # and a run that stopped early stays stopped when resumed
    assert main([*args, "--resume"]) == 0
    assert json.loads((out / "results.json").read_text())["stopped_at_step"] == 4
    capsys.readouterr()
    assert main([*args, "--output", str(tmp_path / "bad"), "--task.wsc_negative", "true"]) == 2
    assert "task.wsc_negative: WSC's negative candidates, not for rte" in capsys.readouterr().err


def test_wsc_with_negatives_and_the_mix_loss_trains_through_the_cli(shared_dir, tmp_path):
    """The preset's WSC recipe (negatives from the text, loss mix, length penalty 1) on the tiny reference model: the
    training loss falls, and the dev examples are scored against their negatives."""
    out = tmp_path / "wsc"
    args = [
        "finetune", "superglue", "--config", "configs/finetune/wsc.yaml", "--model",
        str(shared_dir / "golden" / "glm-ref-fill"), "--data", str(shared_dir / "data" / "superglue"), "--output",
        str(out), "--task.epochs", "1.0", "--task.eval_examples", "8", "--task.seq_length", "96",
        "--task.eval_epochs", "1.0", "--train.steps", "8", "--train.global_batch_size", "4",
        "--train.micro_batch_size", "4", "--logging.interval", "1", "--optim.lr", "2e-3", "--checkpoint.interval",
        "0", "--logging.progress_bar", "false", "--logging.tensorboard", "false",
    ]  # fmt: skip
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert (results["loss"], results["wsc_negative"], results["train_examples"]) == ("mix", True, 32)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r and "eval/loss" not in r]
    assert len(losses) == 8 and sum(losses[-2:]) < sum(losses[:2])
    assert [e["step"] for e in results["evaluations"]] == [0, 8] and "accuracy" in results["evaluations"][-1]


def test_p_tuning_with_a_frozen_backbone_overfits_and_saves_only_what_trained(shared_dir, tmp_path, capsys):
    """RTE pattern 0 with 3 prompt tokens (an LSTM encoder) and the backbone frozen but its first layer, through the
    CLI: 100% on the 32 training examples; best/ holds only the encoder and layer 0, and `evaluate superglue` on
    it (the base model + those tensors) scores the same as the run did."""
    from torchglm.tasks import prompts

    base, data, out = shared_dir / "golden" / "glm-ref-fill", shared_dir / "data" / "superglue", tmp_path / "ptune"
    args = [
        "finetune", "superglue", "--task", "rte", "--model", str(base), "--data", str(data), "--output", str(out),
        "--task.dev_split", "train", "--task.seq_length", "128", "--train.steps", "40", "--train.eval_interval", "40",
        "--optim.lr", "5e-3", "--schedule.warmup_ratio", "0.05", "--checkpoint.interval", "0",
        "--logging.progress_bar", "false", "--logging.tensorboard", "false", "--task.continuous_prompt", "true",
        "--task.freeze_backbone", "true", "--task.tune_prefix_layers", "1",
    ]  # fmt: skip
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["evaluations"][0]["accuracy"] < 75 and results["best"] == {"step": 40, "accuracy": 100.0}
    assert (results["continuous_prompt"], results["prompt_encoder"], results["tune_prefix_layers"]) == (True, "lstm", 1)
    saved = load_file(out / "best" / prompts.TRAINABLE_FILE)
    assert {k.split(".")[0] for k in saved} == {"prompt_encoder", "glm"}
    assert all(k.startswith(("prompt_encoder.", "glm.transformer.layers.0.")) for k in saved)
    assert saved["prompt_encoder.embeddings.weight"].shape == (3, 64)
    info = json.loads((out / "best" / prompts.TRAINABLE_INFO).read_text())
    assert (info["pattern_id"], info["seq_length"], info["prompt_encoder"]["num_tokens"]) == (0, 128, 3)
    evaluate = ["evaluate", "superglue", "--task", "rte", "--split", "train", "--data", str(data), "--no-progress"]
    assert main([*evaluate, "--model", str(out / "best"), "--output", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["metrics"] == {"accuracy": 100.0}
    assert (out / "final" / prompts.TRAINABLE_FILE).is_file() and not (out / "final.tmp").exists()
    # bad settings are named; so is a run scored on another task than the one it trained on
    capsys.readouterr()
    evaluate_cb = ["evaluate", "superglue", "--task", "cb", "--data", str(data), "--no-progress"]
    assert main([*evaluate_cb, "--model", str(out / "best")]) == 2
    assert "trained on rte, not cb" in capsys.readouterr().err
    assert main([*args[:9], str(tmp_path / "bad"), "--task.tune_prefix_layers", "3", "--task.freeze_backbone",
                 "true", "--dry-run"]) == 2  # fmt: skip
    assert "task.tune_prefix_layers 3: the model has 2 layers" in capsys.readouterr().err
    assert main([*args[:9], str(tmp_path / "bad"), "--task", "record", "--task.continuous_prompt", "true",
                 "--task.dev_split", "train", "--dry-run"]) == 2  # fmt: skip
    assert "record pattern 0 has no prompt slots" in capsys.readouterr().err

"""CLUE through ``torchglm finetune superglue``: TNEWS, a 15-way multi-token cloze, learnt by a tiny random model
over the Chinese vocabulary; the presets' dry runs find the shared FewCLUE splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from torchglm.cli import main

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "finetune"


@pytest.fixture(scope="module")
def tiny_chinese_model(shared_dir, tmp_path_factory):
    import torch

    from torchglm import GLMConfig, GLMForConditionalGeneration, GLMTokenizer

    torch.manual_seed(0)
    config = GLMConfig(vocab_size=50048, hidden_size=64, num_layers=2, num_attention_heads=4,
                       max_sequence_length=128)  # fmt: skip
    folder = tmp_path_factory.mktemp("glm-tiny-zh")
    GLMForConditionalGeneration(config).save_pretrained(folder)
    GLMTokenizer.from_sentencepiece(shared_dir / "data" / "vocab" / "cog-pretrain.model").save_pretrained(folder)
    return folder


def test_tnews_finetuning_learns_8_examples_of_8_labels(shared_dir, tiny_chinese_model, tmp_path):
    lines = (shared_dir / "data" / "clue" / "tnews" / "train_few_all.json").read_text(encoding="utf-8").splitlines()
    first_of_label: dict = {}
    for line in lines:
        first_of_label.setdefault(json.loads(line)["label"], line)
    picked = list(first_of_label.values())[::2]  # 8 of the 15 labels, one example each (each still a 15-way cloze)
    assert len(first_of_label) == 15 and len(picked) == 8
    (tmp_path / "tnews").mkdir()
    (tmp_path / "tnews" / "train.json").write_text("\n".join(picked) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    args = [
        "finetune", "superglue", "--config", str(PRESETS / "tnews.yaml"), "--model", str(tiny_chinese_model),
        "--data", str(tmp_path), "--output", str(out), "--task.dev_split", "train", "--task.seq_length", "40",
        "--train.global_batch_size", "8", "--train.micro_batch_size", "8", "--task.epochs", "20",
        "--task.eval_epochs", "20", "--optim.lr", "5e-3", "--schedule.warmup_ratio", "0.05",
        "--checkpoint.interval", "0", "--logging.progress_bar", "false", "--logging.tensorboard", "false",
    ]  # fmt: skip
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "tnews" and results["pattern_id"] == 0 and results["steps"] == 20
    assert results["evaluations"][0]["accuracy"] <= 25  # a random model: about 1 in 15 right
    assert results["best"]["accuracy"] == 100.0
    # best/ scores its training examples perfectly through the evaluate command too
    assert main(["evaluate", "superglue", "--task", "tnews", "--model", str(out / "best"), "--data", str(tmp_path),
                 "--split", "train", "--seq-length", "40", "--output", str(tmp_path / "eval"),
                 "--no-progress"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["metrics"]["accuracy"] == 100.0


def test_clue_presets_plan_on_the_shared_fewclue_splits(shared_dir, tiny_chinese_model, tmp_path, capsys):
    def dry_run(task):
        return main(["finetune", "superglue", "--config", str(PRESETS / f"{task}.yaml"), "--model",
                     str(tiny_chinese_model), "--output", str(tmp_path / task), "--task.seq_length", "128",
                     "--data", str(shared_dir / "data" / "clue"), "--dry-run"])  # fmt: skip

    assert dry_run("cluewsc") == 0  # train_few_all.json and dev_few_all.json: 160 and 159 lines
    assert "ok: 160 training and 159 dev examples, pattern 0" in capsys.readouterr().out
    assert dry_run("afqmc") == 2  # the shared folder holds AFQMC's dev.json only
    assert "afqmc: no train.json or train_few_all.json (the afqmc train split" in capsys.readouterr().err

"""The trainer on a toy regression (it knows nothing of GLM): accumulation-invariant loss, per-part losses,
non-finite steps skipped, counted and aborting after N in a row, resume of a synthetic resumable stream."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from torchglm.train.config import job_config_from_dict
from torchglm.train.logging import MetricLogger
from torchglm.train.optim import build_optimizer, build_scheduler
from torchglm.train.parallel import World
from torchglm.train.recipe import trainer_config
from torchglm.train.trainer import LossSums, NonFiniteError, Trainer


class Batches:
    """A synthetic resumable stream: batch ``i`` is a pure function of ``i`` (the real stream's contract)."""

    def __init__(self, batch_size: int, poison: set[int] = frozenset()):
        self.batch_size = batch_size
        self.poison = poison
        self.step = 0

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(index)
        x = torch.randn(self.batch_size, 4, generator=generator)
        y = x.sum(1, keepdim=True) + (float("nan") if index in self.poison else 0.0)
        return {"x": x, "y": y, "group": torch.arange(self.batch_size) % 2}

    def __iter__(self):
        while True:
            self.step += 1
            yield self.batch(self.step - 1)

    def state_dict(self):
        return {"step": self.step}

    def load_state_dict(self, state):
        self.step = state["step"]


class SquaredError:
    def count(self, batch):
        return batch["y"].numel()

    def __call__(self, model, batch):
        errors = (model(batch["x"]) - batch["y"]).pow(2).squeeze(1)
        parts = {
            name: (errors.detach()[batch["group"] == g].sum(), (batch["group"] == g).sum())
            for g, name in enumerate(("even", "odd"))
        }
        return LossSums(total=errors.sum(), count=errors.numel(), tokens=errors.numel(), parts=parts)


def make_trainer(tmp_path, micro: int, poison=frozenset(), max_nonfinite=3, steps=6, **extra):
    job = job_config_from_dict(
        {
            "train": {"output_dir": str(tmp_path), "steps": steps, "global_batch_size": 8, "micro_batch_size": micro,
                      "max_nonfinite_steps": max_nonfinite},
            "optim": {"lr": 1e-2, "weight_decay": 0.0},
            "schedule": {"warmup_steps": 0, "decay_style": "constant"},
            "logging": {"interval": 1, "progress_bar": False, "tensorboard": False},
            **extra,
        }
    )  # fmt: skip
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    optimizer = build_optimizer(model, job.optim)
    scheduler = build_scheduler(optimizer, job.schedule, job.train.steps)
    metrics = MetricLogger(tmp_path, job.train.steps, True, progress_bar=False, tensorboard=False)
    data = Batches(micro, poison)
    trainer = Trainer(
        trainer_config(job), World(), model, optimizer, scheduler, SquaredError(), data, None, metrics,
        accumulation=8 // micro,
    )  # fmt: skip
    return trainer, metrics


def records(tmp_path):
    return [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]


def test_loss_does_not_depend_on_the_micro_batch_split(tmp_path):
    """8 samples as 1 x 8 or as 4 x 2 accumulated: the same loss and update (a mean over all 8 terms)."""
    whole, whole_log = make_trainer(tmp_path / "a", micro=8)
    split, split_log = make_trainer(tmp_path / "b", micro=2)
    whole._batches = iter([_merge([Batches(2).batch(i) for i in range(4 * s, 4 * s + 4)]) for s in range(3)])
    split._batches = iter(Batches(2))
    for _ in range(3):
        a, b = whole.train_step(), split.train_step()
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
        assert a["loss/even"] == pytest.approx(b["loss/even"], rel=1e-6)
    for p, q in zip(whole.model.parameters(), split.model.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    whole_log.close(), split_log.close()


def _merge(batches):
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def test_parts_and_record_fields(tmp_path):
    trainer, metrics = make_trainer(tmp_path, micro=4)
    with metrics:
        trainer.train()
    rows = [r for r in records(tmp_path) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    first = rows[0]
    assert first["loss"] == pytest.approx((first["loss/even"] + first["loss/odd"]) / 2, rel=1e-6)
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert {"lr", "grad_norm", "tokens", "tokens_per_s", "skipped_steps", "tokens_seen"} <= set(first)
    assert [r["lr"] for r in rows] == [1e-2] * 6  # constant schedule
    assert [r["tokens"] for r in rows] == [8] * 6 and [r["tokens_seen"] for r in rows] == [8, 16, 24, 32, 40, 48]
    # the first step's gradient norm is that of the mean squared error at the initial weights
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    batch = _merge([Batches(4).batch(0), Batches(4).batch(1)])
    (model(batch["x"]) - batch["y"]).pow(2).mean().backward()
    norm = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    assert first["grad_norm"] == pytest.approx(float(norm), rel=1e-5)


def test_validate_reports_the_eval_loss_and_the_recipe_metrics(tmp_path):
    """Evaluation before the first step, every eval_interval steps and at the end: the held-out mean loss and
    whatever the metrics callback returns, computed on the model as it is then."""
    trainer, metrics = make_trainer(
        tmp_path,
        micro=4,
        steps=4,
        train={
            "output_dir": str(tmp_path),
            "steps": 4,
            "global_batch_size": 8,
            "micro_batch_size": 4,
            "eval_interval": 2,
        },
    )
    held_out = [Batches(4).batch(1000 + i) for i in range(2)]
    trainer.eval_data = lambda: iter(held_out)
    seen_modes = []

    def metric(model):
        seen_modes.append(model.training)
        return {"weight_sum": float(model.weight.sum())}

    trainer.eval_metrics = metric
    with metrics:
        trainer.train()
    evals = [r for r in records(tmp_path) if "eval/loss" in r]
    assert [r["step"] for r in evals] == [0, 2, 4] and seen_modes == [False] * 3
    assert evals[-1]["eval/weight_sum"] == pytest.approx(float(trainer.model.weight.detach().sum()), rel=1e-6)
    with torch.no_grad():
        expected = sum(float((trainer.model(b["x"]) - b["y"]).pow(2).sum()) for b in held_out) / 8
    assert evals[-1]["eval/loss"] == pytest.approx(expected, rel=1e-6)


def test_nonfinite_steps_are_skipped_and_counted(tmp_path):
    trainer, metrics = make_trainer(tmp_path, micro=4, poison={2, 3})  # micro-batches of optimizer step 2
    with metrics:
        trainer._batches = iter(trainer.train_data)
        trainer.train_step()
        before = [p.detach().clone() for p in trainer.model.parameters()]
        record = trainer.train_step()
        assert record["loss"] != record["loss"]  # nan
        assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))
        assert trainer.skipped_steps == 1 and trainer.nonfinite_in_a_row == 1
        trainer.train_step()  # finite again: the streak resets, the count stays
        assert trainer.skipped_steps == 1 and trainer.nonfinite_in_a_row == 0
    events = [r for r in records(tmp_path) if r.get("event") == "skipped_step"]
    assert [e["step"] for e in events] == [2]


def test_abort_after_too_many_nonfinite_steps_in_a_row(tmp_path):
    trainer, metrics = make_trainer(tmp_path, micro=8, poison=set(range(1, 100)), max_nonfinite=3)
    with metrics, pytest.raises(NonFiniteError, match="3 steps in a row"):
        trainer.train()
    assert trainer.step == 4 and trainer.skipped_steps == 3


def test_nonfinite_gradient_with_finite_loss(tmp_path):
    trainer, metrics = make_trainer(tmp_path, micro=8)
    with metrics:
        trainer._batches = iter(trainer.train_data)
        hook = trainer.model.weight.register_hook(lambda grad: grad * float("inf"))
        record = trainer.train_step()
        hook.remove()
    assert record["loss"] == record["loss"] and record["grad_norm"] == float("inf")
    assert trainer.skipped_steps == 1

"""The training loop, in small named stages: batches in, loss out. It knows nothing of GLM.

- :meth:`Trainer.train_step` takes the step's micro-batches, counts their loss terms over all data-parallel ranks,
  runs :meth:`Trainer.forward_backward_step` on each, clips the global gradient norm and updates; a non-finite
  loss or gradient norm skips the update (counted, logged) and too many in a row abort the run;
- :meth:`Trainer.validate` computes the held-out loss, and whatever metrics ``eval_metrics(model)`` returns
  (accuracy, ROUGE: the finetuning recipes pass them);
- :meth:`Trainer.save` / :meth:`Trainer.resume` go through :class:`~torchglm.train.checkpoint.Checkpointer`.

The loss of a step is the mean over every loss term of the global batch (``sum / count``, the count all-reduced
before the backward), so one process with gradient accumulation and N processes give the same gradients.

What the trainer needs from the model side is an :class:`~torchglm.losses.Objective`: ``count(batch)`` (loss
terms in a batch) and ``objective(model, batch) -> LossSums``; what it needs of the run, a :class:`TrainerConfig`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from torchglm.losses import LossSums, Objective
from torchglm.model import FlopCount

from .checkpoint import Checkpointer, rng_state, set_rng_state
from .logging import MetricLogger
from .parallel import World, clip_grad_norm

logger = logging.getLogger("torchglm.train")


@dataclass
class TrainerConfig:
    """What the loop itself needs to know; the recipes fill it from their job configs."""

    steps: int
    """Optimizer steps to train for."""
    clip_grad: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping (the norm is still logged)."""
    max_nonfinite_steps: int = 5
    """A step with a non-finite loss or gradient norm is skipped; this many in a row abort the run."""
    log_interval: int = 10
    """Write a log record every this many steps (the first and the last step are always logged)."""
    eval_interval: int = 0
    """Evaluate every this many steps (and after the last one, and before the first); 0: never."""
    checkpoint_interval: int = 0
    """Save every this many steps; the last step is always saved (when there is a checkpointer)."""
    config_names: dict[str, str] = field(default_factory=dict)
    """The job-config name of each field above, for error messages (``clip_grad`` -> ``optim.clip_grad``)."""


class NonFiniteError(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient norm."""


class Trainer:
    """One training run. Example::

    trainer = Trainer(TrainerConfig(steps=100), world, model, optimizer, scheduler, objective, batches,
                      checkpointer, log)
    trainer.resume(path)        # optional
    trainer.train()

    ``flops`` (the model's :class:`~torchglm.model.FlopCount`) and ``peak_tflops`` give the logged MFU;
    ``eval_metrics(model) -> {name: value}`` adds metrics to every evaluation (logged as ``eval/<name>``).
    """

    def __init__(
        self,
        config: TrainerConfig,
        world: World,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        scheduler,
        objective: Objective,
        train_data: Iterable[dict],
        checkpointer: Checkpointer | None,
        metrics: MetricLogger,
        accumulation: int = 1,
        eval_data: Callable[[], Iterable[dict]] | None = None,
        autocast_dtype: torch.dtype | None = None,
        flops: FlopCount | None = None,
        peak_tflops: float = 0.0,
        trainer_info: dict[str, Any] | None = None,
        eval_metrics: Callable[[nn.Module], dict[str, float]] | None = None,
    ):
        self.config = config
        self.world = world
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.objective = objective
        self.train_data = train_data
        self.eval_data = eval_data
        self.checkpointer = checkpointer
        self.metrics = metrics
        self.accumulation = accumulation
        self.autocast_dtype = autocast_dtype
        self.flops = flops
        self.peak_tflops = peak_tflops
        self.eval_metrics = eval_metrics
        self.trainer_info = trainer_info or {}
        self.step = 0
        self.tokens_seen = 0
        self.skipped_steps = 0
        self.nonfinite_in_a_row = 0
        self.stop_reason: str | None = None
        """Set by :meth:`request_stop` (early stopping): training ends after the current step, with a checkpoint."""
        self.recipe_state: dict[str, Any] = {}
        """JSON values a recipe keeps across ``--resume`` (early stopping's count of evaluations without a better
        score): saved with every checkpoint, restored by :meth:`resume`."""
        self._batches = None

    # ------------------------------------------------------------------------------------------------ stages
    def forward_backward_step(self, batch: dict[str, torch.Tensor], scale: float) -> LossSums:
        """Forward one micro-batch, backward ``scale * sum`` (scale = data-parallel size / global term count)."""
        batch = {k: v.to(self.world.device, non_blocking=True) for k, v in batch.items()}
        with self._autocast():
            sums = self.objective(self.model, batch)
        self.backward(sums.total * scale)
        return sums

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over ``accumulation`` micro-batches; returns its log record."""
        batches = [next(self._batches) for _ in range(self.accumulation)]
        local_count = sum(int(self.objective.count(b)) for b in batches)
        global_count = self._all_reduce(torch.tensor([local_count], dtype=torch.float64, device=self.world.device))[0]
        scale = self.world.dp_size / max(float(global_count), 1.0)
        totals: dict[str, torch.Tensor] = {}
        for index, batch in enumerate(batches):
            self.set_gradient_sync(index == len(batches) - 1)
            _accumulate(totals, self.forward_backward_step(batch, scale))
        reduced = self._reduce_totals(totals)
        loss = reduced.pop("loss")
        tokens = int(reduced.pop("tokens"))
        predicted = int(reduced.pop("count"))
        grad_norm, applied = self.update(math.isfinite(loss))
        if applied:
            self.nonfinite_in_a_row = 0
        else:
            self.skipped_steps += 1
            self.nonfinite_in_a_row += 1
        lr = self.current_lr()
        if self.scheduler is not None:
            with warnings.catch_warnings():  # a skipped step leaves optimizer.step() uncalled: intended
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                self.scheduler.step()
        self.step += 1
        self.tokens_seen += tokens
        record = {"step": self.step, "loss": loss, **reduced, "lr": lr, "grad_norm": grad_norm, "tokens": tokens}
        record["predicted"] = predicted
        if not applied:
            self.metrics.log({"event": "skipped_step", "step": self.step, "loss": loss, "grad_norm": grad_norm})
            limit = self.config.max_nonfinite_steps
            if self.nonfinite_in_a_row >= limit:
                name = self.config.config_names.get("max_nonfinite_steps", "max_nonfinite_steps")
                raise NonFiniteError(
                    f"{self.nonfinite_in_a_row} steps in a row (up to step {self.step}) had a non-finite loss or "
                    f"gradient norm (loss {loss}, grad norm {grad_norm}); stopping ({name} = {limit}). Lower the "
                    "learning rate, check the data, or resume from an earlier checkpoint."
                )
        return record

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean held-out loss (and per-part losses) over ``eval_data()`` on every rank, and the
        ``eval_metrics(model)`` of the recipe, each as ``eval/<name>``."""
        self.model.eval()
        totals: dict[str, torch.Tensor] = {}
        metrics: dict[str, float] = {}
        try:
            for batch in self.eval_data() if self.eval_data is not None else ():
                batch = {k: v.to(self.world.device, non_blocking=True) for k, v in batch.items()}
                with self._autocast():
                    _accumulate(totals, self.objective(self.model, batch))
            if self.eval_metrics is not None:
                with self._autocast():
                    metrics = dict(self.eval_metrics(self.model))
        finally:
            self.model.train()
        reduced = self._reduce_totals(totals) if totals else {}
        reduced.pop("tokens", None)
        reduced.pop("count", None)
        return {f"eval/{k}": v for k, v in {**reduced, **metrics}.items()}

    def request_stop(self, reason: str) -> None:
        """End training after the current step (its evaluation and a checkpoint included), e.g. from
        ``eval_metrics``; every rank must ask alike."""
        self.stop_reason = reason

    def train(self) -> None:
        """Train from ``self.step`` to ``config.steps`` (or until :meth:`request_stop`), logging, evaluating and
        saving at their intervals."""
        cfg = self.config
        evaluates = cfg.eval_interval and (self.eval_data is not None or self.eval_metrics is not None)
        self.model.train()
        self._batches = iter(self.train_data)
        if evaluates and self.step == 0:
            self.metrics.log({"step": 0, **self.validate()})
        window_start, window_tokens, window_predicted = time.perf_counter(), 0, 0
        while self.step < cfg.steps and self.stop_reason is None:
            record = self.train_step()
            window_tokens += record["tokens"]
            window_predicted += record.pop("predicted")
            self.metrics.advance(self.step, record["loss"], record["lr"])
            last = self.step == cfg.steps
            if self.step % cfg.log_interval == 0 or self.step == 1 or last:
                elapsed = time.perf_counter() - window_start
                rate = window_tokens / elapsed if elapsed > 0 else 0.0
                record.update(tokens_per_s=rate, skipped_steps=self.skipped_steps, tokens_seen=self.tokens_seen)
                if self.peak_tflops and self.flops is not None and elapsed > 0:
                    flops = window_tokens * self.flops.per_token + window_predicted * self.flops.per_prediction
                    record["mfu"] = flops / elapsed / (self.peak_tflops * 1e12 * self.world.world_size)
                self.metrics.log(record)
                window_start, window_tokens, window_predicted = time.perf_counter(), 0, 0
            if evaluates and (self.step % cfg.eval_interval == 0 or last):
                self.metrics.log({"step": self.step, **self.validate()})
            interval = cfg.checkpoint_interval
            stopping = last or self.stop_reason is not None
            if self.checkpointer is not None and ((interval and self.step % interval == 0) or stopping):
                self.save()

    # ------------------------------------------------------------------------------------------------ engine
    # The plain/FSDP2 engine; torchglm.train.deepspeed overrides these.
    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def set_gradient_sync(self, sync: bool) -> None:
        """FSDP2: reduce-scatter gradients only after the last micro-batch of the step."""
        if hasattr(self.model, "set_requires_gradient_sync"):
            self.model.set_requires_gradient_sync(sync)

    def update(self, loss_is_finite: bool) -> tuple[float, bool]:
        """Clip and apply the step's gradients unless the loss or the gradient norm is non-finite.

        Returns (gradient norm before clipping, whether the update was applied).
        """
        grad_norm = float("nan")
        if loss_is_finite:
            grad_norm = clip_grad_norm(self.model.parameters(), self.config.clip_grad)
        applied = loss_is_finite and math.isfinite(grad_norm)
        if applied:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, applied

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's weights, gathered on rank 0 (on CPU when distributed); collective."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=self.world.distributed)
        return get_model_state_dict(self.model, options=options)

    # ------------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "skipped_steps": self.skipped_steps,
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "stop_reason": self.stop_reason,
            "recipe_state": self.recipe_state,
            **self.trainer_info,
        }

    def save(self) -> None:
        path = self.checkpointer.save(
            self.step,
            self.state_dict(),
            {"data": self.train_data.state_dict(), "rng": rng_state(), "threads": torch.get_num_threads()},
            model=self.model,
            optimizer=self.optimizer,
        )
        self.metrics.message(f"saved checkpoint {path}")

    def resume(self, path) -> None:
        """Load a checkpoint written by :meth:`save`: weights, optimizer, scheduler, data position, RNG states."""
        state, rank_state = self.checkpointer.load(path, model=self.model, optimizer=self.optimizer)
        self.step = int(state["step"])
        self.tokens_seen = int(state["tokens_seen"])
        self.skipped_steps = int(state["skipped_steps"])
        self.nonfinite_in_a_row = int(state["nonfinite_in_a_row"])
        self.stop_reason = state.get("stop_reason")  # a run stopped early stays stopped
        self.recipe_state = dict(state.get("recipe_state") or {})
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if rank_state is None:
            raise FileNotFoundError(
                f"{path} has no state for rank {self.world.rank}: it was saved with fewer processes; "
                "data positions and RNG states cannot be restored exactly"
            )
        self.train_data.load_state_dict(rank_state["data"])
        set_rng_state(rank_state["rng"])
        threads = rank_state.get("threads")
        if self.world.device.type == "cpu" and threads is not None and threads != torch.get_num_threads():
            # CPU kernels split their sums by thread: another thread count rounds differently.
            logger.warning(
                "%s was saved by a process with %d CPU threads, this one has %d: the resumed losses will match "
                "the uninterrupted run's to rounding, not bit for bit (set OMP_NUM_THREADS=%d for that)",
                path, threads, torch.get_num_threads(), threads,
            )  # fmt: skip
        self.metrics.log({"event": "resume", "step": self.step, "checkpoint": str(path)})
        self.metrics.message(f"resumed from {path} at step {self.step}")

    # ------------------------------------------------------------------------------------------------ helpers
    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.world.device.type, dtype=self.autocast_dtype)

    def _all_reduce(self, values: torch.Tensor) -> torch.Tensor:
        if self.world.distributed:
            dist.all_reduce(values, group=self.world.dp_group)
        return values

    def _reduce_totals(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        """Sum the (sum, count) pairs over data-parallel ranks in one all-reduce; return the means (a part absent
        everywhere is left out) and the processed tokens."""
        names = list(totals)
        packed = torch.cat([totals[n].to(self.world.device) for n in names])  # one all-reduce for all
        packed = self._all_reduce(packed)
        packed = packed.tolist()
        out = {}
        for i, name in enumerate(names):
            total, count = packed[2 * i], packed[2 * i + 1]
            if name in ("tokens", "count"):
                out[name] = total
            elif count > 0 or name == "loss":
                out[name] = total / count if count > 0 else float("nan")
        return out


def _accumulate(totals: dict[str, torch.Tensor], sums: LossSums) -> None:
    """Add a micro-batch's sums to the running (sum, count) pairs: the loss, each part, the tokens."""
    pairs = {"loss": (sums.total, sums.count), "tokens": (sums.tokens, 0), "count": (sums.count, 0)}
    pairs.update({f"loss/{name}": pair for name, pair in sums.parts.items()})
    for name, (total, count) in pairs.items():
        total = torch.as_tensor(total).detach().double().reshape(())
        pair = torch.stack([total, torch.as_tensor(count, device=total.device).double().reshape(())])
        totals[name] = totals[name] + pair if name in totals else pair

"""DeepSpeed ZeRO-2/3 as an alternative engine (``parallel.engine: deepspeed``), for clusters built around it.

The trainer's loop, objective, data, schedule, logging and checkpoint rotation stay the same; DeepSpeed
takes the model and the AdamW optimizer (ZeRO partitions optimizer state and gradients, stage 3 parameters too)
and writes its own checkpoint files inside the atomic ``step-N`` folder. The learning-rate schedule stays
torchglm's (a LambdaLR on the wrapped optimizer), so it is identical across engines.

A step whose loss is non-finite, or whose gradient norm DeepSpeed finds non-finite, is skipped and counted as
with FSDP2 (DeepSpeed zeroes the gradients and does not update).

    torchrun --nproc-per-node 8 -m torchglm.cli pretrain --config configs/pretrain/10b.yaml --parallel.engine deepspeed
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .checkpoint import Checkpointer
from .config import ConfigError, JobConfig
from .optim import build_optimizer, build_scheduler
from .trainer import Trainer

TAG = "deepspeed"


def require_deepspeed():
    """Import deepspeed or fail with the install command."""
    try:
        import deepspeed
    except ImportError as error:
        raise ConfigError(
            "parallel.engine: deepspeed needs the deepspeed package: pip install 'torchglm[deepspeed]'"
        ) from error
    return deepspeed


def deepspeed_config(job: JobConfig, accumulation: int) -> dict[str, Any]:
    """The DeepSpeed JSON config equivalent to the job (micro batch, accumulation, clipping, ZeRO stage, bf16)."""
    bf16 = job.train.precision == "bf16"
    return {
        "train_batch_size": job.train.global_batch_size,
        "train_micro_batch_size_per_gpu": job.train.micro_batch_size,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": job.optim.clip_grad,
        "zero_optimization": {"stage": job.parallel.zero_stage, "contiguous_gradients": True, "overlap_comm": False},
        "bf16": {"enabled": bf16, "check_grad_overflow": True} if bf16 else {"enabled": False},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


class DeepSpeedTrainer(Trainer):
    """:class:`Trainer` whose backward/update go through a DeepSpeed engine (``self.model`` is the engine)."""

    @classmethod
    def create(cls, job, config, world, model, objective, train_data, metrics, **common):
        """The engine and its trainer for ``job`` (``config``: the loop's :class:`TrainerConfig`)."""
        deepspeed = require_deepspeed()
        if world.device.type == "cpu":
            _skip_shared_memory_kernel()
        optimizer = build_optimizer(model, job.optim)
        engine, ds_optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=deepspeed_config(job, common["accumulation"]),
            dist_init_required=False,
        )  # fmt: skip
        # torchglm's schedule on the optimizer DeepSpeed wraps (its param_groups are the ones updated).
        scheduler = build_scheduler(optimizer, job.schedule, job.train.steps)
        checkpointer = Checkpointer(
            f"{job.train.output_dir}/checkpoints",
            job.checkpoint.keep_last,
            world.rank,
            world.distributed,
            save_payload=lambda path: engine.save_checkpoint(str(path), tag=TAG, save_latest=False),
            load_payload=lambda path: _load(engine, path, job.checkpoint.trust_pickled_classes),
        )
        trainer = cls(
            config, world, engine, ds_optimizer, scheduler, objective, train_data, checkpointer, metrics,
            autocast_dtype=None, **common,
        )  # fmt: skip
        trainer.zero_stage = job.parallel.zero_stage
        return trainer

    def forward_backward_step(self, batch, scale):
        sums = super().forward_backward_step(batch, scale)
        if not self.model.is_gradient_accumulation_boundary():
            self.model.step()  # DeepSpeed counts micro-steps; it updates only at the boundary (in update())
        return sums

    def backward(self, loss: torch.Tensor) -> None:
        # Our loss is already the step's mean (scaled by the data-parallel size DeepSpeed averages over).
        self.model.backward(loss, scale_wrt_gas=False)

    def set_gradient_sync(self, sync: bool) -> None:
        pass  # DeepSpeed reduces at its own accumulation boundary

    def update(self, loss_is_finite: bool) -> tuple[float, bool]:
        if not loss_is_finite:
            # Gradients are non-finite too: DeepSpeed's overflow check zeroes them and skips the update.
            self.model.step()
            return float("nan"), False
        self.model.step()
        norm = self.model.get_global_grad_norm()
        norm = float(norm) if norm is not None else float("nan")
        applied = not getattr(self.model.optimizer, "overflow", False) and math.isfinite(norm)
        return norm, applied

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        if self.zero_stage == 3:
            import deepspeed

            params = list(self.model.module.parameters())
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                return {k: v.detach().cpu().clone() for k, v in self.model.module.state_dict().items()}
        return {k: v.detach().cpu() for k, v in self.model.module.state_dict().items()}


def _skip_shared_memory_kernel() -> None:
    """On CPU DeepSpeed JIT-compiles a shared-memory all-reduce kernel on first use (minutes, needs a compiler);
    gloo's all-reduce serves CPU runs, so mark that optional op unavailable before DeepSpeed's comm starts."""
    import deepspeed.ops

    compatible = getattr(deepspeed.ops, "__compatible_ops__", None)
    if isinstance(compatible, dict):
        compatible["deepspeed_shm_comm"] = False


SAFE_DEEPSPEED_GLOBALS = frozenset(
    {
        "deepspeed.runtime.fp16.loss_scaler.LossScaler",
        "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
        "deepspeed.utils.tensor_fragment.fragment_address",
        "deepspeed.runtime.zero.config.ZeroStageEnum",
    }
)
"""Classes DeepSpeed's own checkpoints name besides what ``torch.load(weights_only=True)`` allows: plain state
holders (a loss scale, a fragment's offsets, the ZeRO stage)."""


def check_pickles(folder, trust: bool = False) -> None:
    """Refuse a DeepSpeed checkpoint whose files reference anything but tensors, containers and
    :data:`SAFE_DEEPSPEED_GLOBALS`, before DeepSpeed unpickles them: its ``load_checkpoint`` calls ``torch.load``
    with ``weights_only=False``, so a crafted file would run code on ``--resume``. The globals are read from the
    pickles without unpickling them (``torch.serialization.get_unsafe_globals_in_checkpoint``)."""
    from pathlib import Path

    from .checkpoint import CheckpointError

    files = sorted(Path(folder).rglob("*.pt"))
    if not files:
        raise CheckpointError(f"{folder} holds no DeepSpeed checkpoint files (*.pt)")
    for file in files:
        try:
            names = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(file)))
        except Exception as error:  # a truncated or foreign file: name it rather than let DeepSpeed fail later
            raise CheckpointError(f"{file}: not a readable checkpoint file ({type(error).__name__}: {error})") from None
        unknown = sorted(names - SAFE_DEEPSPEED_GLOBALS)
        if unknown and not trust:
            raise CheckpointError(
                f"{file} names {', '.join(unknown)}: unpickling it could run code, so it is not loaded (set "
                "checkpoint.trust_pickled_classes: true only for a checkpoint you made)"
            )


def _load(engine, path, trust: bool = False) -> None:
    from pathlib import Path

    check_pickles(Path(path) / TAG, trust)
    load_path, _ = engine.load_checkpoint(
        str(path), tag=TAG, load_optimizer_states=True, load_lr_scheduler_states=False
    )
    if load_path is None:
        raise FileNotFoundError(f"{path} holds no DeepSpeed checkpoint (expected {path}/{TAG})")

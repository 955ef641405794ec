"""Building a training run from a job config: the model (plain or parallelized), its trainer, the export.

Shared by ``torchglm pretrain`` and the task recipes (finetuning, evaluation), which differ only in their data,
objective and metrics::

    world = init_distributed(job.train.device, job.parallel.tp_size, job.parallel.backend)
    model = build_model(job, model_config, world)                    # same weights on 1 or N processes
    trainer = build_trainer(job, world, model, objective, batches, metrics, accumulation=2, flops=...)
    trainer.train()
    export_model(trainer, model_config, world, out / "final")        # a from_pretrained folder

Tensor parallelism follows the model's own plan (``GLMPreTrainedModel.tensor_parallel_plan``, data in
``torchglm.model``): the full weights are regrouped by :func:`~torchglm.model.tensor_parallel_layout` before
each rank takes its shard, so every rank holds and runs its own attention heads; the export regroups them back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchglm.config import GLMConfig
from torchglm.model import FlopCount, GLMForConditionalGeneration, tensor_parallel_layout
from torchglm.ops.peak import device_peak_tflops

from .checkpoint import Checkpointer
from .config import JobConfig
from .logging import MetricLogger
from .optim import build_optimizer, build_scheduler
from .parallel import World, load_full_state, parallelize, tensor_parallel_styles
from .trainer import Trainer, TrainerConfig


def trainer_config(job: JobConfig) -> TrainerConfig:
    """The loop's settings from the job's sections."""
    return TrainerConfig(
        steps=job.train.steps,
        clip_grad=job.optim.clip_grad,
        max_nonfinite_steps=job.train.max_nonfinite_steps,
        log_interval=job.logging.interval,
        eval_interval=job.train.eval_interval,
        checkpoint_interval=job.checkpoint.interval,
        config_names={"max_nonfinite_steps": "train.max_nonfinite_steps", "clip_grad": "optim.clip_grad"},
    )


def build_model(
    job: JobConfig, config: GLMConfig, world: World, model_class: type[nn.Module] = GLMForConditionalGeneration
) -> nn.Module:
    """The model on its device, parallelized as the job says; identical weights whatever the number of processes.

    The weights are a random initialisation seeded with ``train.seed``, or ``model.init_from`` (a
    ``from_pretrained`` folder). Under ``torchrun`` (FSDP2 / tensor parallelism) rank 0 builds them and every
    rank receives its shards; DeepSpeed partitions the plain model itself.
    """

    def full_model() -> nn.Module:
        torch.manual_seed(job.train.seed)
        if job.model.init_from:
            return model_class.from_pretrained(job.model.init_from, config=config)
        return model_class(config)

    if not world.distributed or job.parallel.engine == "deepspeed":
        model = full_model().to(world.device)
        parallelize(model, None, job.parallel, job.train.precision)  # activation checkpointing only
        return model
    tp = job.parallel.tp_size
    full_state = None
    if world.is_main:
        full_state = full_model().state_dict()
        if tp > 1:
            full_state = tensor_parallel_layout(full_state, config.num_attention_heads, tp)
    with torch.device("meta"):
        model = model_class(config)
    tp_plan = tensor_parallel_styles(model.tensor_parallel_plan) if tp > 1 else None
    parallelize(model, world.mesh, job.parallel, job.train.precision, tp_plan=tp_plan)
    load_full_state(model, full_state, world)
    return model


def build_trainer(
    job: JobConfig,
    world: World,
    model: nn.Module,
    objective,
    train_data,
    metrics: MetricLogger,
    *,
    accumulation: int,
    eval_data=None,
    eval_metrics=None,
    flops: FlopCount | None = None,
    trainer_info: dict[str, Any] | None = None,
) -> Trainer:
    """The trainer of the job's engine: AdamW + schedule + DCP checkpoints (FSDP2 / one process), or DeepSpeed.

    bf16 is FSDP2's ``MixedPrecisionPolicy`` under torchrun, DeepSpeed's bf16 mode, else ``torch.autocast`` (one
    process). The MFU peak is ``logging.peak_tflops``, a known GPU's, or a matmul measured now.
    """
    bf16 = job.train.precision == "bf16"
    autocast = torch.bfloat16 if bf16 and job.parallel.engine == "fsdp" and not world.distributed else None
    peak = device_peak_tflops(world.device, torch.bfloat16 if bf16 else torch.float32, job.logging.peak_tflops)
    common = dict(
        accumulation=accumulation,
        eval_data=eval_data,
        eval_metrics=eval_metrics,
        flops=flops,
        peak_tflops=peak,
        trainer_info=trainer_info,
    )
    folder = Path(job.train.output_dir) / "checkpoints"
    if job.parallel.engine == "deepspeed":
        from .deepspeed import DeepSpeedTrainer

        return DeepSpeedTrainer.create(job, trainer_config(job), world, model, objective, train_data, metrics, **common)
    optimizer = build_optimizer(model, job.optim)
    scheduler = build_scheduler(optimizer, job.schedule, job.train.steps)
    checkpointer = Checkpointer(folder, job.checkpoint.keep_last, world.rank, world.distributed)
    return Trainer(
        trainer_config(job), world, model, optimizer, scheduler, objective, train_data, checkpointer, metrics,
        autocast_dtype=autocast, **common,
    )  # fmt: skip


def export_model(
    trainer: Trainer,
    config: GLMConfig,
    world: World,
    folder: Path,
    tp_size: int = 1,
    model_class: type[nn.Module] = GLMForConditionalGeneration,
) -> None:
    """``save_pretrained`` the trained weights (gathered on rank 0, back in the released layout): a folder that
    ``from_pretrained`` loads. Collective: every rank calls it."""
    state = trainer.full_state_dict()
    if world.is_main:
        if tp_size > 1:
            state = tensor_parallel_layout(state, config.num_attention_heads, tp_size, inverse=True)
        with torch.device("meta"):
            plain = model_class(config)
        plain.load_state_dict({k: v.detach().cpu() for k, v in state.items()}, assign=True)
        plain.save_pretrained(folder)
    world.barrier()

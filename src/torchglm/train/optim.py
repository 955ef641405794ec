"""AdamW without weight decay on normalisation parameters and biases, and the warmup + decay learning-rate schedule.

Both follow the original GLM pretraining: decoupled weight decay on every weight matrix and embedding table, none
on LayerNorm weights/biases or any bias; the learning rate rises linearly from 0 over ``warmup_steps`` and then
decays (cosine or linear) to ``min_lr_ratio`` of the peak at ``decay_steps``, constant after.

Example::

    optimizer = build_optimizer(model, job.optim)
    scheduler = build_scheduler(optimizer, job.schedule, total_steps=job.train.steps)
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from .config import OptimConfig, ScheduleConfig

NORM_TYPES = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.BatchNorm1d)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: ``decay`` (weights, embeddings) and ``no_decay`` (normalisation parameters, biases).

    Each group carries the parameter names (``names``) so that tests and logs can say what went where;
    a parameter shared by several modules (tied embeddings) is listed once.
    """
    no_decay_ids = set()
    for module in model.modules():
        if isinstance(module, NORM_TYPES):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay, decay_names, no_decay_names = [], [], [], []
    for name, param in model.named_parameters():  # named_parameters() yields a tied parameter once
        if not param.requires_grad:
            continue
        if id(param) in no_decay_ids or name.endswith("bias"):
            no_decay.append(param)
            no_decay_names.append(name)
        else:
            decay.append(param)
            decay_names.append(name)
    return [
        {"params": decay, "weight_decay": weight_decay, "names": decay_names},
        {"params": no_decay, "weight_decay": 0.0, "names": no_decay_names},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; the fused kernel where the parameters allow it (CPU and CUDA tensors)."""
    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(model, cfg.weight_decay)]
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(_plain_device(p) for p in params)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None)


def _plain_device(param: torch.Tensor) -> bool:
    # The fused AdamW takes plain CPU/CUDA tensors; FSDP2/TP DTensors go through the foreach path.
    return type(param) is nn.Parameter and param.device.type in ("cpu", "cuda")


def lr_factor(step: int, warmup_steps: int, decay_steps: int, decay_style: str, min_lr_ratio: float) -> float:
    """Learning rate of optimizer step ``step`` (1-based) as a fraction of the peak.

    Warmup: ``step / warmup_steps`` up to step ``warmup_steps``. Then ``progress = (step - warmup) /
    (decay_steps - warmup)`` clipped to [0, 1]; cosine: ``r + (1 - r) * (1 + cos(pi * progress)) / 2``,
    linear: ``1 - (1 - r) * progress``, constant: 1, with ``r = min_lr_ratio``.
    """
    if warmup_steps > 0 and step <= warmup_steps:
        return step / warmup_steps
    if decay_style == "constant":
        return 1.0
    span = decay_steps - warmup_steps
    progress = 1.0 if span <= 0 else min(1.0, max(0.0, (step - warmup_steps) / span))
    if decay_style == "cosine":
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if decay_style == "linear":
        return 1.0 - (1.0 - min_lr_ratio) * progress
    raise ValueError(f"unknown decay style {decay_style!r}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR whose k-th ``step()`` sets the rate of optimizer step k + 1 (so the first update is not lr 0)."""
    factor = functools.partial(
        lr_factor,
        warmup_steps=cfg.warmup_steps if cfg.warmup_ratio is None else round(cfg.warmup_ratio * total_steps),
        decay_steps=cfg.decay_steps if cfg.decay_steps is not None else total_steps,
        decay_style=cfg.decay_style,
        min_lr_ratio=cfg.min_lr_ratio,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda done: factor(done + 1))

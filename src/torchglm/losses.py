"""Training objectives: what the model is asked to predict, returned as sums that combine exactly.

An objective takes the model and a batch (:class:`~torchglm.layout.GLMBatch`) and returns :class:`LossSums`:
the sum of its loss terms and their number, so that micro-batches and data-parallel ranks combine into the mean
over the global batch whatever their sizes. The trainer (``torchglm.train.Trainer``) needs nothing else to
know of GLM. A task's own objective lives with its task (``tasks.superglue.ClozeLoss``,
``tasks.seq2seq.LabelSmoothedLoss``) and follows the same protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from torchglm.layout import GLMBatch, model_inputs


@dataclass
class LossSums:
    """What an objective returns for one micro-batch: sums, so that batches and ranks combine exactly."""

    total: torch.Tensor
    """Sum of the loss terms (differentiable)."""
    count: torch.Tensor | int
    """Number of loss terms in the sum (here: predicted tokens)."""
    tokens: int
    """Tokens the model processed (for throughput), padding included."""
    parts: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    """Named (sum, count) pairs of sub-losses for logging (e.g. per objective); same names on every rank."""


class Objective(Protocol):
    def count(self, batch: GLMBatch) -> int:
        """Loss terms in a batch (known before the forward pass: the step's mean divides by their global sum)."""

    def __call__(self, model: nn.Module, batch: GLMBatch) -> LossSums: ...


class BlankInfillingLoss:
    """Token-level cross-entropy at the labelled positions (part-B targets), summed per blank mode.

    The output layer runs at the labelled positions only (``predict_at``): 15-50% of a blank-infilling sample's
    positions have a target, and projecting every position onto the vocabulary costs ~17% of a glm-base step.
    ``part_names`` names the ``blank_mode`` codes of the batch for the per-mode losses in the logs.
    """

    def __init__(self, part_names: tuple[str, ...] = ()):
        self.part_names = tuple(part_names)

    def count(self, batch: GLMBatch) -> int:
        return int((batch["labels"] != -100).sum())

    def __call__(self, model: nn.Module, batch: GLMBatch) -> LossSums:
        labels = batch["labels"]
        targets = labels != -100  # [B, L]
        logits = model(**model_inputs(batch), predict_at=targets, use_cache=False).logits  # [N, V]
        losses = F.cross_entropy(logits.float(), labels[targets], reduction="none")  # [N]
        rows = targets.nonzero()[:, 0]
        per_sample = torch.zeros(labels.shape[0], device=losses.device).index_add(0, rows, losses)  # [B]
        counts = targets.sum(1)
        parts = {}
        if self.part_names and "blank_mode" in batch:
            mode = batch["blank_mode"]
            size = len(self.part_names)
            sums = torch.zeros(size, device=losses.device).index_add(0, mode, per_sample.detach())
            terms = torch.zeros(size, device=losses.device).index_add(0, mode, counts.float())
            parts = {name: (sums[i], terms[i]) for i, name in enumerate(self.part_names)}
        return LossSums(total=per_sample.sum(), count=counts.sum(), tokens=labels.numel(), parts=parts)

"""Batches in the one format every GLM task shares, as tensors.

A GLM batch is a dict with ``input_ids [B, L]``, ``position_ids [B, 2, L]`` (text position, block position),
``sep [B]`` (keys before ``sep`` are visible to every query, later ones causally) or ``attention_mask
[B, 1, L, L]`` (0/1), and ``labels [B, L]`` aligned with the inputs (the label at i is the token predicted at
i; -100 = no loss). Extra keys (``task``, ...) ride along for logging and are popped by the trainer.
Padding is the pad id in ``input_ids``, -100 in ``labels``, 0 in positions and masks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

SEQUENCE_KEYS = ("input_ids", "labels", "decoder_input_ids")
"""Keys padded along their last dimension (positions are padded along theirs too, masks along both)."""


def _fill_value(key: str, pad_id: int) -> int:
    if key == "labels":
        return -100
    if key in ("input_ids", "decoder_input_ids"):
        return pad_id
    return 0


def to_tensors(batch: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """numpy arrays -> tensors without copying (``torch.from_numpy``); ints become int64."""
    out = {}
    for key, value in batch.items():
        array = np.ascontiguousarray(value)
        if array.dtype.kind in "iub" and array.dtype != np.bool_:
            array = array.astype(np.int64, copy=False)
        out[key] = torch.from_numpy(array)
    return out


def pad_to_multiple(batch: dict[str, np.ndarray], multiple: int, pad_id: int) -> dict[str, np.ndarray]:
    """Pad the sequence dimension of a built batch to a multiple of ``multiple`` (fewer distinct shapes for
    compiled models and kernels)."""
    out = dict(batch)
    for key, value in batch.items():
        if key in ("sep", "task") or value.ndim < 2:
            continue
        length = value.shape[-1]
        target = -(-length // multiple) * multiple
        if target == length:
            continue
        widths = [(0, 0)] * value.ndim
        widths[-1] = (0, target - length)
        if key == "attention_mask":
            widths[-2] = (0, target - length)
        out[key] = np.pad(value, widths, constant_values=_fill_value(key, pad_id))
    return out


def collate_samples(
    samples: Sequence[Mapping], pad_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Per-sample dicts (``input_ids [L]``, ``position_ids [2, L]``, ``labels [L]``, ``sep`` scalar or an
    ``attention_mask [L, L]``, scalars such as ``task``) -> one padded batch of tensors.

    Example::

        batch = collate_samples([{"input_ids": [101, 7, 0], "position_ids": [[0, 1, 2], [0, 0, 0]],
                                  "sep": 3, "labels": [-100, -100, -100]}], pad_id=0)
    """
    if not samples:
        raise ValueError("no samples to collate")
    lengths = [len(s["input_ids"]) for s in samples]
    width = max(lengths)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    out: dict[str, np.ndarray] = {}
    for key in samples[0]:
        values = [np.asarray(s[key]) for s in samples]
        if values[0].ndim == 0:
            out[key] = np.stack(values).astype(np.int64 if values[0].dtype.kind in "iub" else values[0].dtype)
            continue
        fill = _fill_value(key, pad_id)
        if key == "attention_mask":
            stacked = np.zeros((len(values), 1, width, width), dtype=values[0].dtype)
            for b, v in enumerate(values):
                stacked[b, 0, : v.shape[-2], : v.shape[-1]] = v
        else:
            shape = (len(values),) + values[0].shape[:-1] + (width,)
            stacked = np.full(shape, fill, dtype=np.int64 if values[0].dtype.kind in "iub" else values[0].dtype)
            for b, v in enumerate(values):  # one copy per sample, not per token
                stacked[b, ..., : v.shape[-1]] = v
        out[key] = stacked
    return to_tensors(out)


class GLMCollator:
    """``collate_fn`` for a DataLoader over per-sample dicts (finetuning and evaluation datasets)."""

    def __init__(self, pad_id: int, pad_to_multiple_of: int | None = None):
        self.pad_id = pad_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, samples: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        return collate_samples(samples, self.pad_id, self.pad_to_multiple_of)

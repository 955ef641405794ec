"""Built numpy batches as tensors, and padding to a multiple of a length.

A pretraining batch is a :class:`~torchglm.layout.GLMBatch`: ``input_ids [B, L]``, ``position_ids [B, 2, L]``,
``sep [B]``, ``labels [B, L]`` and ``blank_mode [B]``. Padding is the pad id in ``input_ids``, -100 in
``labels``, 0 in positions (the one rule of :mod:`torchglm.layout`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch


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
        if key in ("sep", "blank_mode") or value.ndim < 2:
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

"""Scaled dot-product attention: SDPA, or the CPU paths of :mod:`.half` and :mod:`.dropout` where SDPA is slow."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import half
from .dropout import DropoutAttention


def attention(query, key, value, mask, is_causal: bool, dropout: float) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d) + mask) v`` over ``[B, heads, L, D]`` tensors; ``mask`` boolean or None.

    SDPA's CPU kernels use the slow half-precision GEMM that :func:`~torchglm.ops.half.linear` avoids, so the
    same fp32 path applies. Training on CPU with attention dropout takes :class:`DropoutAttention` (SDPA's CPU
    kernel has no dropout and falls back to a path twice as slow).
    """
    if dropout > 0 and query.device.type == "cpu":
        if is_causal:
            length = query.shape[-2]
            mask = torch.ones(length, length, dtype=torch.bool, device=query.device).tril_()[None, None]
        return DropoutAttention.apply(query, key, value, mask, dropout)
    dtype = half.half_dtype_without_gemm(query)
    if dtype is None:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, is_causal=is_causal)
    with torch.autocast("cpu", enabled=False):
        query, key, value = (t.to(dtype).float() for t in (query, key, value))
        context = F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, dropout_p=dropout, is_causal=is_causal
        )
        return context.to(dtype)

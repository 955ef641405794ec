"""Half-precision matrix products on CPUs without half-precision GEMM.

Without AVX512-BF16/FP16 or AMX, torch multiplies bf16/fp16 matrices with a reference kernel 100-1000x slower
than its fp32 GEMM. The product of two bf16 (or fp16) numbers is exact in fp32, so rounding the operands to half
precision, multiplying in fp32 and rounding the result once gives what a hardware GEMM with fp32 accumulation
gives, up to the order of the sums. Under autocast the operands are rounded the way autocast would round them.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


@functools.cache
def cpu_lacks_gemm(dtype: torch.dtype) -> bool:
    """Whether this CPU has no hardware path for ``dtype`` matrix products (no AVX512-BF16/FP16 or AMX)."""
    try:
        caps = torch.cpu.get_capabilities()
    except AttributeError:  # torch without capability queries: trust its own kernels
        return False
    if dtype == torch.bfloat16:
        return not (caps.get("avx512_bf16") or caps.get("amx_bf16"))
    return not (caps.get("avx512_fp16") or caps.get("amx_fp16"))


def half_dtype_without_gemm(x: torch.Tensor) -> torch.dtype | None:
    """The half precision a product of ``x`` would run in (its dtype, or autocast's) if this CPU lacks GEMM for
    it, else None. Looked up through this module so that tests can pretend a CPU lacks it."""
    if x.device.type != "cpu":
        return None
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    return dtype if dtype in (torch.bfloat16, torch.float16) and cpu_lacks_gemm(dtype) else None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, but half precision on a CPU that lacks half-precision GEMM goes through an fp32 GEMM."""
    dtype = half_dtype_without_gemm(x)
    if dtype is None:
        return F.linear(x, weight, bias)
    with torch.autocast("cpu", enabled=False):
        bias = None if bias is None else bias.to(dtype).float()
        return F.linear(x.to(dtype).float(), weight.to(dtype).float(), bias).to(dtype)


class Linear(nn.Linear):
    """``nn.Linear`` whose product takes :func:`linear`'s fast path for half precision on CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)

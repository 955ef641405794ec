"""The matmul peak of a device, the denominator of MFU: a known GPU's, or the fastest product measured here."""

from __future__ import annotations

import time

import torch

from .half import linear

KNOWN_PEAK_TFLOPS = {  # dense bf16 tensor-core peaks per GPU (fp32 runs use TF32 or less; measure those)
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10": 125.0,
}


def measure_matmul_peak(dtype: torch.dtype, device: torch.device, size: int | None = None, seconds: float = 1.0):
    """Measured TFLOP/s of the fastest way to multiply two large ``dtype`` squares here: the peak for MFU.

    The candidates are ``torch.matmul`` with the second operand row-major or transposed (as a Linear weight is;
    on some CPUs one layout takes a much slower kernel) and torchglm's own product, ``torchglm.ops.linear``
    (on a CPU without bf16/fp16 GEMM it multiplies half-precision operands through fp32 GEMM, 100x faster than
    torch's kernel there). The fastest counts, so an MFU is never flattered by a kernel the model avoids.
    """
    candidates = (
        lambda a, b: torch.matmul(a, b),
        lambda a, b: torch.matmul(a, b.t()),
        lambda a, b: linear(a, b),  # a @ b.T
    )
    size = size or (8192 if device.type == "cuda" else 2048)
    probe = size // 2  # candidates are compared at half size: a slow one can be 100x slower
    a = torch.randn(probe, probe, device=device).to(dtype)
    fastest = max(candidates, key=lambda product: _product_rate(product, a, a.clone(), device, seconds / 4))
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    return _product_rate(fastest, a, b, device, seconds)


def _product_rate(product, a: torch.Tensor, b: torch.Tensor, device: torch.device, seconds: float) -> float:
    product(a, b)  # warm-up (kernel selection, packing)
    _sync(device)
    runs, start = 0, time.perf_counter()
    while True:
        product(a, b)
        runs += 1
        _sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    return 2.0 * a.shape[0] * a.shape[1] * b.shape[1] * runs / elapsed / 1e12


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_peak_tflops(device: torch.device, dtype: torch.dtype, configured: float | None) -> float:
    """The configured peak, else a known GPU's bf16 peak, else a measured matmul peak."""
    if configured:
        return configured
    if device.type == "cuda" and dtype == torch.bfloat16:
        name = torch.cuda.get_device_name(device)
        for key, value in KNOWN_PEAK_TFLOPS.items():
            if key in name:
                return value
    return measure_matmul_peak(dtype, device)

"""What machine a benchmark ran on, and what it can do fast: shared by the scripts in ``benchmarks/``.

A benchmark figure means little without the machine under it, and a comparison means nothing when one side
runs a kernel the other avoids. On a CPU without bf16 (or fp16) GEMM, PyTorch multiplies those dtypes with a
reference kernel 100-1000x slower than its fp32 GEMM; torchglm routes such products through fp32 GEMM
(``torchglm.ops.linear``), a peer such as transformers' GPT-2 does not, so a half-precision ratio against it
would measure torch's reference kernel, not the peer.

- ``describe()``: one line (two with a GPU) to print at a benchmark's start: CPU model, the SIMD/AMX features
  that decide matmul speed, whether bf16 and fp16 have a hardware GEMM, torch version, ``torch.get_num_threads()``.
- ``has_half_gemm(dtype, device)``: whether a ``dtype`` matrix product runs on a real GEMM here.
- ``read_bandwidth_gbs(seconds)``: measured memory read bandwidth of this process, GB/s.

The scripts run as ``python benchmarks/x.py``, which puts ``benchmarks/`` on ``sys.path``:
``from _machine import describe, has_half_gemm``.
"""

from __future__ import annotations

import functools
import platform
import subprocess
import time

import torch

__all__ = ["cpu_flags", "cpu_name", "describe", "has_half_gemm", "read_bandwidth_gbs"]

# torch.cpu.get_capabilities() key -> Linux /proc/cpuinfo flag, for the features that decide matmul speed
_FEATURES = {
    "avx2": "avx2",
    "avx512_f": "avx512f",
    "avx512_bf16": "avx512_bf16",
    "avx512_fp16": "avx512_fp16",
    "amx_tile": "amx_tile",
    "amx_bf16": "amx_bf16",
    "amx_fp16": "amx_fp16",
}
# the features that give torch (oneDNN) a hardware GEMM for each half-precision dtype on x86
_GEMM_FEATURES = {torch.bfloat16: ("avx512_bf16", "amx_bf16"), torch.float16: ("avx512_fp16", "amx_fp16")}


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none), else of ``lscpu``."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if not line.strip():
                    if fields:
                        break  # first processor only
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    if not fields:
        try:
            out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        for line in out.splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def cpu_name() -> str:
    """The CPU's model name (a hypervisor may shorten it, e.g. "AMD EPYC")."""
    info = _cpuinfo()
    name = info.get("model name")
    if not name and hasattr(torch.cpu, "get_capabilities"):
        name = torch.cpu.get_capabilities().get("cpu_name")
    return name or platform.processor() or platform.machine() or "unknown CPU"


@functools.cache
def cpu_flags() -> tuple[dict[str, bool], str]:
    """The features in ``_FEATURES`` (torch's names) -> present, and where that came from."""
    caps = getattr(torch.cpu, "get_capabilities", None)
    if caps is not None:
        found = caps()
        return {name: bool(found.get(name)) for name in _FEATURES}, "torch.cpu.get_capabilities"
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("features") or "").split())
    return {name: flag in flags for name, flag in _FEATURES.items()}, "cpu flags"


def has_half_gemm(dtype: torch.dtype, device: torch.device | str = "cpu") -> bool:
    """Whether a ``dtype`` matrix product runs on a hardware GEMM on ``device``.

    True for every dtype but bf16/fp16, and for every non-CPU device. On a CPU, bf16 needs AVX512-BF16 or
    AMX-BF16 and fp16 needs AVX512-FP16 or AMX-FP16 (judged from ``torch.cpu.get_capabilities()``, or from the
    CPU's flags where torch has no such query); without them torch falls back to a slow reference kernel.
    Only x86 features are known: on other CPUs half precision reports False, so a peer is run conservatively.
    """
    if torch.device(device).type != "cpu" or dtype not in _GEMM_FEATURES:
        return True
    flags, _ = cpu_flags()
    return any(flags[name] for name in _GEMM_FEATURES[dtype])


def describe() -> str:
    """What this process runs on, to print at a benchmark's start (call after ``torch.set_num_threads``)."""
    flags, source = cpu_flags()
    names = {"avx512_f": "avx512"}
    have = " ".join(names.get(name, name) for name, on in flags.items() if on) or "none"
    lack = " ".join(names.get(name, name) for name, on in flags.items() if not on) or "none"
    gemm = ", ".join(
        f"{label} GEMM {'yes' if has_half_gemm(dtype) else 'NO (torch reference kernel)'}"
        for label, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16))
    )
    text = (
        f"machine: {cpu_name()} ({platform.machine()}), has {have}; lacks {lack} [{source}]; {gemm}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        text += f"\ngpu: {torch.cuda.get_device_name()} (CUDA {torch.version.cuda}), {count} device(s)"
    return text


def read_bandwidth_gbs(seconds: float = 1.0, size_mb: int = 512) -> float:
    """Measured memory read bandwidth of this process, in GB/s (1e9 bytes/s).

    ``torch.sum`` over a float32 tensor of ``size_mb`` MiB (far larger than any cache, so every byte comes from
    DRAM) reads each byte once and writes nothing; bytes read / time of the fastest of several repeats (at
    least 3, then as many as fit in ``seconds``) is the figure. It uses the threads torch has now
    (``torch.get_num_threads()``), so it is how fast *this process* can stream memory, the same budget that
    batch-1 decoding has: its bandwidth bound is (weight bytes read per token) / this figure. On a shared
    machine other jobs take their share; the best repeat is the one least disturbed by them.
    """
    x = torch.ones(size_mb * 2**20 // 4, dtype=torch.float32)  # written once, so every page is resident
    x.sum()  # warm-up
    best, runs, start = float("inf"), 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - start < seconds:
        tick = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - tick)
        runs += 1
    return x.numel() * x.element_size() / best / 1e9


if __name__ == "__main__":
    print(describe())
    print(f"memory read bandwidth: {read_bandwidth_gbs():.1f} GB/s")

"""Training logs: a progress bar, JSON lines (``log.jsonl``) and TensorBoard, written by rank 0; MFU helpers.

Every record is one JSON object per line: training records carry ``step``, ``loss`` (and ``loss/<objective>``),
``lr``, ``grad_norm``, ``tokens_per_s``, ``mfu``, ``skipped_steps``...; evaluation records carry ``eval/loss``;
events (``resume``, ``skipped_step``) carry ``event``. On resume, records after the checkpoint's step are dropped
(from ``log.jsonl`` and, through ``purge_step``, from TensorBoard) so that the log reads as one run.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("torchglm.train")

KNOWN_PEAK_TFLOPS = {  # dense bf16 tensor-core peaks per GPU (fp32 runs use TF32 or less; measure those)
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10": 125.0,
}


def setup_console_logging(rank: int) -> None:
    """INFO messages of ``torchglm.*`` to stderr on rank 0, warnings and errors on every rank."""
    root = logging.getLogger("torchglm")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"[%(asctime)s rank{rank}] %(levelname)s %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)


def transformer_flops_per_token(matmul_params: int, num_layers: int, hidden_size: int, seq_length: int) -> float:
    """Model FLOPs of one training token (forward + backward): ``6 N + 12 L H S``.

    ``N`` counts the weights that multiply activations (every Linear and the output projection, not the
    embedding lookups); ``12 L H S`` is the attention score and value products (full S x S, as computed).
    """
    return 6.0 * matmul_params + 12.0 * num_layers * hidden_size * seq_length


def measure_matmul_peak(dtype: torch.dtype, device: torch.device, size: int | None = None, seconds: float = 1.0):
    """Measured TFLOP/s of the fastest way to multiply two large ``dtype`` squares here: the peak for MFU.

    The candidates are ``torch.matmul`` with the second operand row-major or transposed (as a Linear weight is;
    on some CPUs one layout takes a much slower kernel) and torchglm's own product, ``torchglm.model.linear``
    (on a CPU without bf16/fp16 GEMM it multiplies half-precision operands through fp32 GEMM, 100x faster than
    torch's kernel there). The fastest counts, so an MFU is never flattered by a kernel the model avoids.
    """
    from torchglm.model import linear

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


class MetricLogger:
    """Rank 0 writes; other ranks only keep the progress counters. Use as a context manager."""

    def __init__(
        self,
        folder: str | Path,
        total_steps: int,
        is_main: bool,
        progress_bar: bool = True,
        tensorboard: bool = True,
        resume_step: int = 0,
    ):
        self.folder = Path(folder)
        self.is_main = is_main
        self.bar = None
        self.writer = None
        self.jsonl = None
        if not is_main:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "log.jsonl"
        if resume_step and path.is_file():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines() if _step_of(line) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        elif path.exists() and not resume_step:
            path.unlink()
        self.jsonl = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.warning("tensorboard is not installed: no TensorBoard files (pip install tensorboard)")
            else:
                self.writer = SummaryWriter(self.folder / "tensorboard", purge_step=resume_step + 1)
        if progress_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=resume_step, unit="step", dynamic_ncols=True, file=sys.stderr)

    def log(self, record: dict[str, Any]) -> None:
        """Write one record (JSON line + TensorBoard scalars); ``step`` is required."""
        if not self.is_main:
            return
        record = {"time": round(time.time(), 3), **record}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for key, value in record.items():
                if key not in ("step", "time") and isinstance(value, int | float) and not isinstance(value, bool):
                    self.writer.add_scalar(key if "/" in key else f"train/{key}", value, record["step"])
        if "eval/loss" in record:
            parts = [f"{k[10:]} {v:.4f}" for k, v in record.items() if k.startswith("eval/loss/")]
            self.message(f"step {record['step']}: eval loss {record['eval/loss']:.4f} ({', '.join(parts)})")
        elif self.bar is None and "loss" in record and "event" not in record:
            self.message(summary(record))  # no bar (e.g. output to a file): one line per logged step

    def advance(self, step: int, loss: float, lr: float) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        elif self.is_main:
            logger.info(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.jsonl is not None:
            self.jsonl.close()

    def __enter__(self) -> MetricLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def summary(record: dict[str, Any]) -> str:
    """One terminal line for a training record."""
    text = f"step {record['step']}: loss {record['loss']:.4f} lr {record['lr']:.2e} grad {record['grad_norm']:.3f}"
    if "tokens_per_s" in record:
        text += f" | {record['tokens_per_s']:.0f} tokens/s"
    if "mfu" in record:
        text += f" mfu {record['mfu']:.1%}"
    return text


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 0


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl``."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]

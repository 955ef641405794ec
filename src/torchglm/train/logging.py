"""Training logs: a progress bar, JSON lines (``log.jsonl``) and TensorBoard, written by rank 0.

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger("torchglm.train")


def setup_console_logging(rank: int) -> None:
    """INFO messages of ``torchglm.*`` to stderr on rank 0, warnings and errors on every rank."""
    root = logging.getLogger("torchglm")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"[%(asctime)s rank{rank}] %(levelname)s %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)


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


def plot_log(
    log_path: str | Path, png_path: str | Path, title: str | None = None, metrics: Sequence[str] = ()
) -> Path | None:
    """A PNG of a run's ``log.jsonl``: training loss (and per blank mode) and evaluation loss against step, the
    learning rate beside them, and the evaluation ``metrics`` (e.g. ``eval/rouge1``) in a third panel where the
    log has them. Returns the path, or None without matplotlib (``pip install torchglm[train]``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed: no plot of %s", log_path)
        return None
    records = [json.loads(line) for line in Path(log_path).read_text(encoding="utf-8").splitlines() if line.strip()]
    train = [r for r in records if "loss" in r and "step" in r]
    evals = [r for r in records if "eval/loss" in r]
    scored = [(name, [(r["step"], r[name]) for r in records if name in r]) for name in metrics]
    scored = [(name, points) for name, points in scored if points]
    widths = [3, 1] + ([2] if scored else [])
    size = (11 + 4 * bool(scored), 4)
    figure, axes = plt.subplots(1, len(widths), figsize=size, gridspec_kw={"width_ratios": widths})
    losses, rates = axes[0], axes[1]
    if scored:
        for name, points in scored:
            axes[2].plot(*zip(*points, strict=True), "o-", label=name)
        axes[2].set(xlabel="step", title="evaluation")
        axes[2].grid(alpha=0.3)
        axes[2].legend()
    losses.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss", color="tab:blue")
    for key, color in (("loss/token", "tab:cyan"), ("loss/sentence", "tab:olive"), ("loss/document", "tab:purple")):
        points = [(r["step"], r[key]) for r in train if key in r]
        if points:
            losses.plot(*zip(*points, strict=True), label=key, color=color, alpha=0.45, linewidth=0.8)
    if evals:
        losses.plot([r["step"] for r in evals], [r["eval/loss"] for r in evals], "o-", label="eval loss",
                    color="tab:red")  # fmt: skip
    losses.set(xlabel="step", ylabel="cross-entropy (nats per target token)", title=title or Path(log_path).parent.name)
    losses.grid(alpha=0.3)
    losses.legend()
    rates.plot([r["step"] for r in train], [r.get("lr", float("nan")) for r in train], color="tab:green")
    rates.set(xlabel="step", ylabel="learning rate", title="schedule")
    rates.grid(alpha=0.3)
    figure.tight_layout()
    png_path = Path(png_path)
    figure.savefig(png_path, dpi=110)
    plt.close(figure)
    return png_path

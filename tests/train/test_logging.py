"""The training plot: a PNG drawn from a run's log.jsonl."""

from __future__ import annotations

import json

import pytest

from torchglm.train.logging import plot_log


def test_plot_log_draws_the_losses_of_a_run(tmp_path):
    pytest.importorskip("matplotlib")
    records = [{"step": s, "loss": 9 - s / 10, "loss/token": 9 - s / 9, "lr": 1e-3} for s in range(1, 40)]
    records += [{"step": s, "eval/loss": 9.5 - s / 10} for s in (0, 20, 39)] + [{"event": "resume", "step": 20}]
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    png = plot_log(log, tmp_path / "training.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1210, 440)  # 11 x 4 inches at 110 dpi

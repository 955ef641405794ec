"""Fixtures for the pretraining tests: small token shards of a learnable synthetic language, tiny job configs,
and a runner for ``torchglm pretrain`` in a subprocess (or under ``torchrun``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from torchglm.data import SpecialIds, write_token_shards

VOCAB = 256
IDS = SpecialIds(pad=0, eos=0, cls=1, mask=2, sop=3, eop=4, gmask=5, smask=6)
CHILD = Path(__file__).with_name("pretrain_child.py")


def write_shards(folder: Path, documents: int, seed: int) -> Path:
    """Documents of arithmetic progressions mod 246 (a language a tiny model learns fast); 10 ends sentences."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(documents):
        start, step, length = rng.integers(11, 256), rng.integers(1, 5), rng.integers(20, 160)
        doc = (start + np.arange(length) * step) % 245 + 11
        doc[rng.random(length) < 0.08] = 10
        docs.append(doc.tolist())
    write_token_shards(folder, docs, vocab_size=VOCAB, ids=IDS, sentence_end_ids=[10])
    return folder


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shards")
    return {"train": write_shards(root / "train", 300, 0), "eval": write_shards(root / "eval", 40, 1)}


def tiny_job(shards: dict[str, Path], output_dir: Path, **sections) -> dict:
    """A job of a 2-layer, 64-wide GLM over the synthetic shards: ~0.1 s a step on one CPU core."""
    job = {
        "model": {"preset": "tiny", "overrides": {"vocab_size": VOCAB}},
        "data": {
            "path": str(shards["train"]),
            "eval_path": str(shards["eval"]),
            "objective": "glm-large-multitask",
            "blanks": {"seq_length": 64},
            "num_workers": 0,
        },
        "train": {"output_dir": str(output_dir), "steps": 10, "global_batch_size": 8, "micro_batch_size": 4},
        "optim": {"lr": 1e-3},
        "schedule": {"warmup_steps": 2},
        "checkpoint": {"interval": 0, "export_final": False},
        "logging": {"interval": 1, "progress_bar": False, "tensorboard": False, "peak_tflops": 1.0},
    }
    for name, values in sections.items():
        job[name] = {**job.get(name, {}), **values}
    return job


def write_job(path: Path, job: dict) -> Path:
    path.write_text(yaml.safe_dump(job), encoding="utf-8")
    return path


def train_losses(output_dir: Path) -> dict[int, float]:
    """step -> training loss, from the run's log.jsonl."""
    records = [json.loads(line) for line in (Path(output_dir) / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r and "event" not in r}


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    # The in-process reference runs pin one thread (`_one_thread` below): a child with another thread count rounds
    # its sums differently (CPU kernels split them by thread), and exact-resume comparisons would differ in the
    # last digits. Forced, not defaulted: an OMP_NUM_THREADS=2 in the environment must not reach the children.
    env["OMP_NUM_THREADS"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def run_pretrain(config: Path, *args: str, nproc: int = 1, timeout: float = 240) -> subprocess.CompletedProcess:
    """``torchglm pretrain --config CONFIG ARGS`` in a subprocess (``torchrun`` when ``nproc > 1``)."""
    if nproc > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
        command += ["--master-port", str(_free_port()), str(CHILD)]
    else:
        command = [sys.executable, str(CHILD)]
    command += ["--config", str(config), *args]
    return subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=timeout)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread, and a busy machine does not oversubscribe its cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

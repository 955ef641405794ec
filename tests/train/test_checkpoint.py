"""Checkpoint folders: atomic save, rotation, partial saves skipped with a warning, model signature check, RNG."""

from __future__ import annotations

import json
import logging
import random

import numpy as np
import pytest
import torch

from torchglm.train.checkpoint import (
    PARTIAL_SUFFIX,
    Checkpointer,
    CheckpointError,
    check_compatible,
    find_latest,
    resolve_resume,
    rng_state,
    set_rng_state,
    verify_checkpoint,
)


def toy():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


def save(checkpointer, step, model, optimizer, signature=None):
    state = {"step": step, "model_signature": signature or {"hidden_size": 4}}
    return checkpointer.save(step, state, {"data": {"step": step}, "rng": rng_state()}, model, optimizer)


def test_save_load_round_trip(tmp_path):
    model, optimizer = toy()
    checkpointer = Checkpointer(tmp_path, keep_last=2)
    path = save(checkpointer, 5, model, optimizer)
    assert path.name == "step-00000005" and (path / "trainer.json").is_file() and (path / ".metadata").is_file()
    fresh, fresh_optimizer = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4)), None
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    state, rank_state = Checkpointer(tmp_path, keep_last=2).load(path, fresh, fresh_optimizer)
    assert state["step"] == 5 and rank_state["data"] == {"step": 5}
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)
    exp_avg = optimizer.state[next(model.parameters())]["exp_avg"]
    assert torch.equal(fresh_optimizer.state[next(fresh.parameters())]["exp_avg"], exp_avg)


def test_keep_last_and_latest(tmp_path):
    model, optimizer = toy()
    checkpointer = Checkpointer(tmp_path, keep_last=2)
    for step in (1, 2, 3, 10):
        save(checkpointer, step, model, optimizer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000003", "step-00000010"]
    assert find_latest(tmp_path).name == "step-00000010"  # numeric, not the order of the names


def test_partial_and_damaged_checkpoints_are_skipped_with_a_warning(tmp_path, caplog):
    model, optimizer = toy()
    checkpointer = Checkpointer(tmp_path, keep_last=3)
    save(checkpointer, 2, model, optimizer)
    partial = tmp_path / f"step-00000004{PARTIAL_SUFFIX}"
    partial.mkdir()
    (partial / "__0_0.distcp").write_bytes(b"half")
    damaged = tmp_path / "step-00000006"  # e.g. copied by hand without its trainer.json
    damaged.mkdir()
    with caplog.at_level(logging.WARNING, logger="torchglm.train"):
        latest = find_latest(tmp_path)
    assert latest.name == "step-00000002"
    assert "step-00000004.partial: an interrupted checkpoint save" in caplog.text
    assert "step-00000006: it lacks trainer.json" in caplog.text
    save(checkpointer, 8, model, optimizer)  # a successful save clears what crashed saves left
    assert not partial.exists()


def test_resume_targets(tmp_path):
    model, optimizer = toy()
    save(Checkpointer(tmp_path / "run" / "checkpoints", keep_last=2), 3, model, optimizer)
    run = tmp_path / "run"
    assert resolve_resume(None, run / "checkpoints") is None
    assert resolve_resume("latest", run / "checkpoints").name == "step-00000003"
    assert resolve_resume(str(run), tmp_path).name == "step-00000003"  # a run folder
    assert resolve_resume(str(run / "checkpoints" / "step-00000003"), tmp_path).name == "step-00000003"
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_resume(str(tmp_path / "nowhere"), tmp_path)


def test_signature_mismatch(tmp_path):
    model, optimizer = toy()
    path = save(Checkpointer(tmp_path, keep_last=1), 1, model, optimizer, {"hidden_size": 4, "num_layers": 2})
    check_compatible(path, {"hidden_size": 4, "num_layers": 2})
    with pytest.raises(CheckpointError, match="num_layers: checkpoint 2 vs this run 3"):
        check_compatible(path, {"hidden_size": 4, "num_layers": 3})


def test_rng_state_round_trip(tmp_path):
    torch.save(rng_state(), tmp_path / "rng.pt")
    before = (random.random(), float(np.random.rand()), float(torch.rand(())))
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == before


class _RunsCode:
    """Unpickling this runs ``touch FILE``: what a crafted checkpoint can do to a reader that trusts pickle."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.target}",))


def test_a_crafted_metadata_file_runs_nothing_and_is_refused_by_name(tmp_path):
    import pickle

    model, optimizer = toy()
    path = save(Checkpointer(tmp_path / "run", keep_last=2), 3, model, optimizer)
    witness = tmp_path / "pwned"
    (path / ".metadata").write_bytes(pickle.dumps(_RunsCode(witness)))
    fresh, fresh_optimizer = toy()
    with pytest.raises(CheckpointError, match=r"\.metadata: refusing to load it: it names posix\.system"):
        Checkpointer(tmp_path / "run", keep_last=2).load(path, fresh, fresh_optimizer)
    assert not witness.exists()
    (path / ".metadata").write_bytes(b"\x80\x04truncated")
    with pytest.raises(CheckpointError, match=r"\.metadata: unreadable checkpoint metadata"):
        Checkpointer(tmp_path / "run", keep_last=2).load(path, fresh, fresh_optimizer)


def test_resume_falls_back_past_a_truncated_newest_checkpoint_and_names_it(tmp_path, caplog):
    model, optimizer = toy()
    checkpointer = Checkpointer(tmp_path, keep_last=3)
    older, newest = save(checkpointer, 1, model, optimizer), save(checkpointer, 2, model, optimizer)
    shard = next(newest.glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-16])  # cut short, as by a full disk or a killed copy
    with caplog.at_level(logging.WARNING, logger="torchglm.train"):
        assert resolve_resume("latest", tmp_path) == older
    assert f"skipping {newest}" in caplog.text and f"{shard}: truncated" in caplog.text
    with pytest.raises(CheckpointError, match=r"\.distcp: truncated: \d+ bytes, saved with \d+"):
        resolve_resume(str(newest), tmp_path)  # a checkpoint asked for by name is refused, not swapped
    shard.unlink()
    (older / "trainer.json").write_text("{not json")
    with (
        caplog.at_level(logging.WARNING, logger="torchglm.train"),
        pytest.raises(CheckpointError, match="no checkpoint"),
    ):
        resolve_resume("latest", tmp_path)  # none loads: refused, not a fresh start over the run's logs
    assert "missing" in caplog.text and "trainer.json: unreadable" in caplog.text


def test_a_flipped_byte_is_caught_by_the_saved_hashes(tmp_path, caplog):
    model, optimizer = toy()
    checkpointer = Checkpointer(tmp_path, keep_last=3)
    older, newest = save(checkpointer, 1, model, optimizer), save(checkpointer, 2, model, optimizer)
    files = json.loads((newest / "trainer.json").read_text())["files"]
    assert set(files) == {p.relative_to(newest).as_posix() for p in newest.rglob("*") if p.name != "trainer.json"}
    shard = next(newest.glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x10  # one bit, inside a tensor: sizes and metadata still agree
    shard.write_bytes(bytes(data))
    verify_checkpoint(newest, hashes=False)  # the cheap check cannot see it
    with caplog.at_level(logging.WARNING, logger="torchglm.train"):
        assert resolve_resume("latest", tmp_path) == older
    assert f"{shard}: its SHA-256 differs" in caplog.text


def test_the_run_lock_refuses_a_live_holder_and_takes_over_a_dead_ones(tmp_path, caplog):
    import os
    import subprocess
    import sys

    from torchglm.train.checkpoint import RunLock

    with RunLock(tmp_path) as lock:
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid()) and lock.held
        with pytest.raises(CheckpointError, match=rf"in use by a live run \(pid {os.getpid()}"):
            RunLock(tmp_path).__enter__()
    assert not (tmp_path / ".lock").exists()  # released
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".lock").write_text(dead.stdout)
    with caplog.at_level(logging.WARNING, logger="torchglm.train"), RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    assert f"left by pid {dead.stdout.strip()}, which is no longer running" in caplog.text

"""Training checkpoints: sharded ``torch.distributed.checkpoint`` (DCP) folders, written atomically, last N kept.

Layout of ``OUTPUT/checkpoints``::

    step-00000200/        a complete checkpoint
        .metadata, __0_0.distcp, ...     model + optimizer, sharded as trained (DCP; any world size reloads them)
        rank-00000.pt                    per-rank state: data position, RNG states (torch.save, tensors + ints)
        trainer.json                     step, counters, scheduler, model signature, resolved config (written last)
    step-00000300.partial/               a save in progress, or one cut short by a crash: never loaded

Every rank writes into ``step-N.partial``; after all of them are done, rank 0 writes ``trainer.json`` and renames the
folder to ``step-N`` (one atomic ``rename``). A crash at any moment leaves either the previous checkpoints only, or
them plus a ``.partial`` folder, which :func:`find_latest` skips with a warning (and the next save removes).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import random
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from torchglm.errors import InputError

logger = logging.getLogger("torchglm.train")

STEP_DIR = re.compile(r"^step-(\d+)$")
PARTIAL_SUFFIX = ".partial"
TRAINER_FILE = "trainer.json"


class CheckpointError(InputError):
    """A checkpoint that cannot be resumed here (another model, missing files)."""


# What a DCP ``.metadata`` pickle may name: the metadata classes and the torch values inside them. Anything else
# (os.system, builtins.eval, ...) is a crafted file: DCP's own reader unpickles it blindly and would run it.
_METADATA_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch._utils": {"_get_layout"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"},
    "pathlib._local": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"},  # Python 3.13+
    "collections": {"OrderedDict"},
}  # fmt: skip


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        if name in _METADATA_GLOBALS.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(
            getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format)
        ):
            return getattr(torch, name)
        raise CheckpointError(
            f"{self.path}: refusing to load it: it names {module}.{name}, which no checkpoint metadata holds "
            "(a crafted file; unpickling it could run code)"
        )


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader, except that ``.metadata`` is unpickled with only the metadata classes allowed (DCP's
    ``FileSystemReader.read_metadata`` calls ``pickle.load`` on it: a crafted checkpoint ran code on resume).
    Tensors were already read with ``torch.load(weights_only=True)``."""

    def read_metadata(self, *args: Any, **kwargs: Any):
        path = Path(self._get_metadata_path(kwargs.get("rank")))
        try:
            with open(path, "rb") as handle:
                metadata = _MetadataUnpickler(handle, path).load()
        except CheckpointError:
            raise
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as error:
            raise CheckpointError(f"{path}: unreadable checkpoint metadata ({type(error).__name__}: {error})") from None
        if getattr(metadata, "storage_meta", None) is None:
            from torch.distributed.checkpoint.metadata import StorageMeta

            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


LOCK_FILE = ".lock"


class RunLock:
    """An exclusive lock on a run folder, held by one process (rank 0) while it trains: a second ``pretrain`` on
    a live run is refused, naming the holder's pid, before it writes anything; a lock left by a dead process is
    taken over with a warning. ``with RunLock(folder): ...``."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / LOCK_FILE
        self.held = False

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _lock_holder(self.path)
                if holder is not None and _alive(holder):
                    raise CheckpointError(
                        f"{self.path.parent} is in use by a live run (pid {holder}, {self.path}); wait for it, "
                        "or give this run another train.output_dir"
                    ) from None
                logger.warning("taking over %s, left by pid %s, which is no longer running", self.path, holder)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(handle, "w") as out:
                out.write(f"{os.getpid()}\n")
            self.held = True
            return self
        raise CheckpointError(f"{self.path}: could not take the run lock")

    def __exit__(self, *exc) -> None:
        if self.held and _lock_holder(self.path) == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False


def _lock_holder(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def step_dir(folder: Path, step: int) -> Path:
    return folder / f"step-{step:08d}"


def is_complete(path: Path) -> bool:
    """A ``step-N`` folder with ``trainer.json``: only the final rename creates one, so it holds every file."""
    return STEP_DIR.match(path.name) is not None and (path / TRAINER_FILE).is_file()


def file_digests(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file of a checkpoint folder (``trainer.json`` aside), by relative path."""
    out = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != TRAINER_FILE):
        digest = hashlib.sha256()
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
        out[file.relative_to(folder).as_posix()] = {"size": file.stat().st_size, "sha256": digest.hexdigest()}
    return out


def verify_checkpoint(path: Path, hashes: bool = True) -> None:
    """Check that ``path`` will load: ``trainer.json`` parses; every file it lists (``files``, written at save)
    is there with its size and, with ``hashes``, its SHA-256 (a truncated, missing or bit-flipped file is a
    :class:`CheckpointError` naming it); ``.metadata`` is safe and readable, and every byte range it names exists
    (checkpoints saved before the file list, too)."""
    try:
        state = json.loads((path / TRAINER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path / TRAINER_FILE}: unreadable ({error})") from None
    for name, expected in (state.get("files") or {}).items():
        file = path / name
        size = file.stat().st_size if file.is_file() else -1
        if size != expected["size"]:
            cut = "truncated: " if 0 <= size < expected["size"] else ""
            state_of = "missing" if size < 0 else f"{cut}{size} bytes, saved with {expected['size']}"
            raise CheckpointError(f"{file}: {state_of}")
    if hashes and state.get("files"):
        for name, digest in file_digests(path).items():
            want = state["files"].get(name)
            if want is not None and digest["sha256"] != want["sha256"]:
                raise CheckpointError(f"{path / name}: its SHA-256 differs from the one saved (the file changed)")
    if not (path / ".metadata").is_file():
        return  # a DeepSpeed checkpoint: its own layout
    sizes: dict[Path, int] = {}
    for info in SafeFileSystemReader(path).read_metadata().storage_data.values():
        file = path / info.relative_path
        if file not in sizes:
            sizes[file] = file.stat().st_size if file.is_file() else -1
        if sizes[file] < info.offset + info.length:
            state = "missing" if sizes[file] < 0 else f"truncated: {sizes[file]} bytes"
            raise CheckpointError(f"{file}: {state}, its metadata needs {info.offset + info.length}")


def find_latest(folder: str | Path, verify: bool = False) -> Path | None:
    """The newest complete checkpoint under ``folder``; partial or damaged ones are skipped with a warning.
    ``verify``: also skip (with a warning naming the file) ones that :func:`verify_checkpoint` rejects, falling
    back to the newest that will load."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    complete = []
    for path in sorted(folder.iterdir()):
        if not path.is_dir():
            continue
        if path.name.endswith(PARTIAL_SUFFIX):
            logger.warning("ignoring %s: an interrupted checkpoint save (incomplete, never loaded)", path)
        elif STEP_DIR.match(path.name):
            if is_complete(path):
                complete.append(path)
            else:
                logger.warning("ignoring %s: it lacks %s (not a complete checkpoint)", path, TRAINER_FILE)
    complete.sort(key=lambda p: int(STEP_DIR.match(p.name).group(1)), reverse=True)
    for path in complete:
        if not verify:
            return path
        try:
            verify_checkpoint(path)
            return path
        except CheckpointError as error:
            logger.warning("skipping %s, falling back to an earlier checkpoint: %s", path, error)
    return None


def resolve_resume(resume: str | None, checkpoints: Path) -> Path | None:
    """``checkpoint.resume`` -> the checkpoint folder to load, or None to start fresh.

    'latest' is the newest complete checkpoint of this run (None if there is none yet: a first start and a
    restart use the same command). A path may name one checkpoint or a folder of them.
    """
    if resume is None:
        return None
    if resume == "latest":
        latest = find_latest(checkpoints, verify=True)
        if latest is None and find_latest(checkpoints) is not None:
            raise CheckpointError(f"checkpoint.resume: no checkpoint in {checkpoints} loads (see the warnings)")
        return latest
    path = Path(resume)
    if not path.exists():
        raise CheckpointError(f"checkpoint.resume: {path} does not exist")
    if is_complete(path):
        verify_checkpoint(path)  # a named checkpoint is loaded or refused, never swapped for another
        return path
    if path.name.endswith(PARTIAL_SUFFIX):
        raise CheckpointError(f"checkpoint.resume: {path} is an interrupted (partial) checkpoint save")
    latest = find_latest(path, verify=True) or find_latest(path / "checkpoints", verify=True)
    if latest is None:
        raise CheckpointError(f"checkpoint.resume: {path} holds no complete checkpoint (step-N with {TRAINER_FILE})")
    return latest


def read_trainer_state(path: Path) -> dict[str, Any]:
    return json.loads((path / TRAINER_FILE).read_text(encoding="utf-8"))


def check_compatible(path: Path, signature: dict[str, Any]) -> dict[str, Any]:
    """Compare the checkpoint's model signature with this run's; a difference is a CheckpointError naming it."""
    state = read_trainer_state(path)
    saved = state.get("model_signature", {})
    different = {k: (saved.get(k), signature.get(k)) for k in sorted(set(saved) | set(signature))}
    different = {k: v for k, v in different.items() if v[0] != v[1]}
    if different:
        listed = ", ".join(f"{k}: checkpoint {a!r} vs this run {b!r}" for k, (a, b) in different.items())
        raise CheckpointError(f"checkpoint {path} was saved by another model ({listed})")
    return state


# ----------------------------------------------------------------------------------------------------------------
# RNG states (per rank)


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) generator states as tensors and plain values (loadable weights_only)."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuple(state["python"]))
    name, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _to_tuple(value):
    return tuple(_to_tuple(v) for v in value) if isinstance(value, list | tuple) else value


# ----------------------------------------------------------------------------------------------------------------
# Save / load


class Checkpointer:
    """Saves and restores the model, optimizer (DCP) and the trainer's small state, atomically, keeping the last N.

    ``save_payload``/``load_payload`` default to DCP over ``get_state_dict(model, optimizer)``; the DeepSpeed
    engine plugs its own writer in (see :mod:`torchglm.train.deepspeed`), keeping the atomic rename and rotation.
    """

    def __init__(
        self,
        folder: str | Path,
        keep_last: int,
        rank: int = 0,
        distributed: bool = False,
        save_payload: Callable[[Path], None] | None = None,
        load_payload: Callable[[Path], None] | None = None,
    ):
        self.folder = Path(folder)
        self.keep_last = keep_last
        self.rank = rank
        self.distributed = distributed
        self.save_payload = save_payload
        self.load_payload = load_payload

    def _barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def save(self, step: int, trainer_state: dict[str, Any], rank_state: dict[str, Any], model=None, optimizer=None):
        """Write checkpoint ``step``; returns its final folder. Collective: every rank calls it."""
        final = step_dir(self.folder, step)
        partial = final.with_name(final.name + PARTIAL_SUFFIX)
        if self.rank == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            if partial.exists():
                shutil.rmtree(partial)
            partial.mkdir()
        self._barrier()
        if self.save_payload is not None:
            self.save_payload(partial)
        else:
            model_state, optim_state = get_state_dict(model, optimizer)
            state = {"model": model_state, "optim": optim_state}
            with _single_process_quiet():
                dcp.save(state, checkpoint_id=partial, no_dist=not self.distributed)
        torch.save(rank_state, partial / f"rank-{self.rank:05d}.pt")
        self._barrier()
        if self.rank == 0:
            _write_json(partial / TRAINER_FILE, {**trainer_state, "files": file_digests(partial)})
            if final.exists():  # a checkpoint of the same step from an earlier attempt
                shutil.rmtree(final)
            os.rename(partial, final)
            self._rotate()
        self._barrier()
        return final

    def _rotate(self) -> None:
        complete = sorted(
            (p for p in self.folder.iterdir() if p.is_dir() and is_complete(p)),
            key=lambda p: int(STEP_DIR.match(p.name).group(1)),
        )
        for old in complete[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.folder.glob(f"*{PARTIAL_SUFFIX}"):
            logger.info("removing %s, left by an interrupted save", stale)
            shutil.rmtree(stale, ignore_errors=True)

    def load(self, path: Path, model=None, optimizer=None) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Restore model and optimizer in place; returns (trainer state, this rank's saved state or None)."""
        if self.load_payload is not None:
            self.load_payload(path)
        else:
            model_state, optim_state = get_state_dict(model, optimizer)
            state = {"model": model_state, "optim": optim_state}
            reader = SafeFileSystemReader(path)
            reader.read_metadata()  # refuse a crafted or broken .metadata by name, before DCP wraps the error
            with _single_process_quiet():
                dcp.load(state, storage_reader=reader, no_dist=not self.distributed)
            set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        rank_file = path / f"rank-{self.rank:05d}.pt"
        rank_state = torch.load(rank_file, weights_only=True) if rank_file.is_file() else None
        return read_trainer_state(path), rank_state


@contextlib.contextmanager
def _single_process_quiet():
    """DCP warns on every single-process save that it assumes one process: that is the intent here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)

"""Checkpoint files: what a model folder must hold, and reading the released formats.

A released GLM folder holds ``config.json`` and ``pytorch_model.bin`` (a bare state dict, keys with or
without the ``glm.`` prefix, fp16 or fp32); torchglm saves ``model.safetensors``, or shards of it
(``model-0000x-of-0000n.safetensors`` + ``model.safetensors.index.json``, transformers' layout). Loading goes
through ``transformers`` (``GLMPreTrainedModel.from_pretrained``); this module checks folders before that and
reads their weights leanly (:func:`lean_state_dict`), so that a dtype conversion never holds two copies.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from torchglm.errors import InputError

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def check_checkpoint_folder(path: str | os.PathLike) -> None:
    """Fail early, naming the folder and what it lacks, when a local model folder cannot be loaded."""
    folder = Path(path)
    if not folder.exists():
        if os.sep in str(path) or str(path).startswith("."):
            raise FileNotFoundError(f"model folder {folder} does not exist")
        return  # a hub id: transformers resolves it where the network allows
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder; expected a model folder with config.json and weights")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model folder {folder} has no config.json")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise FileNotFoundError(f"model folder {folder} has no weights: expected one of {', '.join(WEIGHT_FILES)}")
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            check_weight_file(folder / name)
    for name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / name).is_file():
            for shard in sorted(set(read_shard_index(folder / name).values())):
                check_weight_file(folder / shard)


def read_shard_index(path: Path) -> dict[str, str]:
    """An index file's ``weight_map`` (tensor name -> shard file name), every shard checked to exist."""
    try:
        weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(f"{path}: not a shard index (a JSON object with a 'weight_map'): {error}") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise InputError(f"{path}: 'weight_map' must map tensor names to shard file names")
    for shard in sorted(set(weight_map.values())):
        if Path(shard).name != shard:
            raise InputError(f"{path}: shard {shard!r} is not a file name in the same folder")
        if not (path.parent / shard).is_file():
            tensors = sorted(k for k, v in weight_map.items() if v == shard)
            raise InputError(
                f"{path} names shard {shard}, which is missing from {path.parent} "
                f"({len(tensors)} tensors, e.g. {tensors[0]})"
            )
    return weight_map


def weight_files(folder: Path) -> list[Path]:
    """The files a folder's weights are read from, in transformers' order of preference (safetensors first)."""
    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (folder / index).is_file():
            return [folder / name for name in sorted(set(read_shard_index(folder / index).values()))]
        if (folder / single).is_file():
            return [folder / single]
    return []


class LeanWeights(dict):
    """A folder's tensors (safetensors as lazy slices), with the file each came from, for error messages."""

    def __init__(self):
        super().__init__()
        self.source: dict[str, Path] = {}
        self._handles: list = []

    def close(self) -> None:
        self.clear()
        for handle in self._handles:
            handle.__exit__(None, None, None)
        self._handles.clear()


def lean_state_dict(folder: Path, dtype: torch.dtype | None) -> LeanWeights:
    """Weights to hand ``transformers`` as ``state_dict``, read so that peak memory stays near one copy.

    transformers memory-maps safetensors and ``torch.load(mmap=True)``s ``.bin`` files: every page it reads to
    convert a dtype stays resident while the file is mapped, so fp16 -> bf16 peaks at 2x the weights (fp16 ->
    fp32 at 1.5x). Here safetensors are opened with safetensors' ``pread`` backend (each tensor read on its
    own, freed once transformers has converted it), and a ``.bin`` is loaded into ordinary memory and converted
    tensor by tensor in place, each source tensor freed as its copy is made.
    """
    from safetensors import safe_open

    weights = LeanWeights()
    for path in weight_files(folder):
        if path.suffix == ".safetensors":
            handle = safe_open(path, framework="pt", device="cpu", backend="pread")
            weights._handles.append(handle)
            for name in handle.keys():
                weights[name] = handle.get_slice(name)
                weights.source[name] = path
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
            for name in list(state):
                tensor = state.pop(name)
                if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
                    tensor = tensor.to(dtype)
                weights[name] = tensor
                weights.source[name] = path
            del state
    return weights


POSITION_TABLES = ("transformer.position_embeddings.weight", "transformer.block_position_embeddings.weight")


def grow_position_tables(weights: LeanWeights, rows: int, std: float, dtype: torch.dtype | None) -> list[str]:
    """Lengthen the position tables in ``weights`` to ``rows`` (``max_sequence_length + 1``), as the original's
    loader does when ``--max-position-embeddings`` is raised: the trained rows are kept and the new ones drawn as
    a fresh model's (N(0, ``std``)). Returns one line per table grown; a table longer than ``rows`` is an error."""
    grown = []
    for name in list(weights):
        if not name.endswith(POSITION_TABLES):
            continue
        old = weights[name] if isinstance(weights[name], torch.Tensor) else weights[name][:]
        if old.shape[0] > rows:
            raise InputError(
                f"{name} has {old.shape[0]} rows in {weights.source.get(name, 'the checkpoint')}, "
                f"more than max_sequence_length + 1 = {rows}: positions cannot shrink"
            )
        if old.shape[0] == rows:
            continue
        new = torch.empty(rows, old.shape[1], dtype=dtype or old.dtype)
        torch.nn.init.normal_(new, mean=0.0, std=std)
        new[: old.shape[0]] = old
        weights[name] = new
        grown.append(f"{name}: {old.shape[0]} -> {rows} rows (old rows kept, new ones N(0, {std}))")
    return grown


def check_weight_file(path: Path) -> None:
    """Name a weight file that cannot be a checkpoint before torch or safetensors trip over it: empty, cut short,
    or neither a safetensors file nor a torch archive (torch's own message for those is a bare ``EOFError`` or
    advice to unpickle with ``weights_only=False``)."""
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{path}: the weight file is empty")
    with open(path, "rb") as handle:
        head = handle.read(8)
        if path.suffix == ".safetensors":
            header = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 0 < header <= size - 8:
                raise InputError(f"{path}: not a safetensors file, or cut short ({size} bytes)")
            try:
                json.loads(handle.read(header))
            except ValueError:
                raise InputError(f"{path}: not a safetensors file (its header is not JSON)") from None
            return
    if head[:4] == b"PK\x03\x04":  # torch.save's zip archive: the central directory sits at the end
        with open(path, "rb") as handle:
            handle.seek(max(0, size - 65_558))
            if b"PK\x05\x06" not in handle.read():
                raise InputError(f"{path}: a torch archive cut short ({size} bytes: no end-of-archive record)")
    elif head[:1] != b"\x80":  # nor the legacy pickle format
        raise InputError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle; {size} bytes)")


# ----------------------------------------------------------------------------------------------------------------
# Original training checkpoints split for model parallelism (Megatron-style `mp_rank_XX_model_states.pt`)

# How the original partitions each parameter across model-parallel ranks: the dimension it is split along, or
# None where every rank holds a full copy. query_key_value is column-parallel with each rank holding q|k|v of its
# own heads, so merging interleaves thirds (see `_merge_query_key_value`).
_COLUMN_PARALLEL = ("attention.query_key_value.", "mlp.dense_h_to_4h.")
_ROW_PARALLEL_WEIGHTS = ("attention.dense.weight", "mlp.dense_4h_to_h.weight")


def _partition_dim(name: str) -> int | None:
    if name == "word_embeddings.weight":
        return 0  # vocabulary-parallel embedding
    if any(part in name for part in _COLUMN_PARALLEL):
        return 0
    if name.endswith(_ROW_PARALLEL_WEIGHTS):
        return 1
    return None


def _load_pickle_free(path: Path) -> dict:
    """Read an original ``.pt`` with ``weights_only=True``; its only non-tensor object is argparse's Namespace."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"cannot read {path} as a checkpoint of tensors: {error}") from error


def find_model_parallel_shards(folder: str | os.PathLike) -> list[Path]:
    """The shard files of the newest iteration of an original training checkpoint folder, in rank order."""
    folder = Path(folder)
    marker = folder / "latest_checkpointed_iteration.txt"
    if not marker.is_file():
        raise FileNotFoundError(
            f"{folder} has no latest_checkpointed_iteration.txt: not an original training checkpoint"
        )
    tag = marker.read_text().strip()
    shards = sorted((folder / tag).glob("mp_rank_*_model_states.pt"))
    if not shards:
        raise FileNotFoundError(f"{folder / tag} has no mp_rank_XX_model_states.pt files (named by {marker})")
    ranks = sorted(int(p.name.split("_")[2]) for p in shards)
    if ranks != list(range(len(ranks))):
        missing = sorted(set(range(max(ranks) + 1)) - set(ranks))
        raise InputError(f"{folder / tag}: model-parallel shard(s) of rank {missing} missing (found ranks {ranks})")
    return shards


def merge_model_parallel(shard_states: list[dict]) -> dict:
    """Merge per-rank state dicts of the original model-parallel layout into one full state dict."""
    ranks = len(shard_states)
    if ranks == 1:
        return dict(shard_states[0])
    names = list(shard_states[0])
    for rank, state in enumerate(shard_states[1:], start=1):
        if list(state) != names:
            raise ValueError(f"model-parallel rank {rank} holds other parameters than rank 0")
    merged = {}
    for name in names:
        parts = [state[name] for state in shard_states]
        dim = _partition_dim(name)
        if dim is None:
            merged[name] = parts[0]
        elif "query_key_value" in name:
            thirds = [part.chunk(3, dim=0) for part in parts]  # per rank: q_r, k_r, v_r
            merged[name] = torch.cat([torch.cat([t[i] for t in thirds], dim=0) for i in range(3)], dim=0)
        else:
            merged[name] = torch.cat(parts, dim=dim)
    return merged


def split_model_parallel(state: dict, ranks: int) -> list[dict]:
    """The inverse of `merge_model_parallel`: the state dict each of ``ranks`` model-parallel ranks holds."""
    shards: list[dict] = [{} for _ in range(ranks)]
    for name, tensor in state.items():
        dim = _partition_dim(name)
        if dim is None:
            pieces = [tensor] * ranks
        elif tensor.shape[dim] % ranks:
            raise ValueError(f"{name} has {tensor.shape[dim]} rows along dim {dim}, not divisible by {ranks} ranks")
        elif "query_key_value" in name:
            q, k, v = (third.chunk(ranks, dim=0) for third in tensor.chunk(3, dim=0))
            pieces = [torch.cat((q[r], k[r], v[r]), dim=0) for r in range(ranks)]
        else:
            pieces = list(tensor.chunk(ranks, dim=dim))
        for shard, piece in zip(shards, pieces, strict=True):
            shard[name] = piece.clone()
    return shards


def load_model_parallel_checkpoint(folder: str | os.PathLike) -> dict:
    """Read and merge an original training checkpoint (``latest_checkpointed_iteration.txt`` + shards)."""
    states = []
    shards = find_model_parallel_shards(folder)
    for path in shards:
        checkpoint = _load_pickle_free(path)
        if "module" not in checkpoint:
            raise ValueError(f"{path} has no 'module' entry (keys: {sorted(checkpoint)})")
        expected = checkpoint.get("mp_world_size")
        if expected is not None and int(expected) != len(shards):
            raise InputError(f"{path}: saved by {expected}-way model parallelism, but {len(shards)} shard(s) are here")
        states.append(checkpoint["module"])
    return merge_model_parallel(states)

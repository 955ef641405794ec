"""Distributed set-up and ``parallelize(model, mesh, cfg)``: the single-process model plus PyTorch's own parallelism.

One process (``torchglm pretrain ...``) trains the plain model. Under ``torchrun`` every process joins a process
group (nccl on GPU, gloo on CPU), and :func:`parallelize` applies, in this order and each only when asked:

1. tensor parallelism (DTensor ``parallelize_module``) from a TP plan given as data (module pattern -> style);
2. activation checkpointing of every transformer block (``checkpoint_wrapper``);
3. FSDP2 ``fully_shard`` of every block, then of the root, with a bf16 ``MixedPrecisionPolicy`` (fp32 reduction).

For inference, :func:`load_tensor_parallel` loads a model folder over a tensor-parallel mesh, each rank reading
only its slices of the weights (``torchglm fill --tensor-parallel``).

Blocks are the modules whose class the model names in ``_no_split_modules`` (the transformers convention), so
nothing here knows which model it shards. Example (2 processes on one machine)::

    torchrun --nproc-per-node 2 -m torchglm.cli pretrain --config configs/pretrain/tiny.yaml
"""

from __future__ import annotations

import datetime
import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor

from torchglm.errors import InputError

from .config import ParallelConfig


@dataclass
class World:
    """Where this process sits: global rank/size, its data-parallel rank/size and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    dp_rank: int = 0
    dp_size: int = 1
    tp_size: int = 1
    device: torch.device = torch.device("cpu")
    mesh: DeviceMesh | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def dp_group(self):
        """Process group of the data-parallel replicas (None in one process)."""
        if self.mesh is None:
            return None
        return self.mesh["dp"].get_group()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def pick_device(preference: str) -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is 'cuda' but torch.cuda.is_available() is False")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def init_distributed(device_preference: str, tp_size: int, backend: str = "auto") -> World:
    """Join the ``torchrun`` process group (if any) and build the ("dp", "tp") device mesh."""
    device = pick_device(device_preference)
    world_size = world_size_from_env()
    if world_size == 1:
        if tp_size != 1:
            raise ValueError(f"parallel.tp_size is {tp_size} but this is a single process: launch with torchrun")
        return World(device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    rank = dist.get_rank()
    dp = world_size // tp_size
    mesh = init_device_mesh(device.type, (dp, tp_size), mesh_dim_names=("dp", "tp"))
    return World(
        rank=rank,
        world_size=world_size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        dp_rank=mesh["dp"].get_local_rank(),
        dp_size=dp,
        tp_size=tp_size,
        device=device,
        mesh=mesh,
    )


def close_distributed(orderly: bool = True) -> None:
    """Leave the process group. ``orderly`` (a run that ended normally): a barrier first, so that no rank tears its
    connections down while a peer is still inside a collective (with gloo, a peer that sees its connection closed
    mid-operation aborts). After an error there is no barrier: the peers may never reach it."""
    if dist.is_initialized():
        try:
            if orderly:
                dist.barrier()
        finally:
            dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------------------
# parallelize


def transformer_blocks(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """``(parent, attribute, block)`` for every module whose class is in the model's ``_no_split_modules``."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    if not names:
        raise ValueError(f"{type(model).__name__} names no transformer block class in _no_split_modules")
    found = []
    for parent in model.modules():
        for attribute, child in parent.named_children():
            if type(child).__name__ in names:
                found.append((parent, attribute, child))
    if not found:
        raise ValueError(f"{type(model).__name__} has no module of the classes {sorted(names)}")
    return found


def apply_tp(model: nn.Module, tp_mesh: DeviceMesh, plan: dict[str, object]) -> None:
    """``parallelize_module`` on every module whose qualified name matches a plan pattern (``*`` = any index)."""
    from torch.distributed.tensor.parallel import parallelize_module

    matched = set()
    for name, module in model.named_modules():
        for pattern, style in plan.items():
            if fnmatch.fnmatchcase(name, pattern):
                parallelize_module(module, tp_mesh, style)
                matched.add(pattern)
    missing = sorted(set(plan) - matched)
    if missing:
        raise ValueError(f"TP plan patterns matched no module of {type(model).__name__}: {missing}")


def tensor_parallel_styles(plan: dict[str, str]) -> dict[str, object]:
    """A model's plan of style names (``colwise``, ``rowwise``, ``vocab``: an embedding split by token id) as
    DTensor parallel styles."""
    from functools import partial

    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    # RowwiseParallel on an nn.Embedding splits its rows; the token ids are whole on every rank (its default input
    # layout, Shard(-1), would take them for pieces of one row)
    vocab = partial(RowwiseParallel, input_layouts=Replicate())
    styles = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel, "vocab": vocab}
    unknown = sorted(set(plan.values()) - set(styles))
    if unknown:
        raise ValueError(f"unknown tensor-parallel style(s) {unknown}; known: {sorted(styles)}")
    return {pattern: styles[name]() for pattern, name in plan.items()}


def apply_activation_checkpointing(model: nn.Module) -> None:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for parent, attribute, block in transformer_blocks(model):
        wrapped = checkpoint_wrapper(block, preserve_rng_state=True)
        if isinstance(parent, nn.ModuleList | nn.Sequential):
            parent[int(attribute)] = wrapped
        else:
            setattr(parent, attribute, wrapped)


def apply_fsdp(model: nn.Module, dp_mesh: DeviceMesh, precision: str, reshard_after_forward: bool) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy()
    if precision == "bf16":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    blocks = [block for _, _, block in transformer_blocks(model)]
    for i, block in enumerate(blocks):
        # The last block's parameters are needed at once by the backward: keeping them saves one all-gather.
        reshard = reshard_after_forward and i < len(blocks) - 1
        fully_shard(block, mesh=dp_mesh, mp_policy=policy, reshard_after_forward=reshard)
    fully_shard(model, mesh=dp_mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)


def parallelize(
    model: nn.Module,
    mesh: DeviceMesh | None,
    cfg: ParallelConfig,
    precision: str = "fp32",
    tp_plan: dict[str, object] | None = None,
) -> nn.Module:
    """TP, then activation checkpointing, then FSDP2, on the plain model; returns the same (modified) module.

    With ``mesh`` None (one process) only activation checkpointing applies.
    """
    if mesh is not None and cfg.tp_size > 1:
        if not tp_plan:
            raise ValueError("parallel.tp_size > 1 needs a TP plan for this model")
        apply_tp(model, mesh["tp"], tp_plan)
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    if mesh is not None:
        apply_fsdp(model, mesh["dp"], precision, cfg.reshard_after_forward)
    return model


def load_full_state(model: nn.Module, full_state: dict[str, torch.Tensor] | None, world: World) -> None:
    """Fill a parallelized model built on the meta device from rank 0's full state dict (other ranks pass None).

    ``set_model_state_dict(..., broadcast_from_rank0=True)`` sends each tensor from rank 0 and keeps every rank's
    shard, so a run on N processes starts from exactly the weights of the one-process run with the same seed.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    model.to_empty(device=world.device)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=True)
    set_model_state_dict(model, full_state if world.is_main else {}, options=options)


# ----------------------------------------------------------------------------------------------------------------
# tensor-parallel inference


def check_tensor_parallel_size(config, tp_size: int) -> None:
    """An :class:`InputError` naming the first size of the model that ``tp_size`` ranks cannot split evenly: the
    attention heads (whole heads per rank), the MLP width (``dense_h_to_4h``'s rows) and the vocabulary (the
    vocabulary-parallel embedding's rows). Needs only the config: it runs before any weight is read."""
    if tp_size < 1:
        raise InputError(f"tensor-parallel size {tp_size}: must be at least 1")
    for count, what in (
        (config.num_attention_heads, "attention heads"),
        (config.intermediate_size, "MLP width (intermediate_size)"),
        (config.vocab_size, "vocabulary entries (vocab_size)"),
    ):
        if count % tp_size:
            raise InputError(f"tensor-parallel size {tp_size} does not divide the {count} {what}")


def load_tensor_parallel(
    folder,
    mesh: DeviceMesh,
    dtype: torch.dtype = torch.float32,
    model_class=None,
    output_loading_info: bool = False,
):
    """A model folder (or built-in name) loaded over the ranks of a 1-D ``mesh``, each rank reading only its shard.

    The model is built on the meta device, the model's ``tensor_parallel_inference_plan`` applied (DTensor), and
    each rank copies in the rows or columns its DTensors hold, read as slices of the weight files: safetensors
    through ``get_slice``, a released ``pytorch_model.bin`` memory-mapped (``torch.load(mmap=True)``), so only the
    pages of the slice are read. ``query_key_value``'s slice on rank ``r`` is ``q_r | k_r | v_r`` (three reads),
    the rows :func:`~torchglm.model.tensor_parallel_layout` gives it. Returns the model in eval mode, or
    ``(model, {"bytes_read": ...})`` with ``output_loading_info``.
    """
    from transformers import GenerationConfig

    from torchglm.builtin import resolve
    from torchglm.checkpoint import check_checkpoint_folder
    from torchglm.config import GLMConfig
    from torchglm.model import GLMForConditionalGeneration

    model_class = model_class or GLMForConditionalGeneration
    folder = Path(resolve(folder))
    check_checkpoint_folder(folder)
    config = GLMConfig.from_pretrained(folder)
    tp_size, rank = mesh.size(), mesh.get_local_rank()
    check_tensor_parallel_size(config, tp_size)
    with torch.device("meta"):
        model = model_class(config).to(dtype)
    apply_tp(model, mesh, tensor_parallel_styles(model.tensor_parallel_inference_plan))
    device = torch.device(mesh.device_type, torch.cuda.current_device()) if mesh.device_type == "cuda" else "cpu"
    model.to_empty(device=device)

    targets = model.state_dict()
    bytes_read, filled = 0, set()
    with _WeightFiles(folder) as files, torch.no_grad():
        for stored_name, source, path in files:
            name = stored_name if stored_name in targets else f"{model.base_model_prefix}.{stored_name}"
            if name not in targets or name in filled:
                raise InputError(f"{path}: tensor {stored_name} does not fit {model_class.__name__} (unexpected)")
            target = targets[name]
            if tuple(source.get_shape()) != tuple(target.shape):
                raise InputError(
                    f"{path}: tensor {stored_name} has shape {list(source.get_shape())}, {folder / 'config.json'} "
                    f"makes it {list(target.shape)}"
                )
            pieces = [source[index] for index in _shard_indices(name, target, rank, tp_size)]
            local = target.to_local() if isinstance(target, DTensor) else target
            local.copy_(torch.cat(pieces) if len(pieces) > 1 else pieces[0])
            bytes_read += sum(piece.numel() * piece.element_size() for piece in pieces)
            filled.add(name)
    missing = sorted(set(targets) - filled)
    if missing:
        raise InputError(f"{folder}: the weights lack {missing} for {model_class.__name__}")
    model.config.name_or_path = str(folder)
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    model.eval()
    return (model, {"bytes_read": bytes_read}) if output_loading_info else model


def _shard_indices(name: str, target: torch.Tensor, rank: int, tp_size: int) -> list[tuple[slice, ...]]:
    """The index (or, for ``query_key_value``, the three indices of q, k and v) of this rank's shard of a tensor
    stored whole: the full tensor where the DTensor is replicated (or not a DTensor)."""
    from torch.distributed.tensor import Shard

    placement = target.placements[0] if isinstance(target, DTensor) else None
    if not isinstance(placement, Shard):
        return [tuple(slice(None) for _ in target.shape)]
    dim, size = placement.dim, target.shape[placement.dim] // tp_size

    def rows(first: int, count: int) -> tuple[slice, ...]:
        return tuple(slice(first, first + count) if d == dim else slice(None) for d in range(target.dim()))

    if name.endswith(("attention.query_key_value.weight", "attention.query_key_value.bias")):
        third = target.shape[0] // 3  # q | k | v, stored whole; this rank holds its heads' part of each
        return [rows(part * third + rank * (size // 3), size // 3) for part in range(3)]
    return [rows(rank * size, size)]


class _WeightFiles:
    """``(name, slice source, file)`` for every tensor of a folder's weight files, read lazily: safetensors'
    ``get_slice`` (``source[index]`` reads that part) or a memory-mapped ``.bin`` tensor."""

    def __init__(self, folder: Path):
        from torchglm.checkpoint import weight_files

        self.paths = weight_files(folder)
        self._handles: list = []

    def __enter__(self):
        return self._iterate()

    def _iterate(self):
        from safetensors import safe_open

        for path in self.paths:
            if path.suffix == ".safetensors":
                handle = safe_open(path, framework="pt", device="cpu")
                self._handles.append(handle)
                for name in handle.keys():
                    yield name, handle.get_slice(name), path
            else:
                try:
                    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError:  # torch's legacy (pre-zip) format cannot be mapped: read whole
                    state = torch.load(path, map_location="cpu", weights_only=True)
                for name, tensor in state.items():
                    yield name, _TensorSource(tensor), path
                del state

    def __exit__(self, *exc):
        self._handles.clear()


class _TensorSource:
    """A (memory-mapped) tensor with safetensors' slice interface."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor

    def get_shape(self) -> list[int]:
        return list(self.tensor.shape)

    def __getitem__(self, index):
        return self.tensor[index]


def shared_seed(seed: int | None) -> int:
    """The seed every rank samples with: ``seed``, or one drawn on rank 0 and broadcast (ranks that sampled apart
    would feed their shards different tokens)."""
    if seed is not None or not dist.is_initialized():
        return seed
    drawn = [int(torch.randint(0, 2**31 - 1, ()))]
    dist.broadcast_object_list(drawn, src=0)
    return drawn[0]


# ----------------------------------------------------------------------------------------------------------------
# gradients


def clip_grad_norm(parameters, max_norm: float) -> float:
    """Global L2 norm of the gradients (all ranks, all shards), clipped to ``max_norm`` when it is > 0.

    Gradients of a TP + FSDP model are DTensors on different meshes (2-D for TP weights, 1-D for the rest), which
    ``torch.nn.utils.clip_grad_norm_`` cannot stack; the norm is taken per mesh (DTensor reduces each one) and
    combined here.
    """
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in parameters if p.grad is not None]
    groups: dict[object, list[torch.Tensor]] = {}
    for g in grads:
        groups.setdefault(g.device_mesh if isinstance(g, DTensor) else None, []).append(g)
    squares = []
    for group in groups.values():
        norm = torch.nn.utils.get_total_norm(group, norm_type=2.0, foreach=True)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        squares.append(norm.float() ** 2)
    total = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
    if max_norm > 0 and total > max_norm and total == total and total != float("inf"):
        scale = max_norm / (total + 1e-6)
        for group in groups.values():
            torch._foreach_mul_(group, scale)
    return total

"""Distributed set-up and ``parallelize(model, mesh, cfg)``: the single-process model plus PyTorch's own parallelism.

One process (``torchglm pretrain ...``) trains the plain model. Under ``torchrun`` every process joins a process
group (nccl on GPU, gloo on CPU), and :func:`parallelize` applies, in this order and each only when asked:

1. tensor parallelism (DTensor ``parallelize_module``) from a TP plan given as data (module pattern -> style);
2. activation checkpointing of every transformer block (``checkpoint_wrapper``);
3. FSDP2 ``fully_shard`` of every block, then of the root, with a bf16 ``MixedPrecisionPolicy`` (fp32 reduction).

Blocks are the modules whose class the model names in ``_no_split_modules`` (the transformers convention), so
nothing here knows which model it shards. Example (2 processes on one machine)::

    torchrun --nproc-per-node 2 -m torchglm.cli pretrain --config configs/pretrain/tiny.yaml
"""

from __future__ import annotations

import datetime
import fnmatch
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

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
    """A model's plan of style names (``colwise``, ``rowwise``) as DTensor parallel styles."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    styles = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}
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

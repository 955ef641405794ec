"""Weight-only quantization for inference through torchao: what GLM adds is which layers, and the checks.

``quantize_weights(model, "int8")`` replaces the weights of the four ``Linear`` layers of every transformer block
(``query_key_value``, ``dense``, ``dense_h_to_4h``, ``dense_4h_to_h``: all but a few percent of a large GLM's
parameters) by torchao tensors; activations stay in the model's dtype. The word embeddings stay as they are: the
output layer is tied to them, an ``nn.Embedding`` lookup has no int8 path in torchao, and quantizing the logits'
matrix costs the most accuracy for the least memory. Everything is checked before the first layer changes, so a
mode the device lacks leaves the model untouched.

- ``int8``: per-output-channel int8 weights (torchao ``Int8WeightOnlyConfig``), on every device.
- ``int4``: int4 weights in groups along the input (``Int4WeightOnlyConfig``, tinygemm layout): CUDA with compute
  capability 8.0 or more and bf16 weights only; torchao has no int4 weight-only kernel for CPUs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from torchglm.errors import InputError

QUANTIZATION_MODES = ("int8", "int4")
INT4_GROUP_SIZES = (128, 64, 32)  # torchao's choices; the largest one dividing a layer's input is used
_BLOCK_LINEARS = (".attention.query_key_value", ".attention.dense", ".mlp.dense_h_to_4h", ".mlp.dense_4h_to_h")


@dataclass(frozen=True)
class QuantizedWeights:
    """What ``quantize_weights`` changed: the layers and their weights' bytes before and after."""

    mode: str
    layers: int
    bytes_before: int
    bytes_after: int


def quantize_weights(model: nn.Module, mode: str) -> QuantizedWeights:
    """Quantize the transformer blocks' ``Linear`` weights of ``model`` in place (inference only).

    Raises :class:`InputError` naming the mode and the limit (unknown mode, torchao missing, a device, dtype or
    layer shape the mode's kernels do not take) before anything is changed.
    """
    torchao = check_quantization_mode(mode)
    layers = block_linears(model)
    if not layers:
        raise InputError(f"quantization {mode!r}: {type(model).__name__} has no GLM transformer blocks to quantize")
    config = _int8_config(torchao) if mode == "int8" else _int4_config(torchao, layers)
    before = sum(tensor_bytes(layer.weight) for layer in layers.values())
    torchao.quantize_(model, config, filter_fn=lambda module, name: name in layers)
    after = sum(tensor_bytes(layer.weight) for layer in layers.values())
    return QuantizedWeights(mode, len(layers), before, after)


def check_quantization_mode(mode: str):
    """An :class:`InputError` unless ``mode`` is a mode and torchao imports; returns ``torchao.quantization``."""
    if mode not in QUANTIZATION_MODES:
        raise InputError(f"quantization {mode!r}: no such mode; available: {', '.join(QUANTIZATION_MODES)}")
    return _import_torchao(mode)


def block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The quantized layers: the four projections of each block, by their names in ``model``."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and ".layers." in name and name.endswith(_BLOCK_LINEARS)
    }


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor holds; for a torchao tensor, those of its inner tensors (data, scales, zero points)."""
    if hasattr(tensor, "__tensor_flatten__") and type(tensor) not in (torch.Tensor, nn.Parameter):
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def _import_torchao(mode: str):
    try:
        import torchao.quantization as quantization
    except ImportError as error:
        raise InputError(
            f"quantization {mode!r} needs torchao ({error}); install it with pip install 'torchglm[quant]'"
        ) from None
    return quantization


def _int8_config(torchao):
    return torchao.Int8WeightOnlyConfig()


def _int4_config(torchao, layers: dict[str, nn.Linear]):
    """torchao's int4 weight-only kernel is tinygemm (CUDA, bf16, compute capability >= 8.0): refuse anything
    else here, with the limit named, rather than deep inside torchao half-way through the model."""
    weight = next(iter(layers.values())).weight
    if weight.device.type != "cuda":
        raise InputError(
            f"quantization 'int4': torchao has no int4 weight-only kernel for device {weight.device.type!r} "
            "(it needs CUDA, compute capability 8.0+, bfloat16); available here: int8"
        )
    capability = torch.cuda.get_device_capability(weight.device)
    if capability[0] < 8:
        raise InputError(
            f"quantization 'int4': device {weight.device} has compute capability {capability[0]}.{capability[1]}; "
            "torchao's int4 kernel needs 8.0 or more; use int8"
        )
    if weight.dtype != torch.bfloat16:
        raise InputError(f"quantization 'int4' needs bfloat16 weights (got {weight.dtype}): load with --dtype bfloat16")
    widths = {layer.in_features for layer in layers.values()}
    group = next((g for g in INT4_GROUP_SIZES if all(w % g == 0 for w in widths)), None)
    if group is None:
        raise InputError(
            f"quantization 'int4': layer input widths {sorted(widths)} are not all multiples of a group size "
            f"torchao takes ({', '.join(map(str, INT4_GROUP_SIZES))})"
        )
    return torchao.Int4WeightOnlyConfig(group_size=group, int4_packing_format="tile_packed_to_4d")


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not all(fragment in message for fragment in self.fragments)


def quiet_torchao_import() -> None:
    """Drop the warnings torchao 0.18 logs on every import where they say nothing about the kernels used here:
    one per CUDA extension a CPU-only torch cannot load, and torch 2.13's deprecation notes for its enums.
    transformers imports torchao with its models whenever it is installed, so ``import torchglm`` calls this
    first (through this module); other warnings of both loggers pass."""
    logging.getLogger("torchao").addFilter(_DropMessages("Failed to load", "Could not load this library"))
    logging.getLogger("torch.utils._pytree").addFilter(_DropMessages("is an Enum subclass", "register_constant()"))


quiet_torchao_import()

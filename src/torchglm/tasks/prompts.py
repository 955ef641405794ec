"""P-tuning: continuous prompts in the cloze patterns (the original's ``--continuous-prompt``).

The original's patterns carry ``None`` at the places where P-tuning puts learned prompt tokens (RTE pattern 0:
``[P] "hypothesis" ? | [P] [MASK] , [P] "premise"``). With continuous prompts on, ``num_prompt_tokens`` tokens are
spread over those slots in order (``ceil(n / slots)`` each until they run out); each becomes a placeholder id in
part A whose input embedding the forward replaces with the next output of a :class:`PromptEncoder` (a
bidirectional 2-layer LSTM and an MLP over learned embeddings, an MLP alone, or the embeddings themselves). The
backbone may be frozen with its first layers left trainable (``--freeze-transformer``, ``--tune-prefix-layers``);
a frozen run saves only what trained::

    layout = PromptLayout(num_tokens=3, placeholder_id=len(tokenizer))
    inputs = superglue.build_inputs(tokenizer, "rte", examples, 0, 256, prompt=layout)   # placeholders at the slots
    attach_prompt(model, PromptEncoder(3, hidden, "lstm"), layout.placeholder_id)        # embeddings replaced
    freeze_backbone(model, tune_prefix_layers=1)                                         # encoder + layer 0 train
    save_trainable(model, "best", base_model=folder)          # trainable.safetensors + trainable.json
    load_trainable(GLMForConditionalGeneration.from_pretrained(folder), "best")          # the same model again

The placeholder is the first id the tokenizer never produces, ``len(tokenizer)`` (the original's
``tokenizer.num_tokens``): a row of the model's padded embedding table, so every layout and the decoding core take
it as an ordinary id; only the embedding hook gives it meaning.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from torchglm.errors import InputError

ENCODERS = ("lstm", "mlp", "none")
TRAINABLE_FILE, TRAINABLE_INFO = "trainable.safetensors", "trainable.json"

# Where the original's patterns put ``None``, as insertion points into ``superglue.pattern_parts``' lists
# (``(parts_a, parts_b)``; an index i means "before part i", len(parts) "at the end"). Every SuperGLUE pattern but
# ReCoRD's has three slots. Tasks not listed (CLUE's) have none.
_RTE = {0: ((0,), (0, 2)), 1: ((0,), (0, 2)), 2: ((0,), (0, 2)), 3: ((0,), (0, 2)), 4: ((0, 1, 4), ())}
SLOTS: dict[str, dict[int, tuple[tuple[int, ...], tuple[int, ...]]]] = {
    "rte": _RTE,
    "cb": _RTE,
    "boolq": {
        0: ((0, 1, 4), ()),
        1: ((0, 1, 4), ()),
        2: ((0, 2, 4), ()),
        3: ((0, 2, 4), ()),
        4: ((1, 3, 5), ()),
        5: ((1, 3, 5), ()),
    },  # fmt: skip
    "wic": {0: ((0, 1, 2), ()), 1: ((1, 2, 3), ()), 2: ((0, 2, 5), ())},
    "multirc": {0: ((2, 4, 7), ()), 1: ((2, 5, 8), ()), 2: ((2, 4, 7), ()), 3: ((0, 1, 5), ()), 4: ((2, 5, 7), ())},
    "copa": {0: ((0, 5, 7), ()), 1: ((0, 4, 6), ())},
    "wsc": {0: ((0, 1, 2), ()), 1: ((0, 1, 2), ()), 2: ((0, 1, 2), ())},
    "record": {0: ((), ())},
}


def slot_sizes(num_tokens: int, slots: int) -> list[int]:
    """The original's split of ``num_tokens`` over ``slots``: ``ceil(n / slots)`` per slot, in order, until none
    are left (4 over 3 slots: 2, 2, 0)."""
    if slots == 0:
        return []
    each, sizes = math.ceil(num_tokens / slots), []
    for _ in range(slots):
        sizes.append(min(each, num_tokens))
        num_tokens -= sizes[-1]
    return sizes


@dataclass(frozen=True)
class PromptLayout:
    """How many prompt tokens a pattern gets, and the id that marks them in part A."""

    num_tokens: int
    placeholder_id: int

    def parts(self, task: str, pattern_id: int, parts_a: list, parts_b: list) -> tuple[list, list]:
        """``pattern_parts``' lists with the slots filled: a list of placeholder ids (never shortened) per slot."""
        slots_a, slots_b = SLOTS.get(task, {}).get(pattern_id, ((), ()))
        if not slots_a and not slots_b:
            raise InputError(f"{task} pattern {pattern_id} has no prompt slots")
        sizes = slot_sizes(self.num_tokens, len(slots_a) + len(slots_b))
        return _insert(parts_a, slots_a, sizes[: len(slots_a)], self.placeholder_id), _insert(
            parts_b, slots_b, sizes[len(slots_a) :], self.placeholder_id
        )


def _insert(parts: list, slots: tuple[int, ...], sizes: list[int], placeholder: int) -> list:
    out = list(parts)
    for index, size in sorted(zip(slots, sizes, strict=True), reverse=True):  # from the end: indices stay valid
        if size:
            out.insert(index, [placeholder] * size)
    return out


def placeholder_id(tokenizer, vocab_size: int) -> int:
    """``len(tokenizer)``, the first id the tokenizer never produces; it must be a row of the embedding table."""
    found = len(tokenizer)
    if found >= vocab_size:
        raise InputError(f"P-tuning needs a spare row in the embedding table: the tokenizer uses all {vocab_size} ids")
    return found


# ----------------------------------------------------------------------------------------------------------------
# The encoder and its place in the forward


class PromptEncoder(nn.Module):
    """``num_tokens`` learned embeddings re-encoded together (the original's ``PromptSpell``): ``lstm``, a
    bidirectional 2-layer LSTM then Linear(2H, H)-ReLU-Linear(H, H); ``mlp``, Linear(H, H)-ReLU-Linear(H, H);
    ``none``, the embeddings as they are. torch's default initialisations, as the original's."""

    def __init__(self, num_tokens: int, hidden_size: int, kind: str = "lstm"):
        super().__init__()
        if kind not in ENCODERS:
            raise InputError(f"prompt encoder {kind!r} is not one of {', '.join(ENCODERS)}")
        self.kind, self.num_tokens = kind, num_tokens
        self.embeddings = nn.Embedding(num_tokens, hidden_size)
        self.lstm = None
        if kind == "lstm":
            self.lstm = nn.LSTM(hidden_size, hidden_size, num_layers=2, bidirectional=True, batch_first=True)
        width = 2 * hidden_size if kind == "lstm" else hidden_size
        self.mlp = None
        if kind != "none":
            self.mlp = nn.Sequential(nn.Linear(width, hidden_size), nn.ReLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self) -> torch.Tensor:  # [num_tokens, H]
        prompts = self.embeddings.weight
        if self.lstm is not None:
            prompts = self.lstm(prompts[None])[0][0]
        if self.mlp is not None:
            prompts = self.mlp(prompts)
        return prompts

    @torch.no_grad()
    def init_from_words(self, word_embeddings: torch.Tensor, task_tokens=(), generator=None, words: int = 5000):
        """The original's ``--prompt-init``: each embedding a random word's among the first ``words`` ids, or with
        task tokens (the verbalizers' ids) ``r * word + (1 - r) * task token``, a random task token and uniform r."""
        words = min(words, word_embeddings.shape[0])
        for row in range(self.num_tokens):
            word = word_embeddings[int(torch.randint(words, (), generator=generator))]
            word = word.to(torch.promote_types(word.dtype, torch.float32))
            if task_tokens:
                pick = int(torch.randint(len(task_tokens), (), generator=generator))
                ratio = float(torch.rand((), generator=generator))
                word = ratio * word + (1 - ratio) * word_embeddings[task_tokens[pick]].to(word.dtype)
            self.embeddings.weight[row] = word.to(self.embeddings.weight.dtype)


def attach_prompt(model, encoder: PromptEncoder, placeholder: int) -> None:
    """Make ``encoder`` part of ``model`` (``model.prompt_encoder``: trained, checkpointed, moved with it) and have
    the input embedding's output replaced at the placeholder ids: the k-th placeholder of a row takes the encoder's
    k-th vector. Every path that embeds ids (training, ``generation.score``'s cached contexts) goes through it."""
    embedding = model.get_input_embeddings()
    encoder.to(embedding.weight.device)
    encoder.placeholder_id = placeholder
    model.prompt_encoder = encoder

    def replace(module, args, output):
        ids = args[0]
        where = ids == encoder.placeholder_id
        if not bool(where.any()):
            return output
        counts = where.sum(-1)
        if bool(((counts != 0) & (counts != encoder.num_tokens)).any()):
            raise ValueError(f"a row holds {sorted(set(counts.flatten().tolist()))} prompt placeholders; each row "
                             f"holds none or all {encoder.num_tokens}")  # fmt: skip
        prompts = encoder().to(output.dtype)
        rows = int((counts != 0).sum())
        source = prompts.expand(rows, *prompts.shape)  # row-major order of `where`: row after row, left to right
        return output.masked_scatter(where[..., None].expand_as(output), source)

    if getattr(model, "_prompt_hook", None) is not None:
        model._prompt_hook.remove()
    model._prompt_hook = embedding.register_forward_hook(replace)


def prompt_layout(model) -> PromptLayout | None:
    """The layout a model with an attached prompt encoder needs its inputs in (None without one)."""
    encoder = getattr(model, "prompt_encoder", None)
    if encoder is None:
        return None
    return PromptLayout(encoder.num_tokens, encoder.placeholder_id)


def freeze_backbone(model, tune_prefix_layers: int = 0) -> None:
    """The original's ``--freeze-transformer``: no gradient for any weight of the model (embeddings, every layer,
    the final LayerNorm, the tied head) but its first ``tune_prefix_layers`` transformer layers and the prompt
    encoder."""
    layers = model.glm.transformer.layers
    if not 0 <= tune_prefix_layers <= len(layers):
        raise InputError(f"tune_prefix_layers {tune_prefix_layers}: the model has {len(layers)} layers")
    model.requires_grad_(False)
    for layer in layers[:tune_prefix_layers]:
        layer.requires_grad_(True)
    if getattr(model, "prompt_encoder", None) is not None:
        model.prompt_encoder.requires_grad_(True)


# ----------------------------------------------------------------------------------------------------------------
# Saving what trained


def save_trainable(model, folder, *, base_model: str, settings: dict | None = None) -> None:
    """``folder/trainable.safetensors``: every parameter that requires a gradient, by its name in the model;
    ``folder/trainable.json``: the base model folder, the prompt encoder (kind, tokens, placeholder) and the
    tensors' names. :func:`load_trainable` puts them back onto the base model."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: p.detach().contiguous().cpu() for name, p in model.named_parameters() if p.requires_grad}
    save_file(tensors, folder / TRAINABLE_FILE)
    encoder = getattr(model, "prompt_encoder", None)
    info = {
        "base_model": str(base_model),
        "prompt_encoder": None if encoder is None else {"kind": encoder.kind, "num_tokens": encoder.num_tokens,
                                                         "placeholder_id": encoder.placeholder_id},
        "tensors": sorted(tensors), **(settings or {}),
    }  # fmt: skip
    (folder / TRAINABLE_INFO).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")


def trainable_info(folder) -> dict | None:
    """A :func:`save_trainable` folder's ``trainable.json`` (None for any other folder)."""
    path = Path(folder) / TRAINABLE_INFO
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not JSON ({error})") from None
    if not isinstance(info, dict) or not isinstance(info.get("base_model"), str):
        raise InputError(f'{path}: field "base_model" is missing')
    prompt = info.get("prompt_encoder")
    if prompt is not None:
        if not isinstance(prompt, dict):
            raise InputError(f'{path}: field "prompt_encoder" is not an object')
        for name, kind in (("kind", str), ("num_tokens", int), ("placeholder_id", int)):
            if not isinstance(prompt.get(name), kind):
                raise InputError(f'{path}: field "prompt_encoder.{name}" is missing or not a {kind.__name__}')
    return info


def load_trainable(model, folder):
    """The base ``model`` with a :func:`save_trainable` folder's prompt encoder attached and its tensors loaded
    (each must name a parameter of the same shape); returns the model."""
    from safetensors.torch import load_file

    folder = Path(folder)
    info = trainable_info(folder)
    if info is None:
        raise InputError(f"{folder}: no {TRAINABLE_INFO} (not a saved P-tuning / frozen-backbone run)")
    prompt = info.get("prompt_encoder")
    if prompt is not None:
        encoder = PromptEncoder(prompt["num_tokens"], model.config.hidden_size, prompt["kind"])
        attach_prompt(model, encoder.train(model.training), prompt["placeholder_id"])
    params = dict(model.named_parameters())
    tensors = load_file(folder / TRAINABLE_FILE)
    with torch.no_grad():
        for name, tensor in tensors.items():
            if name not in params:
                raise InputError(f"{folder / TRAINABLE_FILE}: tensor {name} is not a parameter of the model")
            if tuple(tensor.shape) != tuple(params[name].shape):
                raise InputError(f"{folder / TRAINABLE_FILE}: tensor {name} has shape {tuple(tensor.shape)}, "
                                      f"the model's {tuple(params[name].shape)}")  # fmt: skip
            params[name].copy_(tensor)
    return model

"""Convert GLM checkpoints: original model-parallel training checkpoints or released folders to torchglm folders.

torchglm convert ../glm-10b-mp4 glm-10b --preset 10b          # merge 4 model-parallel shards
torchglm convert ../glm-large glm-large-st                    # released folder -> safetensors folder
torchglm convert glm-large glm-large-mp2 --model-parallel 2   # back to the original 2-way layout
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from torchglm.checkpoint import load_model_parallel_checkpoint, split_model_parallel
from torchglm.config import PRESETS, GLMConfig
from torchglm.model import GLMForConditionalGeneration

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def config_for_state_dict(state: dict, preset: str | None = None, config_file: str | None = None) -> GLMConfig:
    """A config for merged original weights: sizes read off the tensors, the rest from a preset or a file."""
    if config_file:
        base = GLMConfig.from_json_file(config_file)
    elif preset:
        base = GLMConfig.from_preset(preset)
    else:
        raise ValueError("an original training checkpoint holds no config: give --preset or --config")
    vocab_size, hidden_size = state["word_embeddings.weight"].shape
    layers = 1 + max(int(name.split(".")[2]) for name in state if name.startswith("transformer.layers."))
    found = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_layers=layers,
        max_sequence_length=state["transformer.position_embeddings.weight"].shape[0] - 1,
        block_position_encoding="transformer.block_position_embeddings.weight" in state,
        intermediate_size=state["transformer.layers.0.mlp.dense_h_to_4h.weight"].shape[0],
    )
    if found["hidden_size"] != base.hidden_size or found["num_layers"] != base.num_layers:
        raise ValueError(
            f"the checkpoint has {layers} layers of width {hidden_size}, the config {base.num_layers} of width "
            f"{base.hidden_size}: wrong --preset/--config"
        )
    return GLMConfig(**{**base.to_diff_dict(), **found, "num_attention_heads": base.num_attention_heads})


def convert(
    source: str | os.PathLike,
    output: str | os.PathLike,
    preset: str | None = None,
    config_file: str | None = None,
    dtype: str | None = None,
    model_parallel: int = 1,
    max_shard_size: str | int | None = None,
) -> Path:
    """Read ``source`` (original model-parallel checkpoint, released or torchglm folder), write ``output``.

    The output is written into a temporary folder beside it and renamed into place, so an interrupted conversion
    never leaves a half-written model folder. A released or torchglm folder is read leanly (the dtype cast
    happens tensor by tensor as it loads, see ``GLMPreTrainedModel.from_pretrained``); ``max_shard_size``
    (``"2GB"``, bytes) splits the output into transformers' sharded safetensors layout.
    """
    source, output = Path(source), Path(output)
    if (source / "latest_checkpointed_iteration.txt").is_file():
        state = load_model_parallel_checkpoint(source)
        model = GLMForConditionalGeneration(config_for_state_dict(state, preset, config_file))
        model.glm.load_state_dict(state, strict=True)
    else:
        model = GLMForConditionalGeneration.from_pretrained(source, dtype=DTYPES[dtype] if dtype else "auto")
    if dtype:
        model = model.to(DTYPES[dtype])  # a no-op for folders; original training checkpoints load as stored
    if output.exists():
        raise FileExistsError(f"{output} exists; choose a new output folder")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        if model_parallel > 1:
            write_model_parallel(model, staging, model_parallel)
        else:
            model.save_pretrained(staging, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
            _add_tokenizer(source, staging)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp made it 0700: the output is an ordinary folder
        os.replace(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output


def _add_tokenizer(source: Path, folder: Path) -> None:
    """The source folder's tokenizer files, so that the output loads alone in ``torchglm fill`` (released folders
    have them; original training checkpoints do not)."""
    if not source.is_dir() or (source / "latest_checkpointed_iteration.txt").is_file():
        return
    from torchglm.tokenization import GLMTokenizer

    try:
        tokenizer = GLMTokenizer.from_pretrained(source)
    except (OSError, ValueError):
        return
    tokenizer.save_pretrained(folder)


def write_model_parallel(model: GLMForConditionalGeneration, folder: Path, ranks: int, iteration: int = 1) -> None:
    """Write the original training-checkpoint layout, for tools that still expect it."""
    state = {name: tensor.contiguous() for name, tensor in model.glm.state_dict().items()}
    shard_folder = folder / str(iteration)
    shard_folder.mkdir(parents=True)
    for rank, shard in enumerate(split_model_parallel(state, ranks)):
        checkpoint = {"iteration": iteration, "mp_world_size": ranks, "module": shard}
        torch.save(checkpoint, shard_folder / f"mp_rank_{rank:02d}_model_states.pt")
    (folder / "latest_checkpointed_iteration.txt").write_text(str(iteration))
    (folder / "config.json").write_text(json.dumps(model.config.to_diff_dict(), indent=2))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="original training checkpoint folder, released folder or torchglm folder")
    parser.add_argument("output", help="new folder to write")
    parser.add_argument("--preset", choices=list(PRESETS), help="model size of an original training checkpoint")
    parser.add_argument("--config", dest="config_file", help="config.json for an original training checkpoint")
    parser.add_argument("--dtype", choices=list(DTYPES), help="cast the weights (default: keep)")
    parser.add_argument(
        "--model-parallel", type=int, default=1, help="write the original N-way model-parallel layout instead"
    )
    parser.add_argument(
        "--max-shard-size", help="split the safetensors output into shards of at most this size (e.g. 2GB)"
    )


def run(args: argparse.Namespace) -> int:
    from torchglm.errors import InputError

    try:
        output = convert(
            args.source,
            args.output,
            args.preset,
            args.config_file,
            args.dtype,
            args.model_parallel,
            args.max_shard_size,
        )
    except (OSError, ValueError) as error:  # the user's paths, a preset that does not fit: one line, exit 2
        raise InputError(str(error)) from None
    print(f"wrote {output}")
    return 0

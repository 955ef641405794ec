"""Checkpoint files: what a model folder must hold, and reading the released formats.

A released GLM folder holds ``config.json`` and ``pytorch_model.bin`` (a bare state dict, keys with or
without the ``glm.`` prefix, fp16 or fp32); torchglm saves ``model.safetensors``. Loading itself goes through
``transformers`` (``GLMPreTrainedModel.from_pretrained``); this module checks folders before that.
"""

from __future__ import annotations

import os
from pathlib import Path

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

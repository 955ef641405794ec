"""Models shipped inside the package: ``glm-tiny-en`` (docs/models/glm-tiny-en.md).

Their names work wherever a model folder does: ``GLMForConditionalGeneration.from_pretrained("glm-tiny-en")``,
``GLMTokenizer.from_pretrained("glm-tiny-en")``, ``torchglm fill --model glm-tiny-en`` (the default of ``fill``
and ``evaluate``). A folder of that name in the working directory wins over the built-in one.
"""

from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = "glm-tiny-en"
BUILTIN_MODELS = {"glm-tiny-en": HERE / "glm-tiny-en"}


def resolve(name_or_path: str | os.PathLike) -> str | os.PathLike:
    """The folder of a built-in model's name (stored in bf16: load it in float32 unless told otherwise);
    anything else unchanged."""
    if isinstance(name_or_path, str) and name_or_path in BUILTIN_MODELS and not Path(name_or_path).is_dir():
        folder = BUILTIN_MODELS[name_or_path]
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"built-in model {name_or_path}: {folder} is missing from this installation")
        return str(folder)
    return name_or_path


def is_builtin(name_or_path) -> bool:
    return isinstance(name_or_path, str) and name_or_path in BUILTIN_MODELS and not Path(name_or_path).is_dir()

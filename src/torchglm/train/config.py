"""The pretraining job's configuration: one typed dataclass per concern, read from YAML, overridable per field.

A config file mirrors :class:`JobConfig`: top-level sections ``model``, ``data``, ``train``, ``optim``,
``schedule``, ``parallel``, ``checkpoint``, ``logging``, each a mapping of that section's fields. Command-line
overrides are ``--section.field VALUE`` (``VALUE`` is read as YAML: ``1e-4``, ``true``, ``[0.9, 0.95]``, ``null``);
the two free-form mappings take one key more: ``--model.overrides.hidden_size 128`` (a ``GLMConfig`` field) and
``--data.blanks.bert_prob 0.5`` (a ``BlankConfig`` field). An unknown section, field or key is an error that
names it, whether it comes from the file or the command line; so is a value of the wrong type.

Example::

    job = load_job_config("configs/pretrain/tiny.yaml", ["--optim.lr", "3e-4", "--train.steps", "50"])
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration that cannot be run: unknown key, wrong type, inconsistent values."""


@dataclass
class ModelConfig:
    preset: str = "tiny"
    """A GLM preset (``torchglm.config.PRESETS``): base, large, large-chinese, roberta-large, 410m, 515m, 2b, 10b."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """``GLMConfig`` fields replacing the preset's (e.g. ``{output_dropout_prob: 0.0}``)."""
    init_from: str | None = None
    """A ``from_pretrained`` folder to continue pretraining from; null trains from a random initialisation."""


@dataclass
class DataConfig:
    path: str = ""
    """Token-shards folder written by ``torchglm prepare-data`` (training samples)."""
    eval_path: str | None = None
    """Held-out token-shards folder for the periodic evaluation loss; null skips evaluation."""
    objective: str = "glm-large"
    """A blank-infilling preset (``torchglm.data.BLANK_PRESETS``) that ``blanks`` refines."""
    blanks: dict[str, Any] = field(default_factory=dict)
    """``BlankConfig`` fields over the preset: ``seq_length``, ``bert_prob``, ``gap_sentence_prob``, ..."""
    num_workers: int = 1
    """Processes building batches beside each training process (0 builds them in the training process)."""
    pad_to_multiple_of: int | None = None
    """Pad every batch's length to a multiple of this (fewer distinct shapes); null pads to the longest sample."""


@dataclass
class TrainConfig:
    output_dir: str = "runs/pretrain"
    """Run folder: checkpoints/, log.jsonl, tensorboard/, config.yaml and the final export (final/)."""
    steps: int = 1000
    """Optimizer steps to train for."""
    global_batch_size: int = 32
    """Samples per optimizer step, over all data-parallel ranks and accumulation steps together."""
    micro_batch_size: int = 8
    """Samples per forward/backward on one rank; accumulation = global / (micro * data-parallel size)."""
    seed: int = 1234
    """Seed of the initialisation, of dropout and of the data sampling."""
    device: str = "auto"
    """'auto' (cuda when available, else cpu), 'cpu' or 'cuda'."""
    precision: str = "fp32"
    """'fp32' or 'bf16' (bf16 compute with fp32 master weights and fp32 gradient reduction)."""
    eval_interval: int = 0
    """Evaluate every this many steps (and after the last one); 0 turns evaluation off."""
    eval_batches: int = 10
    """Micro-batches per rank in each evaluation (always the same held-out samples)."""
    max_nonfinite_steps: int = 5
    """A step with a non-finite loss or gradient norm is skipped; this many in a row aborts the run."""


@dataclass
class OptimConfig:
    lr: float = 1e-4
    """Peak learning rate (reached at the end of the warmup)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    """AdamW (beta1, beta2)."""
    eps: float = 1e-6
    """AdamW epsilon."""
    weight_decay: float = 0.1
    """Decoupled weight decay; never applied to LayerNorm parameters or biases."""
    clip_grad: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping (the norm is still logged)."""


@dataclass
class ScheduleConfig:
    warmup_steps: int = 0
    """Linear warmup from 0 to the peak learning rate over this many steps."""
    decay_style: str = "cosine"
    """'cosine', 'linear' or 'constant' decay after the warmup."""
    decay_steps: int | None = None
    """Step at which the decay reaches ``min_lr_ratio`` (null: ``train.steps``); constant after it."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak."""


@dataclass
class ParallelConfig:
    engine: str = "fsdp"
    """'fsdp' (PyTorch FSDP2 + optional DTensor tensor parallelism) or 'deepspeed' (ZeRO, needs ``deepspeed``)."""
    tp_size: int = 1
    """Tensor-parallel degree (fsdp engine); the data-parallel size is world size / tp_size."""
    activation_checkpointing: bool = False
    """Recompute each transformer block's activations in the backward pass (less memory, ~1/3 more compute)."""
    reshard_after_forward: bool = True
    """FSDP2: free the gathered parameters after the forward (ZeRO-3 memory); false keeps them (ZeRO-2 like)."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage (2 or 3) when ``engine: deepspeed``."""
    backend: str = "auto"
    """torch.distributed backend: 'auto' (nccl on GPU, gloo on CPU), 'nccl' or 'gloo'."""


@dataclass
class CheckpointConfig:
    interval: int = 1000
    """Save every this many steps (and after the last one); 0 saves only at the end."""
    keep_last: int = 3
    """Complete checkpoints kept; older ones are deleted after each successful save."""
    resume: str | None = None
    """null (start fresh), 'latest' (the newest complete checkpoint of this run, if any) or a checkpoint folder."""
    export_final: bool = True
    """Export the final model with ``save_pretrained`` to ``output_dir/final`` (loads with ``from_pretrained``)."""


@dataclass
class LoggingConfig:
    interval: int = 10
    """Write a log record every this many steps (the first and the last step are always logged)."""
    progress_bar: bool = True
    """tqdm progress bar on the terminal (rank 0)."""
    tensorboard: bool = True
    """TensorBoard event files under ``output_dir/tensorboard`` (needs the ``tensorboard`` package)."""
    peak_tflops: float | None = None
    """Peak TFLOP/s of one device for the MFU estimate; null measures a large matmul at start-up."""


@dataclass
class JobConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Values that are wrong whatever the machine; world-size checks are in :func:`check_world`."""
        t, o, s, p, c = self.train, self.optim, self.schedule, self.parallel, self.checkpoint
        positive = {
            "train.steps": t.steps,
            "train.global_batch_size": t.global_batch_size,
            "train.micro_batch_size": t.micro_batch_size,
            "train.eval_batches": t.eval_batches,
            "train.max_nonfinite_steps": t.max_nonfinite_steps,
            "parallel.tp_size": p.tp_size,
            "checkpoint.keep_last": c.keep_last,
            "logging.interval": self.logging.interval,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        for name, value in {
            "train.eval_interval": t.eval_interval,
            "checkpoint.interval": c.interval,
            "schedule.warmup_steps": s.warmup_steps,
        }.items():
            if value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        choices = {
            "train.device": (t.device, ("auto", "cpu", "cuda")),
            "train.precision": (t.precision, ("fp32", "bf16")),
            "schedule.decay_style": (s.decay_style, ("cosine", "linear", "constant")),
            "parallel.engine": (p.engine, ("fsdp", "deepspeed")),
            "parallel.backend": (p.backend, ("auto", "nccl", "gloo")),
            "parallel.zero_stage": (p.zero_stage, (2, 3)),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {list(allowed)}, got {value!r}")
        if t.global_batch_size % t.micro_batch_size:
            raise ConfigError(
                f"train.global_batch_size ({t.global_batch_size}) is not a multiple of "
                f"train.micro_batch_size ({t.micro_batch_size})"
            )
        if o.lr <= 0 or o.eps <= 0 or o.weight_decay < 0 or o.clip_grad < 0:
            raise ConfigError("optim: lr and eps must be positive, weight_decay and clip_grad >= 0")
        if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {o.betas}")
        if not 0.0 <= s.min_lr_ratio <= 1.0:
            raise ConfigError(f"schedule.min_lr_ratio must be in [0, 1], got {s.min_lr_ratio}")
        if s.decay_steps is not None and s.decay_steps < 0:
            raise ConfigError(f"schedule.decay_steps must be >= 0, got {s.decay_steps}")
        if p.engine == "deepspeed" and p.tp_size != 1:
            raise ConfigError("parallel.tp_size > 1 needs parallel.engine: fsdp (DeepSpeed ZeRO is data-parallel only)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def check_world(job: JobConfig, world_size: int) -> tuple[int, int]:
    """The data-parallel size and the gradient-accumulation steps for ``world_size`` processes, or a clear error."""
    t, tp = job.train, job.parallel.tp_size
    if world_size % tp:
        raise ConfigError(f"the world size ({world_size}) is not a multiple of parallel.tp_size ({tp})")
    dp = world_size // tp
    if t.global_batch_size % dp:
        raise ConfigError(
            f"train.global_batch_size ({t.global_batch_size}) is not divisible by the data-parallel size ({dp} = "
            f"{world_size} processes / tp_size {tp})"
        )
    per_rank = t.global_batch_size // dp
    if per_rank % t.micro_batch_size:
        raise ConfigError(
            f"train.global_batch_size / data-parallel size = {per_rank} samples per rank is not a multiple of "
            f"train.micro_batch_size ({t.micro_batch_size})"
        )
    return dp, per_rank // t.micro_batch_size


# ----------------------------------------------------------------------------------------------------------------
# Reading: YAML file + overrides -> JobConfig, every key and type checked

SECTIONS: dict[str, type] = typing.get_type_hints(JobConfig)
"""Section name -> its dataclass, in file order."""


def _free_mapping_fields() -> dict[str, list[str]]:
    """The keys allowed inside the two free-form mappings (``model.overrides``, ``data.blanks``)."""
    from torchglm.config import GLMConfig
    from torchglm.data import BlankConfig

    return {
        "model.overrides": sorted(f.name for f in dataclasses.fields(GLMConfig)),
        "data.blanks": sorted(f.name for f in dataclasses.fields(BlankConfig)),
    }


def _unknown(kind: str, name: str, known) -> ConfigError:
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(sorted(known))}"
    return ConfigError(f"unknown {kind} {name!r}{hint}")


def _check_type(where: str, value: Any, annotation) -> Any:
    """Return ``value`` if it fits ``annotation`` (ints are accepted for floats); else a ConfigError."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(where, value, option)
            except ConfigError as error:
                errors.append(error)
        raise errors[0]
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        (item,) = typing.get_args(annotation)
        return [_check_type(f"{where}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if annotation is Any:
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is int and isinstance(value, bool) or not isinstance(value, annotation):
        raise ConfigError(f"{where} must be {annotation.__name__}, got {value!r} ({type(value).__name__})")
    return value


def job_config_from_dict(raw: dict[str, Any], source: str = "config") -> JobConfig:
    """Build and check a :class:`JobConfig` from nested mappings (unknown sections/fields/keys are errors)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    free = _free_mapping_fields()
    sections = {}
    for name, values in raw.items():
        if name not in SECTIONS:
            raise _unknown(f"section in {source}:", name, SECTIONS)
        cls = SECTIONS[name]
        values = values or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {name!r} must be a mapping, got {values!r}")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in values.items():
            if key not in hints:
                raise _unknown(f"field in {source}:", f"{name}.{key}", [f"{name}.{k}" for k in hints])
            kwargs[key] = _check_type(f"{name}.{key}", value, hints[key])
            if f"{name}.{key}" in free:
                for inner in kwargs[key]:
                    if inner not in free[f"{name}.{key}"]:
                        raise _unknown(f"key in {source}: {name}.{key}", inner, free[f"{name}.{key}"])
        sections[name] = cls(**kwargs)
    return JobConfig(**sections)


def parse_override(argument: str, value: str) -> tuple[list[str], Any]:
    """``("--optim.lr", "3e-4")`` -> ``(["optim", "lr"], 0.0003)``; the value is read as YAML."""
    path = argument.lstrip("-").replace("-", "_").split(".")
    parsed = yaml.safe_load(value) if value != "" else ""
    if isinstance(parsed, str) and _looks_like_float(parsed):
        parsed = float(parsed)  # YAML 1.1 reads "3e-4" (no dot) as a string
    return path, parsed


def _looks_like_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.strip().lower() not in ("nan", "inf", "-inf", "infinity", "-infinity")


def apply_overrides(raw: dict[str, Any], overrides: list[tuple[list[str], Any]]) -> dict[str, Any]:
    """Set each ``section.field[.key]`` path in a copy of the raw mapping; unknown paths are errors."""
    out = {k: dict(v or {}) for k, v in raw.items()}
    free = _free_mapping_fields()
    for path, value in overrides:
        dotted = ".".join(path)
        if len(path) < 2 or path[0] not in SECTIONS:
            raise _unknown("option", f"--{dotted}", [f"--{s}.FIELD" for s in SECTIONS])
        section, name = path[0], path[1]
        hints = typing.get_type_hints(SECTIONS[section])
        if name not in hints:
            raise _unknown("option", f"--{section}.{name}", [f"--{section}.{k}" for k in hints])
        target = out.setdefault(section, {})
        if len(path) == 2:
            target[name] = value
        elif len(path) == 3 and f"{section}.{name}" in free:
            if path[2] not in free[f"{section}.{name}"]:
                raise _unknown(f"key of --{section}.{name}", path[2], free[f"{section}.{name}"])
            target[name] = {**(target.get(name) or {}), path[2]: value}
        else:
            raise _unknown("option", f"--{dotted}", [f"--{section}.{k}" for k in hints])
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    return raw


def load_job_config(path: str | Path | None, overrides: list[str] | None = None) -> JobConfig:
    """Read a YAML config (or the defaults when ``path`` is None) and apply ``--section.field VALUE`` overrides.

    ``overrides`` is a flat argument list: ``["--optim.lr", "3e-4", "--train.steps=50"]``.
    """
    raw = read_yaml(path) if path is not None else {}
    pairs, args = [], list(overrides or [])
    while args:
        argument = args.pop(0)
        if not argument.startswith("--"):
            raise ConfigError(f"expected an option --section.field, got {argument!r}")
        if "=" in argument:
            argument, value = argument.split("=", 1)
        elif args:
            value = args.pop(0)
        else:
            raise ConfigError(f"option {argument} needs a value")
        pairs.append(parse_override(argument, value))
    return job_config_from_dict(apply_overrides(raw, pairs), source=str(path) if path else "config")


def override_options() -> list[tuple[str, str]]:
    """Every ``--section.field`` option with the first line of its docstring, for ``--help``."""
    import ast
    import inspect

    options = []
    for section, cls in SECTIONS.items():
        docs = {}
        tree = ast.parse(inspect.getsource(cls))
        body = tree.body[0].body
        for node, after in zip(body, body[1:], strict=False):
            if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr):
                docs[node.target.id] = str(after.value.value).strip().splitlines()[0]
        for f in dataclasses.fields(cls):
            options.append((f"--{section}.{f.name}", docs.get(f.name, "")))
    return options

"""The pretraining job's configuration: one typed dataclass per concern, read from YAML, overridable per field.

A config file mirrors :class:`JobConfig`: top-level sections ``model``, ``data``, ``train``, ``optim``,
``schedule``, ``parallel``, ``checkpoint``, ``logging``, each a mapping of that section's fields. Command-line
overrides are ``--section.field VALUE`` (``VALUE`` is read as YAML: ``1e-4``, ``true``, ``[0.9, 0.95]``, ``null``);
the two free-form mappings take one key more: ``--model.overrides.hidden_size 128`` (a ``GLMConfig`` field) and
``--data.blanks.bert_prob 0.5`` (a ``BlankConfig`` field). An unknown section, field or key is an error that
names it, whether it comes from the file or the command line; so is a value of the wrong type or out of range.

Why pydantic, not jsonargparse: the command line stays plain argparse (one module per command); what we want
from a library is the validation of nested dataclass sections read from YAML, with a structured location for each
error. Pydantic does that, with strict types (no ``"10"`` -> 10, no ``True`` -> 1; an int is a fine float),
``Literal`` choices, ``Field`` bounds and attribute docstrings as field descriptions (the ``--help`` text).

Example::

    job = load_job_config("configs/pretrain/tiny.yaml", ["--optim.lr", "3e-4", "--train.steps", "50"])
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError

from torchglm.errors import InputError


class ConfigError(InputError):
    """A configuration that cannot be run: unknown key, wrong type, inconsistent values."""


_STRICT = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True, validate_assignment=False)
Positive = Annotated[int, Field(gt=0)]
NonNegative = Annotated[int, Field(ge=0)]


def _names(cls: type) -> list[str]:
    return sorted(f.name for f in dataclasses.fields(cls))


def _free_mapping_fields() -> dict[str, list[str]]:
    """The keys allowed inside the two free-form mappings (``model.overrides``, ``data.blanks``)."""
    from torchglm.config import GLMConfig
    from torchglm.data import BlankConfig

    return {"model.overrides": _names(GLMConfig), "data.blanks": _names(BlankConfig)}


def _keys_of(where: str) -> AfterValidator:
    """A free-form mapping whose keys must be fields of the dataclass behind ``where``."""

    def check(value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if key not in _free_mapping_fields()[where]:
                raise PydanticCustomError("unknown_key", "unknown key {key!r}", {"key": key, "where": where})
        return value

    return AfterValidator(check)


@dataclass(config=_STRICT)
class ModelConfig:
    preset: str = "tiny"
    """A GLM preset (``torchglm.config.PRESETS``): base, large, large-chinese, roberta-large, 410m, 515m, 2b, 10b."""
    overrides: Annotated[dict[str, Any], _keys_of("model.overrides")] = field(default_factory=dict)
    """``GLMConfig`` fields replacing the preset's (e.g. ``{output_dropout_prob: 0.0}``)."""
    init_from: str | None = None
    """A ``from_pretrained`` folder to continue pretraining from; null trains from a random initialisation."""


@dataclass(config=_STRICT)
class DataConfig:
    path: str = ""
    """Token-shards folder written by ``torchglm prepare-data`` (training samples)."""
    eval_path: str | None = None
    """Held-out token-shards folder for the periodic evaluation loss; null skips evaluation."""
    objective: str = "glm-large"
    """A blank-infilling preset (``torchglm.data.BLANK_PRESETS``) that ``blanks`` refines."""
    blanks: Annotated[dict[str, Any], _keys_of("data.blanks")] = field(default_factory=dict)
    """``BlankConfig`` fields over the preset: ``seq_length``, ``bert_prob``, ``gap_sentence_prob``, ..."""
    num_workers: NonNegative = 1
    """Processes building batches beside each training process (0 builds them in the training process)."""
    verify: bool = False
    """Check every shard's full SHA-256 against the manifest before training (reads the whole corpus once; each
    shard's size and a sampled hash are checked on every open anyway)."""
    pad_to_multiple_of: int | None = None
    """Pad every batch's length to a multiple of this (fewer distinct shapes); null pads to the longest sample."""


@dataclass(config=_STRICT)
class TrainConfig:
    output_dir: str = "runs/pretrain"
    """Run folder: checkpoints/, log.jsonl, tensorboard/, config.yaml and the final export (final/)."""
    steps: Positive = 1000
    """Optimizer steps to train for."""
    global_batch_size: Positive = 32
    """Samples per optimizer step, over all data-parallel ranks and accumulation steps together."""
    micro_batch_size: Positive = 8
    """Samples per forward/backward on one rank; accumulation = global / (micro * data-parallel size)."""
    seed: int = 1234
    """Seed of the initialisation, of dropout and of the data sampling."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """'auto' (cuda when available, else cpu), 'cpu' or 'cuda'."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """'fp32' or 'bf16' (bf16 compute with fp32 master weights and fp32 gradient reduction)."""
    eval_interval: NonNegative = 0
    """Evaluate every this many steps (and after the last one); 0 turns evaluation off."""
    eval_batches: Positive = 10
    """Micro-batches per rank in each evaluation (always the same held-out samples)."""
    max_nonfinite_steps: Positive = 5
    """A step with a non-finite loss or gradient norm is skipped; this many in a row aborts the run."""


@dataclass(config=_STRICT)
class OptimConfig:
    lr: Annotated[float, Field(gt=0)] = 1e-4
    """Peak learning rate (reached at the end of the warmup)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    """AdamW (beta1, beta2)."""
    eps: Annotated[float, Field(gt=0)] = 1e-6
    """AdamW epsilon."""
    weight_decay: Annotated[float, Field(ge=0)] = 0.1
    """Decoupled weight decay; never applied to LayerNorm parameters or biases."""
    clip_grad: Annotated[float, Field(ge=0)] = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping (the norm is still logged)."""


@dataclass(config=_STRICT)
class ScheduleConfig:
    warmup_steps: NonNegative = 0
    """Linear warmup from 0 to the peak learning rate over this many steps."""
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] | None = None
    """Warmup as a fraction of ``train.steps`` (the finetuning recipes' way, e.g. 0.06); replaces warmup_steps."""
    decay_style: Literal["cosine", "linear", "constant"] = "cosine"
    """'cosine', 'linear' or 'constant' decay after the warmup."""
    decay_steps: NonNegative | None = None
    """Step at which the decay reaches ``min_lr_ratio`` (null: ``train.steps``); constant after it."""
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.1
    """Final learning rate as a fraction of the peak."""


@dataclass(config=_STRICT)
class ParallelConfig:
    engine: Literal["fsdp", "deepspeed"] = "fsdp"
    """'fsdp' (PyTorch FSDP2 + optional DTensor tensor parallelism) or 'deepspeed' (ZeRO, needs ``deepspeed``)."""
    tp_size: Positive = 1
    """Tensor-parallel degree (fsdp engine); the data-parallel size is world size / tp_size."""
    activation_checkpointing: bool = False
    """Recompute each transformer block's activations in the backward pass (less memory, ~1/3 more compute)."""
    reshard_after_forward: bool = True
    """FSDP2: free the gathered parameters after the forward (ZeRO-3 memory); false keeps them (ZeRO-2 like)."""
    zero_stage: Literal[2, 3] = 2
    """DeepSpeed ZeRO stage (2 or 3) when ``engine: deepspeed``."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """torch.distributed backend: 'auto' (nccl on GPU, gloo on CPU), 'nccl' or 'gloo'."""


@dataclass(config=_STRICT)
class CheckpointConfig:
    interval: NonNegative = 1000
    """Save every this many steps (and after the last one); 0 saves only at the end."""
    keep_last: Positive = 3
    """Complete checkpoints kept; older ones are deleted after each successful save."""
    resume: str | None = None
    """null (start fresh), 'latest' (the newest complete checkpoint of this run, if any) or a checkpoint folder."""
    export_final: bool = True
    """Export the final model with ``save_pretrained`` to ``output_dir/final`` (loads with ``from_pretrained``)."""
    trust_pickled_classes: bool = False
    """DeepSpeed resume: also load checkpoint files whose pickles name classes outside DeepSpeed's known state
    classes (unpickling them can run code: only for checkpoints you made). Off: such a checkpoint is refused."""


@dataclass(config=_STRICT)
class LoggingConfig:
    interval: Positive = 10
    """Write a log record every this many steps (the first and the last step are always logged)."""
    progress_bar: bool = True
    """tqdm progress bar on the terminal (rank 0)."""
    tensorboard: bool = True
    """TensorBoard event files under ``output_dir/tensorboard`` (needs the ``tensorboard`` package)."""
    peak_tflops: float | None = None
    """Peak TFLOP/s of one device for the MFU estimate; null measures a large matmul at start-up."""


@dataclass(config=_STRICT)
class JobConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    @field_validator("*", mode="before")
    @classmethod
    def _section_from_mapping(cls, value: Any, info: ValidationInfo) -> Any:
        return section_from_mapping(cls, value, info)

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Rules across fields (the types hold the rest); world-size checks are in :func:`check_world`."""
        t, o = self.train, self.optim
        if t.global_batch_size % t.micro_batch_size:
            raise ConfigError(
                f"train.global_batch_size ({t.global_batch_size}) is not a multiple of "
                f"train.micro_batch_size ({t.micro_batch_size})"
            )
        if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {o.betas}")
        for name in ("lr", "eps", "weight_decay", "clip_grad"):
            value = getattr(o, name, None)
            if isinstance(value, float | int) and not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"optim.{name} must be a finite number >= 0, got {value}")
        if not o.lr > 0:
            raise ConfigError(f"optim.lr must be > 0, got {o.lr}")
        if self.parallel.engine == "deepspeed" and self.parallel.tp_size != 1:
            raise ConfigError("parallel.tp_size > 1 needs parallel.engine: fsdp (DeepSpeed ZeRO is data-parallel only)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def section_from_mapping(root: type, value: Any, info: ValidationInfo) -> Any:
    """Strict mode takes a section only as its dataclass: build it from a mapping (null: the defaults). Fields the
    mapping leaves out keep the job class's own defaults for that section (a finetuning job's linear schedule
    survives ``--schedule.warmup_ratio 0.1``), not the section class's."""
    if value is None or isinstance(value, dict):
        spec = next(f for f in dataclasses.fields(root) if f.name == info.field_name)
        base = {}
        if spec.default_factory is not dataclasses.MISSING:
            default = spec.default_factory()
            base = {f.name: getattr(default, f.name) for f in dataclasses.fields(default)}
        return sections_of(root)[info.field_name](**{**base, **{str(k): v for k, v in (value or {}).items()}})
    return value


def sections_of(root: type) -> dict[str, type]:
    """Section name -> its dataclass, in file order, of a job config class (JobConfig, the finetuning jobs)."""
    return typing.get_type_hints(root)


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
# Reading: YAML file + overrides -> JobConfig; pydantic checks every key and value, its errors become ConfigErrors

SECTIONS: dict[str, type] = sections_of(JobConfig)
"""Section name -> its dataclass, in file order (pretraining)."""

_EXPECTED = {"int_type": "int", "float_type": "float", "string_type": "str", "bool_type": "bool"}
_EXPECTED |= {"list_type": "a list", "dict_type": "a mapping", "dataclass_exact_type": "a mapping"}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _unknown(kind: str, name: str, known) -> ConfigError:
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(sorted(known))}"
    return ConfigError(f"unknown {kind} {name!r}{hint}")


def _describe(error, source: str, sections: dict[str, type]) -> str:
    """One pydantic error as one line naming the dotted field, the bad value and what was expected."""
    kind, loc, value, ctx = error["type"], error["loc"], error["input"], error.get("ctx", {})
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        known = sections if len(loc) == 1 else [f"{loc[0]}.{k}" for k in _names(sections[loc[0]])]
        return str(_unknown(f"{'section' if len(loc) == 1 else 'field'} in {source}:", where, known))
    if kind == "unknown_key":
        return str(_unknown(f"key in {source}: {ctx['where']}", ctx["key"], _free_mapping_fields()[ctx["where"]]))
    if kind == "value_error" and isinstance(ctx.get("error"), ConfigError):
        return str(ctx["error"])  # from JobConfig.check
    if kind in _EXPECTED:
        return f"{where} must be {_EXPECTED[kind]}, got {value!r}"
    if kind in _BOUNDS:
        return f"{where} must be {_BOUNDS[kind]} {next(iter(ctx.values())):g}, got {value!r}"
    if kind == "literal_error":
        choices = typing.get_args(sections[loc[0]].__pydantic_fields__[loc[1]].annotation)
        return f"{where} must be one of {list(choices)}, got {value!r}"
    return f"{where or source}: {error['msg']}, got {value!r}"


def job_config_from_dict(raw: dict[str, Any], source: str = "config", root: type = JobConfig):
    """Build and check a job config (``root``: :class:`JobConfig` or a finetuning job) from nested mappings
    (unknown sections/fields/keys are errors)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return root(**{str(k): v for k, v in raw.items()})
    except ValidationError as error:
        sections = sections_of(root)
        raise ConfigError("\n".join(_describe(e, source, sections) for e in error.errors())) from None


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


def apply_overrides(
    raw: dict[str, Any], overrides: list[tuple[list[str], Any]], root: type = JobConfig
) -> dict[str, Any]:
    """Set each ``section.field[.key]`` path in a copy of the raw mapping; unknown paths are errors."""
    out = {k: dict(v or {}) for k, v in raw.items()}
    free = _free_mapping_fields()
    sections = sections_of(root)
    for path, value in overrides:
        if len(path) < 2 or path[0] not in sections:
            raise _unknown("option", f"--{'.'.join(path)}", [f"--{s}.FIELD" for s in sections])
        section, name, fields = path[0], path[1], _names(sections[path[0]])
        target = out.setdefault(section, {})
        if len(path) == 2 and name in fields:
            target[name] = value
        elif len(path) == 3 and f"{section}.{name}" in free:
            if path[2] not in free[f"{section}.{name}"]:
                raise _unknown(f"key of --{section}.{name}", path[2], free[f"{section}.{name}"])
            target[name] = {**(target.get(name) or {}), path[2]: value}
        else:
            raise _unknown("option", f"--{'.'.join(path)}", [f"--{section}.{k}" for k in fields])
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


def load_job_config(path: str | Path | None, overrides: list[str] | None = None, root: type = JobConfig):
    """Read a YAML config (or the defaults when ``path`` is None) and apply ``--section.field VALUE`` overrides.

    ``overrides`` is a flat argument list: ``["--optim.lr", "3e-4", "--train.steps=50"]``; ``root`` the job
    class (:class:`JobConfig`, or a finetuning job).
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
    source = str(path) if path else "config"
    return job_config_from_dict(apply_overrides(raw, pairs, root), source=source, root=root)


def override_options(root: type = JobConfig) -> list[tuple[str, str]]:
    """Every ``--section.field`` option with the first line of its description (docstring), for ``--help``."""
    return [
        (f"--{section}.{name}", (info.description or "").strip().split("\n")[0])
        for section, cls in sections_of(root).items()
        for name, info in cls.__pydantic_fields__.items()
    ]

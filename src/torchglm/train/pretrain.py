"""Pretrain GLM from scratch or continue pretraining, on one CPU/GPU or many processes with torchrun.

    torchglm pretrain --config configs/pretrain/tiny.yaml
    torchglm pretrain --config configs/pretrain/tiny.yaml --resume            # continue the run after a crash
    torchglm pretrain --config configs/pretrain/base.yaml --data.path data/bert-shards --optim.lr 3e-4
    torchrun --nproc-per-node 8 -m torchglm.cli pretrain --config configs/pretrain/large.yaml --train.precision bf16

Every field of the config can be overridden with ``--section.field VALUE`` (see docs/pretraining.md); the
run folder (``train.output_dir``) receives ``config.yaml``, ``log.jsonl``, ``tensorboard/``, ``checkpoints/`` and
the final ``save_pretrained`` export (``final/``). Everything that can be checked is checked before the model is
built: config keys and types, batch sizes against the world size, the token shards, the resume checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from torchglm.config import GLMConfig
from torchglm.data import (
    BLANK_MODES,
    BLANK_PRESETS,
    BlankConfig,
    BlankInfillingBuilder,
    TokenShards,
    build_pretraining_stream,
)
from torchglm.losses import BlankInfillingLoss
from torchglm.model import training_flops

from .checkpoint import CheckpointError, RunLock, check_compatible, find_latest, resolve_resume
from .config import ConfigError, JobConfig, check_world, load_job_config, override_options
from .logging import MetricLogger, plot_log, setup_console_logging
from .parallel import World, close_distributed, init_distributed, world_size_from_env
from .recipe import build_model, build_trainer, export_model
from .trainer import Trainer

logger = logging.getLogger("torchglm.train")

SIGNATURE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_sequence_length",
    "block_position_encoding",
)
"""GLMConfig fields that make checkpoints incompatible when they differ (dropout may change on resume)."""


# ----------------------------------------------------------------------------------------------------------------
# Plan: every check that needs no model and no compute


@dataclass
class Plan:
    job: JobConfig
    model_config: GLMConfig
    blanks: BlankConfig
    world_size: int
    dp_size: int
    accumulation: int
    resume_from: Path | None
    train_shards: TokenShards
    eval_shards: TokenShards | None

    @property
    def output_dir(self) -> Path:
        return Path(self.job.train.output_dir)

    def signature(self) -> dict[str, Any]:
        return model_signature(self.model_config, self.job.parallel.tp_size)


def model_signature(config: GLMConfig, tp_size: int = 1) -> dict[str, Any]:
    """What a checkpoint must share with a run to resume it: the model's shape, and the tensor-parallel degree
    (its checkpoints hold ``query_key_value`` regrouped per rank, see ``torchglm.model.tensor_parallel_layout``;
    the data-parallel size may change)."""
    return {**{name: getattr(config, name) for name in SIGNATURE_FIELDS}, "tensor_parallel_size": tp_size}


def build_model_config(job: JobConfig) -> GLMConfig:
    """The preset (or ``init_from``'s config) with ``model.overrides``; invalid values are ConfigErrors."""
    m = job.model
    try:
        if not m.init_from:
            return GLMConfig.from_preset(m.preset, **m.overrides)
        config = GLMConfig.from_pretrained(m.init_from)
        for key, value in m.overrides.items():
            setattr(config, key, value)
        config._check_values()
        return config
    except (ValueError, OSError) as error:
        raise ConfigError(f"model: {error}") from error


def build_blank_config(job: JobConfig) -> BlankConfig:
    d = job.data
    if d.objective not in BLANK_PRESETS:
        raise ConfigError(f"data.objective {d.objective!r} is not one of {sorted(BLANK_PRESETS)}")
    try:
        return dataclasses.replace(BLANK_PRESETS[d.objective], **d.blanks)
    except ValueError as error:
        raise ConfigError(f"data.blanks: {error}") from error


def open_shards(path: str | None, what: str, verify: bool = False) -> TokenShards | None:
    if not path:
        return None
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"{what} {folder} does not exist: write token shards there with `torchglm prepare-data`")
    if not (folder / "manifest.json").is_file():
        raise ConfigError(
            f"{what} {folder} holds no token shards (no manifest.json): run `torchglm prepare-data INPUTS "
            f"--output {folder}` first"
        )
    try:
        shards = TokenShards(folder, verify=verify)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{what}: {error}") from None
    if shards.num_tokens == 0:
        raise ConfigError(f"{what} {folder} holds no tokens (its shards are empty)")
    return shards


def plan_run(job: JobConfig, world_size: int | None = None) -> Plan:
    """Check the job against the machine, data and checkpoints, without building the model (fast, no compute)."""
    world_size = world_size_from_env() if world_size is None else world_size
    dp, accumulation = check_world(job, world_size)
    model_config = build_model_config(job)
    blanks = build_blank_config(job)
    if blanks.seq_length > model_config.max_sequence_length:
        raise ConfigError(
            f"data.blanks.seq_length ({blanks.seq_length}) exceeds the model's max_sequence_length "
            f"({model_config.max_sequence_length})"
        )
    if not job.data.path:
        raise ConfigError("data.path is empty: give the token-shards folder written by `torchglm prepare-data`")
    train_shards = open_shards(job.data.path, "data.path", job.data.verify)
    eval_shards = open_shards(job.data.eval_path, "data.eval_path", job.data.verify)
    for shards in filter(None, (train_shards, eval_shards)):
        top = max(shards.vocab_size, shards.special_ids.max_id + 1)
        if top > model_config.vocab_size:
            raise ConfigError(
                f"{shards.folder} was tokenized with {top} ids but the model's vocab_size is "
                f"{model_config.vocab_size}: set model.overrides.vocab_size or use the matching tokenizer"
            )
        try:  # the builder checks that the shards' special ids serve the objective (e.g. [dBLOCK])
            BlankInfillingBuilder(blanks, shards.special_ids, shards.sentence_end_table())
        except ValueError as error:
            raise ConfigError(f"data.blanks do not fit {shards.folder}: {error}") from error
    if job.parallel.engine == "deepspeed":
        from .deepspeed import require_deepspeed

        require_deepspeed()
    if job.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no GPU is available")
    resume_from = check_run_folder(job, model_config)
    if job.model.init_from:
        from torchglm.checkpoint import check_checkpoint_folder

        try:
            check_checkpoint_folder(job.model.init_from)
        except (OSError, ValueError) as error:
            raise ConfigError(f"model.init_from: {error}") from None
    return Plan(job, model_config, blanks, world_size, dp, accumulation, resume_from, train_shards, eval_shards)


# ----------------------------------------------------------------------------------------------------------------
# Building and running


def build_streams(plan: Plan, world: World):
    """The per-rank training stream (resumable) and a factory of the fixed evaluation batches."""
    job = plan.job
    stream = build_pretraining_stream(
        job.data.path,
        plan.blanks,
        batch_size=job.train.micro_batch_size,
        seed=job.train.seed,
        rank=world.dp_rank,
        world_size=world.dp_size,
        pad_to_multiple_of=job.data.pad_to_multiple_of,
    )
    # A generator of its own: a DataLoader draws its workers' base seed from the global RNG otherwise, which
    # would shift the dropout masks (and break exact resume, where the loader is created again).
    generator = torch.Generator().manual_seed(job.train.seed)
    train_data = stream.loader(num_workers=job.data.num_workers, generator=generator)
    eval_data = None
    if plan.eval_shards is not None and job.train.eval_interval:
        eval_stream = build_pretraining_stream(
            job.data.eval_path,
            plan.blanks,
            batch_size=job.train.micro_batch_size,
            seed=job.train.seed + 1,
            rank=world.dp_rank,
            world_size=world.dp_size,
            pad_to_multiple_of=job.data.pad_to_multiple_of,
        )

        def eval_data():
            return (eval_stream.batch(step) for step in range(job.train.eval_batches))

    return train_data, eval_data


def check_run_folder(job: JobConfig, model_config: GLMConfig) -> Path | None:
    """The checkpoint to resume (None: a fresh start), checked for everything the run needs before any write:
    no earlier checkpoints without ``--resume``, the same model, seed and batch sizes, DeepSpeed files that
    unpickle nothing unknown, a writable run folder. Shared by pretraining and the finetuning recipes."""
    checkpoints = Path(job.train.output_dir) / "checkpoints"
    resume_from = resolve_resume(job.checkpoint.resume, checkpoints)
    if job.checkpoint.resume is None and find_latest(checkpoints) is not None:
        raise ConfigError(
            f"{checkpoints} already holds checkpoints of an earlier run: pass --resume to continue it, or choose "
            "another train.output_dir"
        )
    if resume_from is not None:
        saved = check_compatible(resume_from, model_signature(model_config, job.parallel.tp_size))
        _check_same_run(resume_from, saved.get("config", {}), job)
        if job.parallel.engine == "deepspeed":
            from .deepspeed import TAG, check_pickles

            check_pickles(resume_from / TAG, job.checkpoint.trust_pickled_classes)
    _check_writable(Path(job.train.output_dir))
    return resume_from


def _check_same_run(path: Path, saved: dict, job: JobConfig) -> None:
    """What exact resume needs unchanged besides the model: the seed and the batch sizes (the data position and
    RNG states were saved for those). Checked before anything is written, so config.yaml is never overwritten."""
    now = job.to_dict()
    fields = [("train", "seed"), ("train", "global_batch_size"), ("train", "micro_batch_size")]
    changed = [
        f"{section}.{key}: checkpoint {saved[section][key]!r} vs this run {now[section][key]!r}"
        for section, key in fields
        if section in saved and key in saved[section] and saved[section][key] != now[section][key]
    ]
    if changed:
        raise CheckpointError(f"checkpoint {path} cannot be resumed exactly with {', '.join(changed)}")


def _check_writable(folder: Path) -> None:
    """The run folder (or the nearest folder that exists above it) must be writable, before any compute."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"train.output_dir {folder}: {probe} is not a writable folder")
    checkpoints = folder / "checkpoints"
    if checkpoints.exists() and not os.access(checkpoints, os.W_OK | os.X_OK):
        raise ConfigError(f"train.output_dir {folder}: {checkpoints} is not writable (the first save would fail)")


def train(plan: Plan) -> Trainer:
    """Run the planned job in this process (one of torchrun's, or alone); returns the finished trainer."""
    job = plan.job
    world = init_distributed(job.train.device, job.parallel.tp_size, job.parallel.backend)
    setup_console_logging(world.rank)
    out = plan.output_dir
    # rank 0 locks the run folder before its first write: a second run on a live folder is refused here
    with RunLock(out) if world.is_main else contextlib.nullcontext():
        if world.is_main:
            (out / "config.yaml").write_text(job.to_yaml(), encoding="utf-8")
        world.barrier()
        return _train(plan, job, world, out)


def _train(plan: Plan, job: JobConfig, world: World, out: Path) -> Trainer:
    model = build_model(job, plan.model_config, world)
    torch.manual_seed(job.train.seed + 1 + world.dp_rank)  # dropout: shared by TP peers, different per replica
    train_data, eval_data = build_streams(plan, world)
    resume_step = int(plan.resume_from.name.split("-")[-1]) if plan.resume_from else 0
    metrics = MetricLogger(
        out, job.train.steps, world.is_main, job.logging.progress_bar, job.logging.tensorboard, resume_step
    )
    with metrics:
        trainer = build_trainer(
            job, world, model, BlankInfillingLoss(BLANK_MODES), train_data, metrics,
            accumulation=plan.accumulation, eval_data=eval_data,
            flops=training_flops(plan.model_config, plan.blanks.seq_length),
            trainer_info={"model_signature": plan.signature(), "config": job.to_dict()},
        )  # fmt: skip
        n_params = sum(p.numel() for p in model.parameters())
        metrics.message(
            f"{job.model.preset}: {n_params / 1e6:.1f}M parameters on {world.world_size} process(es) "
            f"(dp {world.dp_size} x tp {world.tp_size}), {plan.accumulation} accumulation step(s), "
            f"{job.train.precision}, {world.device}; peak {trainer.peak_tflops:.3g} TFLOP/s per device for MFU"
        )
        if plan.resume_from is not None:
            trainer.resume(plan.resume_from)
        trainer.train()
        if job.checkpoint.export_final:
            export_model(trainer, plan.model_config, world, out / "final", job.parallel.tp_size)
            if world.is_main:
                metrics.message(f"exported the final model to {out / 'final'}{_add_tokenizer(plan, out / 'final')}")
    if world.rank == 0 and (out / "log.jsonl").is_file():
        plot_log(out / "log.jsonl", out / "training.png")  # the curves, for people who would rather look
    return trainer


def _add_tokenizer(plan: Plan, folder: Path) -> str:
    """Save the tokenizer the shards were made with into the exported folder, so that ``from_pretrained`` and
    ``torchglm fill`` load it alone. Returns a note for the log."""
    name = plan.train_shards.manifest.get("tokenizer", {}).get("name")
    if not name or not Path(name).exists():
        return f" (no tokenizer files: the shards' tokenizer {name!r} is not here; copy them in by hand)"
    from torchglm.data.prepare import load_tokenizer

    try:
        tokenizer = load_tokenizer(name, None)
    except (OSError, ValueError) as error:
        return f" (no tokenizer files: {name} did not load: {error})"
    tokenizer.save_pretrained(folder)
    return f" with the tokenizer of {name}"


# ----------------------------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML job config (configs/pretrain/*.yaml); omitted: the defaults")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="CHECKPOINT",
        help="continue from the newest complete checkpoint of train.output_dir, or from CHECKPOINT",
    )
    parser.add_argument("--dry-run", action="store_true", help="check config, data and checkpoint, then exit")
    parser.add_argument(
        "--verify", action="store_true",
        help="check every token shard's full SHA-256 against its manifest first (= --data.verify true)",
    )  # fmt: skip
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    group = parser.add_argument_group(
        "config overrides", "VALUE is read as YAML; also --model.overrides.FIELD and --data.blanks.FIELD"
    )
    for option, help_text in override_options():
        group.add_argument(option, dest=option[2:], metavar="VALUE", default=argparse.SUPPRESS, help=help_text)
    for name in dataclasses.fields(GLMConfig):
        parser.add_argument(
            f"--model.overrides.{name.name}", dest=f"model.overrides.{name.name}", default=argparse.SUPPRESS,
            help=argparse.SUPPRESS,
        )  # fmt: skip
    for name in dataclasses.fields(BlankConfig):
        parser.add_argument(
            f"--data.blanks.{name.name}", dest=f"data.blanks.{name.name}", default=argparse.SUPPRESS,
            help=argparse.SUPPRESS,
        )  # fmt: skip


def job_from_args(args: argparse.Namespace) -> JobConfig:
    overrides = []
    for key, value in vars(args).items():
        if "." in key:
            overrides += [f"--{key}", value]
    if args.resume is not None:
        overrides += ["--checkpoint.resume", args.resume]
    if getattr(args, "verify", False):
        overrides += ["--data.verify", "true"]
    return load_job_config(args.config, overrides)


def run(args: argparse.Namespace) -> int:
    try:
        job = job_from_args(args)
        if args.print_config:
            print(job.to_yaml(), end="")
            return 0
        plan = plan_run(job)
    except (ConfigError, CheckpointError, FileNotFoundError) as error:
        print(f"torchglm pretrain: error: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(
            f"ok: {plan.world_size} process(es), dp {plan.dp_size}, {plan.accumulation} accumulation step(s), "
            f"{plan.train_shards.num_tokens} training tokens, resume from {plan.resume_from or 'nothing'}"
        )
        return 0
    try:
        train(plan)
    except BaseException:
        close_distributed(orderly=False)
        raise
    close_distributed()
    return 0

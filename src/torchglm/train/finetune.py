"""Finetuning recipes on the shared trainer: a task's examples, objective and dev metric; the loop, optimizer,
schedule, DCP checkpoints, exact resume and torchrun engines are pretraining's (``torchglm.train.recipe``).

    torchglm finetune seq2seq --config configs/finetune/xsum.yaml --model glm-large --data data/xsum
    torchglm finetune seq2seq --task xsum --model glm-tiny-en --data runs/xsum --task.epochs 3 --optim.lr 1e-4
    torchglm finetune seq2seq --config configs/finetune/xsum.yaml --resume          # continue after a crash

The run folder (``train.output_dir``) receives ``config.yaml``, ``log.jsonl``, ``checkpoints/``, ``best/`` (the
``from_pretrained`` folder of the best dev score so far, with the tokenizer), ``final/``, ``results.json`` and
``training.png``. Every field can be overridden with ``--section.field VALUE`` as in pretraining; ``--task``,
``--model``, ``--data`` and ``--output`` are short for ``--task.name``, ``--model.init_from``, ``--task.data``
and ``--train.output_dir``. See docs/seq2seq.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import shutil
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator
from pydantic.dataclasses import dataclass

from torchglm.errors import InputError

from .checkpoint import RunLock
from .config import (
    _STRICT,
    CheckpointConfig,
    ConfigError,
    DataConfig,
    JobConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    ScheduleConfig,
    TrainConfig,
    check_world,
    load_job_config,
    override_options,
    section_from_mapping,
)

logger = logging.getLogger("torchglm.train")
Positive = Annotated[int, Field(gt=0)]


# ----------------------------------------------------------------------------------------------------------------
# Config


@dataclass(config=_STRICT)
class Seq2SeqTaskConfig:
    name: str = "xsum"
    """The task (torchglm.tasks.seq2seq.TASKS): cnn_dm, xsum, gigaword, squad_generation, custom."""
    data: str = ""
    """Folder with {split}.jsonl or {split}.source/.target files."""
    train_split: str = "train"
    """The training split's file name in ``data``."""
    dev_split: str = "dev"
    """The split scored with ROUGE at every evaluation (its first ``eval_examples``)."""
    src_seq_length: Positive | None = None
    """Most source tokens (null: the task's, capped by the model's positions)."""
    tgt_seq_length: Positive | None = None
    """Most target tokens, <|endofpiece|> included (null: the task's)."""
    source_field: str | None = None
    """JSON-lines field of the source (null: the task's, e.g. xsum's document)."""
    target_field: str | None = None
    """JSON-lines field of the target (null: the task's, e.g. xsum's summary)."""
    answer_field: str | None = None
    """Question generation: the answer's field (null: answer, or SQuAD's answers.text)."""
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.1
    """e in (1 - e) CE + e mean(-log p), as the original."""
    epochs: Annotated[float, Field(gt=0)] | None = None
    """Passes over the training examples; sets train.steps (null: train.steps as given)."""
    train_examples: Positive | None = None
    """Only the first N training examples (null: all)."""
    eval_examples: Positive = 100
    """Dev examples decoded and scored at each evaluation."""
    eval_batch_size: Positive = 8
    """Documents decoded together in the evaluation."""
    best_metric: Literal["rouge1", "rouge2", "rougeL", "rougeLsum"] = "rouge1"
    """The dev score that picks best/ (the original's first metric, ROUGE-1)."""
    num_beams: Positive | None = None
    """Dev decoding: beams (null: the task's)."""
    length_penalty: float | None = None
    min_new_tokens: Annotated[int, Field(ge=0)] | None = None
    max_new_tokens: Positive | None = None
    no_repeat_ngram_size: Annotated[int, Field(ge=0)] | None = None


def _finetune_train() -> TrainConfig:
    return TrainConfig(output_dir="runs/finetune", global_batch_size=8, micro_batch_size=8, eval_interval=1000)


@dataclass(config=_STRICT)
class Seq2SeqJob:
    """A seq2seq finetuning run: pretraining's sections (data replaced by ``task``) with finetuning defaults
    (the original's: AdamW lr 1e-5, weight decay 0.1, linear decay after a 6% warmup, batch 8)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    task: Seq2SeqTaskConfig = field(default_factory=Seq2SeqTaskConfig)
    train: TrainConfig = field(default_factory=_finetune_train)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5, weight_decay=0.1))
    schedule: ScheduleConfig = field(
        default_factory=lambda: ScheduleConfig(warmup_ratio=0.06, decay_style="linear", min_lr_ratio=0.0)
    )
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    @field_validator("*", mode="before")
    @classmethod
    def _section_from_mapping(cls, value: Any, info: ValidationInfo) -> Any:
        return section_from_mapping(cls, value, info)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def as_job(self, steps: int) -> JobConfig:
        """The pretraining-shaped job the shared recipe builds from (no token shards)."""
        return JobConfig(
            model=self.model, data=DataConfig(), train=dataclasses.replace(self.train, steps=steps), optim=self.optim,
            schedule=self.schedule, parallel=self.parallel, checkpoint=self.checkpoint, logging=self.logging,
        )  # fmt: skip


@dataclass(config=_STRICT)
class ClozeTaskConfig:
    name: str = "rte"
    """The SuperGLUE task: rte, cb, boolq, wic, multirc, copa, wsc, record; or CLUE's: afqmc, tnews, cluewsc."""
    data: str | None = None
    """The SuperGLUE folder (RTE/train.jsonl, ...), the CLUE folder (tnews/train_few_all.json, ...) or the task's
    own (null: ../shared/data/superglue for SuperGLUE tasks, ../shared/data/clue for CLUE's)."""
    train_split: str = "train"
    """The training file's name: train (FewGLUE's 32), train_full (where the folder has it), ..."""
    dev_split: str = "val"
    """The split scored at every evaluation (the official dev set)."""
    pattern_id: Annotated[int, Field(ge=0)] | None = None
    """The PET pattern (null: the original's default for the task)."""
    seq_length: Positive | None = None
    """Tokens per sequence (null: the task's, capped by the model's positions)."""
    epochs: Annotated[float, Field(gt=0)] | None = None
    """Passes over the training examples; sets train.steps (null: train.steps as given)."""
    train_examples: Positive | None = None
    """Only the first N training examples (null: all)."""
    eval_examples: Positive | None = None
    """Only the first N dev examples at each evaluation (null: all)."""
    eval_batch_size: Positive = 16
    eval_epochs: Annotated[float, Field(gt=0)] | None = None
    """Score the dev set every this many epochs; sets train.eval_interval (null: train.eval_interval as given)."""
    best_metric: str | None = None
    """The dev metric that picks best/ (null: the task's first: accuracy, f1a, f1)."""
    length_penalty: float = 0.0
    """Multi-token scoring: summed answer log-probability / tokens ** this (in training too, as the original)."""
    loss: Literal["cross_entropy", "hinge", "generative", "mix"] = "cross_entropy"
    """The original's --loss-func: cross_entropy over the choices, hinge (margin 1), generative (the LM loss of the
    correct answer alone) or mix (cross_entropy + generative)."""
    wsc_negative: bool = False
    """WSC: score the referent against noun phrases of the text (the original's --wsc-negative), in training and on
    the dev set, where the data has no candidates field."""
    early_stop_patience: Annotated[int, Field(ge=0)] = 0
    """Stop after this many evaluations in a row without a better best_metric (0: never stop early)."""
    head: Literal["cloze", "classifier"] = "cloze"
    """cloze: fill the pattern's blank (the original's default); classifier: a new head on a pooled token over
    ``[CLS] A [SEP] B [eos]`` (GLMForSequenceClassification; single-sequence tasks)."""
    pool_token: Literal["cls", "start", "pad"] = "cls"
    """The classifier's pooled token: [CLS], the token after the sequence, or its last (eos)."""
    lora_rank: Positive | None = None
    """Train LoRA adapters of this rank through PEFT instead of every weight (null: full finetuning)."""
    lora_alpha: float = 16.0
    """LoRA's scaling numerator (the update is scaled by alpha / rank)."""
    lora_targets: list[str] = field(default_factory=lambda: ["query_key_value", "dense", "dense_h_to_4h",
                                                               "dense_4h_to_h"])  # fmt: skip
    """The linear layers that get adapters (names inside each transformer block)."""
    continuous_prompt: bool = False
    """P-tuning: learned prompt tokens at the pattern's prompt slots (the original's --continuous-prompt)."""
    num_prompt_tokens: Positive = 3
    """Prompt tokens in all, spread over the pattern's slots (ceil(n / slots) each, in order), as the original."""
    prompt_encoder: Literal["lstm", "mlp", "none"] = "lstm"
    """What computes the prompt embeddings from learned ones: a bidirectional LSTM + MLP, an MLP, or nothing."""
    prompt_init: bool = False
    """Start the prompt embeddings from word embeddings mixed with the verbalizers' (the original's --prompt-init)."""
    freeze_backbone: bool = False
    """Train only the prompt encoder and the first tune_prefix_layers layers (the original's --freeze-transformer);
    best/ and final/ then hold only the trained tensors (trainable.safetensors + trainable.json)."""
    tune_prefix_layers: Annotated[int, Field(ge=0)] = 0
    """With freeze_backbone: the first N transformer layers still train (the original's --tune-prefix-layers)."""


def _cloze_train() -> TrainConfig:
    return TrainConfig(output_dir="runs/finetune-superglue", global_batch_size=16, micro_batch_size=16)


@dataclass(config=_STRICT)
class ClozeJob:
    """A SuperGLUE finetuning run as cloze questions, with the original's defaults (AdamW lr 1e-5, weight decay
    0.1, linear decay after a 10% warmup, batch 16)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    task: ClozeTaskConfig = field(default_factory=ClozeTaskConfig)
    train: TrainConfig = field(default_factory=_cloze_train)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5, weight_decay=0.1))
    schedule: ScheduleConfig = field(
        default_factory=lambda: ScheduleConfig(warmup_ratio=0.1, decay_style="linear", min_lr_ratio=0.0)
    )
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    @field_validator("*", mode="before")
    @classmethod
    def _section_from_mapping(cls, value: Any, info: ValidationInfo) -> Any:
        return section_from_mapping(cls, value, info)

    to_dict = Seq2SeqJob.to_dict
    to_yaml = Seq2SeqJob.to_yaml
    as_job = Seq2SeqJob.as_job


# ----------------------------------------------------------------------------------------------------------------
# Data: examples in epochs


class EpochBatches:
    """Training samples as micro-batches, reshuffled every epoch from the seed, split over data-parallel ranks;
    ``state_dict`` is the position (epoch, batch), so a resumed run continues with the very next batch.

    A global batch is ``micro_batch_size x world_size`` consecutive samples of the epoch's order; rank r takes
    the r-th micro-batch of each. The last incomplete global batch of an epoch is dropped.
    """

    def __init__(self, samples, micro_batch_size: int, collate, *, seed: int, rank: int = 0, world_size: int = 1):
        self.samples, self.micro, self.collate = samples, micro_batch_size, collate
        self.seed, self.rank, self.world = seed, rank, world_size
        self.per_epoch = len(samples) // (micro_batch_size * world_size)
        if self.per_epoch == 0:
            raise InputError(
                f"{len(samples)} training examples do not fill one batch of {micro_batch_size * world_size}"
            )
        self.epoch, self.position = 0, 0

    def _order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1000003 + epoch)
        return torch.randperm(len(self.samples), generator=generator).tolist()

    def __iter__(self):
        while True:
            order = self._order(self.epoch)
            while self.position < self.per_epoch:
                first = (self.position * self.world + self.rank) * self.micro
                self.position += 1
                yield self.collate([self.samples[i] for i in order[first : first + self.micro]])
            self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


# ----------------------------------------------------------------------------------------------------------------
# Plan and run: one recipe, a task family plugged in


@dataclasses.dataclass
class Family:
    """What a task family adds to the recipe: its objective and batches, and its dev metrics."""

    name: str
    objective: Any
    collate: Any
    evaluate: Any
    """``evaluate(model) -> {metric: value}`` on the dev examples (a plain model in eval mode)."""
    best_metric: str
    seq_length: int
    """Tokens per training sample, for the FLOP count."""
    describe: str
    settings: dict = dataclasses.field(default_factory=dict)
    """Recorded in results.json (decoding options, pattern id, ...)."""
    model_class: Any = None
    """The model trained (None: GLMForConditionalGeneration)."""
    lora: Any = None
    """A ``peft.LoraConfig``: train adapters only (one process)."""
    prepare_model: Any = None
    """``prepare_model(model)`` before the trainer is built (P-tuning: attach the prompt encoder, freeze)."""
    save_model: Any = None
    """``save_model(model, folder)`` for best/ and final/ in place of a ``from_pretrained`` folder (one process)."""


@dataclasses.dataclass
class FinetunePlan:
    spec: Any
    job: JobConfig
    model_folder: str
    config: Any
    tokenizer: Any
    family: Family
    train_samples: list
    dev_samples: list
    """The held-out loss's rows (the dev metrics come from the family's ``evaluate``)."""
    accumulation: int
    resume_from: Path | None

    @property
    def output_dir(self) -> Path:
        return Path(self.job.train.output_dir)


def _load_pretrained(spec):
    """The model folder (a built-in name resolved), its config and its tokenizer, or a ConfigError."""
    from torchglm.builtin import resolve
    from torchglm.checkpoint import check_checkpoint_folder
    from torchglm.config import GLMConfig
    from torchglm.tokenization import GLMTokenizer

    if not spec.model.init_from:
        raise ConfigError("model.init_from (--model) is empty: finetuning starts from a pretrained model folder")
    folder = resolve(spec.model.init_from)
    try:
        check_checkpoint_folder(folder)
        config = GLMConfig.from_pretrained(folder)
        tokenizer = GLMTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise ConfigError(f"model.init_from {spec.model.init_from}: {error}") from None
    for key, value in spec.model.overrides.items():
        setattr(config, key, value)
    return folder, config, tokenizer


def _finish_plan(spec, folder, config, tokenizer, family, train_samples, dev_samples, world_size) -> FinetunePlan:
    """Steps from epochs, batch sizes against the world, resume compatibility and a writable run folder."""
    from .parallel import world_size_from_env
    from .pretrain import check_run_folder

    world_size = world_size_from_env() if world_size is None else world_size
    batch = spec.train.global_batch_size
    if len(train_samples) < batch:
        raise ConfigError(f"{len(train_samples)} training examples do not fill one batch of train.global_batch_size "
                          f"{batch}")  # fmt: skip
    steps = spec.train.steps
    if spec.task.epochs is not None:
        steps = max(1, round(spec.task.epochs * (len(train_samples) // batch)))
    if family.lora is not None and world_size > 1:
        raise ConfigError("task.lora_rank: LoRA runs in one process here (FSDP2 over a PEFT model is not wired yet)")
    if family.prepare_model is not None and world_size > 1:
        raise ConfigError("task.continuous_prompt / task.freeze_backbone run in one process here")
    job = spec.as_job(steps)
    every = getattr(spec.task, "eval_epochs", None)
    if every is not None:
        job.train.eval_interval = max(1, round(every * (len(train_samples) // batch)))
    _, accumulation = check_world(job, world_size)
    resume_from = check_run_folder(job, config)
    job.model.init_from = folder
    return FinetunePlan(spec, job, folder, config, tokenizer, family, train_samples, dev_samples, accumulation,
                        resume_from)  # fmt: skip


def plan_seq2seq(spec: Seq2SeqJob, world_size: int | None = None) -> FinetunePlan:
    """Everything checked and tokenized before a model is built: the model folder, data, lengths, batches,
    resume checkpoint and output folder."""
    from torchglm.tasks import seq2seq

    folder, config, tokenizer = _load_pretrained(spec)
    t = spec.task
    if not t.data:
        raise ConfigError("task.data (--data) is empty: give the folder with the task's split files")
    names = {"source_field": t.source_field, "target_field": t.target_field, "answer_field": t.answer_field}
    task = seq2seq.get_task(t.name, src_seq_length=t.src_seq_length, tgt_seq_length=t.tgt_seq_length, **names)
    if task.src_seq_length + task.tgt_seq_length > config.max_sequence_length:
        if t.src_seq_length is not None:
            raise ConfigError(
                f"task.src_seq_length + tgt_seq_length = {task.src_seq_length + task.tgt_seq_length} is over the "
                f"model's {config.max_sequence_length} positions"
            )
        src = config.max_sequence_length - task.tgt_seq_length
        if src < 8:
            raise ConfigError(f"task.tgt_seq_length {task.tgt_seq_length} leaves no room for the source")
        task = seq2seq.get_task(t.name, src_seq_length=src, tgt_seq_length=task.tgt_seq_length, **names)
    ids = seq2seq.prompt_ids(tokenizer)
    train_examples = seq2seq.read_split(t.data, task, t.train_split)[: t.train_examples]
    dev_examples = seq2seq.read_split(t.data, task, t.dev_split)[: t.eval_examples]
    train_samples = [seq2seq.training_sample(tokenizer, e, task, ids) for e in train_examples]
    dev_samples = [seq2seq.training_sample(tokenizer, e, task, ids) for e in dev_examples]
    options = task.generation_options(
        num_beams=t.num_beams, length_penalty=t.length_penalty, min_new_tokens=t.min_new_tokens,
        max_new_tokens=t.max_new_tokens, no_repeat_ngram_size=t.no_repeat_ngram_size,
    )  # fmt: skip

    def evaluate(model) -> dict[str, float]:
        result = seq2seq.evaluate_seq2seq(model, tokenizer, dev_examples, task, options, batch_size=t.eval_batch_size)
        return dict(result.rouge)

    family = Family(
        task.name, seq2seq.LabelSmoothedLoss(t.label_smoothing),
        lambda rows: seq2seq.collate(rows, tokenizer.pad_token_id), evaluate, t.best_metric,
        task.src_seq_length + task.tgt_seq_length,
        f"{len(train_samples)} training and {len(dev_examples)} dev examples",
        {"generation": dataclasses.asdict(options)},
    )  # fmt: skip
    return _finish_plan(spec, folder, config, tokenizer, family, train_samples, dev_samples, world_size)


def plan_superglue(spec: ClozeJob, world_size: int | None = None) -> FinetunePlan:
    """The cloze recipe's plan: the task's training and dev examples laid out with its pattern, checked first."""
    from torchglm.tasks import superglue

    folder, config, tokenizer = _load_pretrained(spec)
    t = spec.task
    if t.name not in superglue.TASKS:
        raise ConfigError(f"task.name {t.name!r} is not one of {', '.join(superglue.TASKS)}")
    pattern = superglue.DEFAULT_PATTERN[t.name] if t.pattern_id is None else t.pattern_id
    if pattern >= superglue.PATTERNS[t.name]:
        raise ConfigError(f"task.pattern_id: {t.name} has no pattern {pattern} (its patterns: "
                          f"0..{superglue.PATTERNS[t.name] - 1})")  # fmt: skip
    if t.wsc_negative and t.name != "wsc":
        raise ConfigError(f"task.wsc_negative: WSC's negative candidates, not for {t.name}")
    if t.head == "classifier" and t.loss in ("generative", "mix"):
        raise ConfigError(f"task.loss {t.loss}: an LM loss of the answer, for the cloze head only (the classification "
                          "head trains with cross_entropy or hinge)")  # fmt: skip
    length = min(t.seq_length or superglue.SEQ_LENGTH[t.name], int(config.max_sequence_length))
    train_split = {"train": "train", "train_full": "train"}.get(t.train_split, "train")
    train_examples = superglue.read_examples(t.name, superglue.task_file(t.data, t.name, t.train_split), train_split,
                                             wsc_negative=t.wsc_negative)  # fmt: skip
    dev_examples = superglue.read_examples(t.name, superglue.task_file(t.data, t.name, t.dev_split), "dev",
                                           wsc_negative=t.wsc_negative)  # fmt: skip
    train_examples, dev_examples = train_examples[: t.train_examples], dev_examples[: t.eval_examples]
    ptuning = _ptuning(spec, folder, config, tokenizer, pattern, length)  # None: no prompt, nothing frozen
    layout = ptuning.layout if ptuning is not None else None
    train_samples = superglue.build_inputs(tokenizer, t.name, train_examples, pattern, length, layout)
    dev_samples = superglue.build_inputs(tokenizer, t.name, dev_examples, pattern, length, layout)
    metric_names = list(superglue.metrics(t.name, dev_examples[:1], [0]))
    best_metric = t.best_metric or metric_names[0]
    if best_metric not in metric_names:
        raise ConfigError(f"task.best_metric {best_metric!r} is not one of {t.name}'s metrics")
    if t.head == "classifier":
        return _classifier_plan(spec, folder, config, tokenizer, train_examples, dev_examples, length, best_metric,
                                world_size)  # fmt: skip

    def evaluate(model) -> dict[str, float]:
        result = superglue.evaluate_superglue(
            model, tokenizer, t.name, dev_examples, pattern_id=pattern, seq_length=length,
            length_penalty=t.length_penalty, batch_size=t.eval_batch_size,
        )  # fmt: skip
        return dict(result.metrics)

    family = Family(
        t.name, superglue.ClozeLoss(t.loss, t.length_penalty),
        lambda items: superglue.collate_cloze(items, tokenizer.eos_token_id, tokenizer.sop_token_id),
        evaluate, best_metric, length,
        f"{len(train_samples)} training and {len(dev_examples)} dev examples, pattern {pattern}, loss {t.loss}",
        {"pattern_id": pattern, "seq_length": length, "loss": t.loss, "wsc_negative": t.wsc_negative},
    )  # fmt: skip
    family.lora = _lora_config(t)
    if ptuning is not None:
        family.prepare_model, family.save_model = ptuning.prepare, ptuning.save
        family.settings.update(ptuning.settings)
    dev_loss = superglue.loss_inputs(t.name, dev_samples)  # WSC: the true referents against their negatives
    return _finish_plan(spec, folder, config, tokenizer, family, train_samples, dev_loss, world_size)


def _lora_config(t):
    """``task.lora_rank`` as a ``peft.LoraConfig`` (None without it)."""
    if t.lora_rank is None:
        return None
    try:
        import peft
    except ImportError:
        raise ConfigError("task.lora_rank needs PEFT: pip install 'torchglm[peft]'") from None
    return peft.LoraConfig(r=t.lora_rank, lora_alpha=t.lora_alpha, target_modules=list(t.lora_targets),
                           lora_dropout=0.0)  # fmt: skip


@dataclasses.dataclass
class _PTuning:
    layout: Any
    """The inputs' ``prompts.PromptLayout`` (None: a frozen backbone without prompts)."""
    prepare: Any
    save: Any
    settings: dict


def _ptuning(spec, folder, config, tokenizer, pattern: int, length: int) -> _PTuning | None:
    """``task.continuous_prompt`` / ``task.freeze_backbone`` checked and turned into the inputs' prompt layout, the
    model's preparation (encoder attached from the run's seed, backbone frozen) and the trained-tensors-only save."""
    from torchglm.tasks import prompts, superglue

    t = spec.task
    if not (t.continuous_prompt or t.freeze_backbone or t.tune_prefix_layers):
        return None
    if t.head != "cloze" or t.lora_rank is not None:
        raise ConfigError("task.continuous_prompt / task.freeze_backbone serve the cloze head without LoRA")
    if t.tune_prefix_layers and not t.freeze_backbone:
        raise ConfigError("task.tune_prefix_layers counts the layers of a frozen backbone that train: set "
                          "task.freeze_backbone")  # fmt: skip
    if t.tune_prefix_layers > config.num_layers:
        raise ConfigError(f"task.tune_prefix_layers {t.tune_prefix_layers}: the model has {config.num_layers} layers")
    if t.freeze_backbone and not t.continuous_prompt and not t.tune_prefix_layers:
        raise ConfigError("task.freeze_backbone without task.continuous_prompt or task.tune_prefix_layers: nothing "
                          "would train")  # fmt: skip
    layout = None
    if t.continuous_prompt:
        if not any(prompts.SLOTS.get(t.name, {}).get(pattern, ())):
            raise ConfigError(f"task.continuous_prompt: {t.name} pattern {pattern} has no prompt slots")
        try:
            layout = prompts.PromptLayout(t.num_prompt_tokens, prompts.placeholder_id(tokenizer, config.vocab_size))
        except InputError as error:
            raise ConfigError(f"task.continuous_prompt: {error}") from None
    task_tokens = []
    if t.prompt_init and t.name not in superglue.MULTI_TOKEN:  # the verbalizers' ids (multi-token tasks have none)
        task_tokens = [i for label in superglue.LABELS[t.name]
                       for i in superglue.encode(tokenizer, superglue.verbalizer(t.name, pattern, label))]  # fmt: skip
    seed, base_model = spec.train.seed, str(Path(folder).resolve())

    def prepare(model) -> None:
        if layout is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                encoder = prompts.PromptEncoder(layout.num_tokens, config.hidden_size, t.prompt_encoder)
                if t.prompt_init:
                    encoder.init_from_words(model.get_input_embeddings().weight, task_tokens)
            prompts.attach_prompt(model, encoder, layout.placeholder_id)
        if t.freeze_backbone:
            prompts.freeze_backbone(model, t.tune_prefix_layers)

    def save(model, where: Path) -> None:
        prompts.save_trainable(model, where, base_model=base_model,
                               settings={"task": t.name, "pattern_id": pattern, "seq_length": length})  # fmt: skip

    settings = {"continuous_prompt": t.continuous_prompt, "num_prompt_tokens": t.num_prompt_tokens,
                "prompt_encoder": t.prompt_encoder, "freeze_backbone": t.freeze_backbone,
                "tune_prefix_layers": t.tune_prefix_layers}  # fmt: skip
    return _PTuning(layout, prepare, save, settings)


def _classifier_plan(spec, folder, config, tokenizer, train_examples, dev_examples, length, best_metric, world_size):
    """The classification-head alternative: ``GLMForSequenceClassification`` with a fresh head of the task's labels
    over ``[CLS] A [SEP] B [eos]``."""
    from torchglm.model import GLMForSequenceClassification
    from torchglm.tasks import superglue

    t = spec.task
    if t.name not in superglue.CLASSIFIER_TASKS:
        raise ConfigError(f"task.head classifier serves {', '.join(superglue.CLASSIFIER_TASKS)}, not {t.name}")
    config.num_labels, config.pool_token = len(superglue.LABELS[t.name]), t.pool_token
    train_samples = [superglue.classifier_input(tokenizer, t.name, e, length) for e in train_examples]
    dev_samples = [superglue.classifier_input(tokenizer, t.name, e, length) for e in dev_examples]

    def evaluate(model) -> dict[str, float]:
        result = superglue.evaluate_classifier(model, tokenizer, t.name, dev_examples, seq_length=length,
                                               batch_size=t.eval_batch_size)  # fmt: skip
        return dict(result.metrics)

    family = Family(
        t.name, superglue.ClassifierLoss(t.loss),
        lambda items: superglue.collate_classifier(items, tokenizer.pad_token_id),
        evaluate, best_metric, length, f"{len(train_samples)} training and {len(dev_examples)} dev examples, "
        f"classification head on {t.pool_token}", {"head": "classifier", "pool_token": t.pool_token,
        "seq_length": length, "loss": t.loss}, GLMForSequenceClassification,
    )  # fmt: skip
    family.lora = _lora_config(t)
    if family.lora is not None:
        family.lora.modules_to_save = ["dense", "out_proj"]  # the new head trains whole
        family.lora.target_modules = [m for m in t.lora_targets]
    return _finish_plan(spec, folder, config, tokenizer, family, train_samples, dev_samples, world_size)


def train_finetune(plan: FinetunePlan):
    """Run the planned finetuning in this process (one of torchrun's, or alone); returns the trainer."""
    from .logging import setup_console_logging
    from .parallel import init_distributed

    job = plan.job
    world = init_distributed(job.train.device, job.parallel.tp_size, job.parallel.backend)
    setup_console_logging(world.rank)
    out = plan.output_dir
    with RunLock(out) if world.is_main else contextlib.nullcontext():
        if world.is_main:
            (out / "config.yaml").write_text(plan.spec.to_yaml(), encoding="utf-8")
        world.barrier()
        return _train(plan, job, world, out)


def _train(plan: FinetunePlan, job: JobConfig, world, out: Path):
    from torchglm.model import GLMForConditionalGeneration, training_flops

    from .logging import MetricLogger, plot_log
    from .pretrain import model_signature
    from .recipe import build_model, build_trainer, export_model

    config, family = plan.config, plan.family
    model_class = family.model_class or GLMForConditionalGeneration
    model = build_model(job, config, world, model_class)
    if family.prepare_model is not None:
        family.prepare_model(model)
    if family.lora is not None:
        import peft

        model = peft.get_peft_model(model, family.lora)
    torch.manual_seed(job.train.seed + 1 + world.dp_rank)
    train_data = EpochBatches(
        plan.train_samples, job.train.micro_batch_size, family.collate, seed=job.train.seed, rank=world.dp_rank,
        world_size=world.dp_size,
    )  # fmt: skip
    dev_rows = plan.dev_samples[world.dp_rank :: world.dp_size]

    def dev_loss_batches():
        size = job.train.micro_batch_size
        return (family.collate(dev_rows[i : i + size]) for i in range(0, len(dev_rows), size))

    best_file = out / "best" / "metrics.json"
    metric = family.best_metric
    best = json.loads(best_file.read_text()) if best_file.is_file() else {"step": None, metric: float("-inf")}
    evaluations: list[dict] = []
    holder: dict[str, Any] = {}
    patience = getattr(plan.spec.task, "early_stop_patience", 0)

    def dev_metrics(model) -> dict[str, float]:
        """The family's dev metrics; a new best is saved to best/. Under torchrun, rank 0 evaluates a plain copy
        of the gathered weights (the decoding core calls the model's trunk directly, which a sharded model cannot
        serve) and sends the scores to the other ranks."""
        trainer = holder["trainer"]
        plain = _plain_model(trainer, model, config, world, job.parallel.tp_size, model_class)
        scores = family.evaluate(plain) if plain is not None else None
        if world.distributed:
            box = [scores]
            torch.distributed.broadcast_object_list(box, src=0)
            scores = box[0]
        evaluations.append({"step": trainer.step, **scores})
        if scores[metric] > best[metric]:
            best.clear()
            best.update({"step": trainer.step, **scores})
            if world.is_main:
                _save_best(plain, out, plan.tokenizer, best, family.save_model)
            world.barrier()
            scores["best"] = 1.0
        # evaluations in a row without a better best_metric, kept in the checkpoints (exact resume)
        stale = 0 if scores.get("best") else trainer.recipe_state.get("stale_evaluations", 0) + 1
        trainer.recipe_state["stale_evaluations"] = stale
        if patience and stale >= patience:  # the same scores on every rank: all stop at the same step
            trainer.request_stop(f"early stop: {metric} not above {best[metric]:.4g} (step {best['step']}) for "
                                 f"{stale} evaluations")  # fmt: skip
            logger.info("%s; stopping at step %d", trainer.stop_reason, trainer.step)
        return scores

    steps = job.train.steps
    resume_step = int(plan.resume_from.name.split("-")[-1]) if plan.resume_from else 0
    metrics = MetricLogger(out, steps, world.is_main, job.logging.progress_bar, job.logging.tensorboard, resume_step)
    with metrics:
        trainer = build_trainer(
            job, world, model, family.objective, train_data, metrics, accumulation=plan.accumulation,
            eval_data=dev_loss_batches, eval_metrics=dev_metrics, flops=training_flops(config, family.seq_length),
            trainer_info={"model_signature": model_signature(config, job.parallel.tp_size), "config": job.to_dict()},
        )  # fmt: skip
        holder["trainer"] = trainer
        metrics.message(
            f"finetune {family.name}: {family.describe} ({train_data.per_epoch} batches of "
            f"{job.train.micro_batch_size} per epoch and rank), {steps} steps, from {plan.model_folder}"
        )
        if plan.resume_from is not None:
            trainer.resume(plan.resume_from)
        trainer.train()
        if job.checkpoint.export_final:
            if family.save_model is not None:  # one process: what trained, and the base model's folder
                _replace_folder(out / "final", lambda staging: family.save_model(model, staging))
            elif family.lora is not None:  # one process: the adapters, and the merged model beside them
                _replace_folder(out / "final", lambda staging: _save_lora(model, staging))
            else:
                export_model(trainer, config, world, out / "final", job.parallel.tp_size, model_class)
            if world.is_main:
                plan.tokenizer.save_pretrained(out / "final")
    if world.is_main:
        from torchglm.data.shards import atomic_write_json

        atomic_write_json(
            out / "results.json",
            {"task": family.name, "steps": steps, "train_examples": len(plan.train_samples),
             "dev_examples": len(plan.dev_samples), "best_metric": metric, "best": best,
             "evaluations": evaluations, "stopped_at_step": trainer.step,
             "stop_reason": trainer.stop_reason or f"completed train.steps ({steps})", **family.settings,
             "model": plan.model_folder},
        )  # fmt: skip
        if (out / "log.jsonl").is_file():
            plot_log(out / "log.jsonl", out / "training.png", metrics=[f"eval/{metric}"])
    return trainer


def _plain_model(trainer, model, config, world, tp_size: int, model_class=None):
    """The model to decode with: the training model itself in one process; under torchrun a plain copy of the
    gathered weights on rank 0 (None on the other ranks). Collective under torchrun."""
    if not world.distributed:
        return getattr(model, "module", model)  # DeepSpeed's engine wraps the model
    from torchglm.model import GLMForConditionalGeneration, tensor_parallel_layout

    state = trainer.full_state_dict()
    if not world.is_main:
        return None
    if tp_size > 1:
        state = tensor_parallel_layout(state, config.num_attention_heads, tp_size, inverse=True)
    with torch.device("meta"):
        plain = (model_class or GLMForConditionalGeneration)(config)
    plain.load_state_dict({k: v.detach().cpu() for k, v in state.items()}, assign=True)
    return plain.to(world.device).eval()


def _save_lora(model, folder: Path) -> None:
    """A PEFT model as a ``from_pretrained`` folder of the merged weights, with the adapters in ``adapter/``
    (``peft.PeftModel.from_pretrained(base, folder / "adapter")`` reloads them onto the base model)."""
    import copy

    model.save_pretrained(folder / "adapter")
    copy.deepcopy(model).merge_and_unload().save_pretrained(folder)


def _replace_folder(folder: Path, write) -> None:
    """``write(staging)`` fills a folder beside ``folder``, which is then renamed over it: a killed run leaves the
    old folder or the new one, never a half-written one."""
    staging = folder.with_name(folder.name + ".tmp")
    if staging.exists():
        shutil.rmtree(staging)
    write(staging)
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        folder.rename(old)
    staging.rename(folder)
    if old.exists():
        shutil.rmtree(old)


def _save_best(model, out: Path, tokenizer, best: dict, save=None) -> None:
    """best/ replaced whole: written beside it, then renamed over it."""

    def write(staging: Path) -> None:
        if save is not None:  # the family's own form (P-tuning: the trained tensors only)
            save(model, staging)
        elif hasattr(model, "merge_and_unload"):  # LoRA: merged weights and the adapters
            _save_lora(model, staging)
        else:
            model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "metrics.json").write_text(json.dumps(best, indent=1) + "\n", encoding="utf-8")

    _replace_folder(out / "best", write)
    logger.info("new best %s at step %s: best/", {k: round(v, 2) for k, v in best.items() if k != "step"},
                best["step"])  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# Command line

SHORTHANDS = {"task": "task.name", "model": "model.init_from", "data": "task.data", "output": "train.output_dir"}


FAMILIES = {
    # family: (job class, planner, --task help)
    "seq2seq": (Seq2SeqJob, plan_seq2seq, "task.name: cnn_dm, xsum, gigaword, squad_generation, custom"),
    "superglue": (
        ClozeJob,
        plan_superglue,
        "task.name: rte, cb, boolq, wic, multirc, copa, wsc, record; CLUE: afqmc, tnews, cluewsc",
    ),
}
HELP = {
    "seq2seq": "summarization, question generation, source/target pairs (docs/seq2seq.md)",
    "superglue": "SuperGLUE and CLUE as cloze questions with PET patterns (docs/finetuning.md)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from torchglm.config import GLMConfig

    families = parser.add_subparsers(dest="family", required=True, metavar="FAMILY")
    for name, (job_class, _, task_help) in FAMILIES.items():
        sub = families.add_parser(
            name, help=HELP[name], description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        sub.add_argument("--config", help="YAML job config (configs/finetune/*.yaml); omitted: the defaults")
        sub.add_argument("--task", help=task_help)
        sub.add_argument("--model", help="model.init_from: the pretrained model folder (or glm-tiny-en)")
        sub.add_argument("--data", help="task.data: the folder with the split files")
        sub.add_argument("--output", help="train.output_dir: the run folder")
        sub.add_argument(
            "--resume", nargs="?", const="latest", metavar="CHECKPOINT",
            help="continue from the newest complete checkpoint of the run, or from CHECKPOINT",
        )  # fmt: skip
        sub.add_argument("--dry-run", action="store_true", help="check config, model, data and checkpoint, then exit")
        sub.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
        group = sub.add_argument_group("config overrides", "VALUE is read as YAML")
        for option, help_text in override_options(job_class):
            group.add_argument(option, dest=option[2:], metavar="VALUE", default=argparse.SUPPRESS, help=help_text)
        for field_ in dataclasses.fields(GLMConfig):  # --model.overrides.FIELD, e.g. output_dropout_prob
            sub.add_argument(
                f"--model.overrides.{field_.name}", dest=f"model.overrides.{field_.name}", default=argparse.SUPPRESS,
                help=argparse.SUPPRESS,
            )  # fmt: skip


def spec_from_args(args: argparse.Namespace):
    overrides = []
    for short, dotted in SHORTHANDS.items():
        if getattr(args, short, None) is not None:
            overrides += [f"--{dotted}", getattr(args, short)]
    for key, value in vars(args).items():
        if "." in key:
            overrides += [f"--{key}", value]
    if args.resume is not None:
        overrides += ["--checkpoint.resume", args.resume]
    return load_job_config(args.config, overrides, root=FAMILIES[args.family][0])


def run(args: argparse.Namespace) -> int:
    from .parallel import close_distributed

    try:
        spec = spec_from_args(args)
    except FileNotFoundError as error:
        raise ConfigError(str(error)) from None
    if args.print_config:
        print(spec.to_yaml(), end="")
        return 0
    plan = FAMILIES[args.family][1](spec)
    if args.dry_run:
        print(
            f"ok: {plan.family.describe}, {plan.job.train.steps} steps, {plan.accumulation} accumulation step(s), "
            f"resume from {plan.resume_from or 'nothing'}"
        )
        return 0
    try:
        train_finetune(plan)
    except BaseException:
        close_distributed(orderly=False)
        raise
    close_distributed()
    return 0

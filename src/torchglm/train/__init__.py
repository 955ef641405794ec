"""Training: typed job config, AdamW + schedule, parallelize (TP / activation checkpointing / FSDP2),
DeepSpeed ZeRO, atomic DCP checkpoints, the trainer loop and its logs, and :mod:`.recipe` (building a run: model,
trainer, export). The ``pretrain`` command is :mod:`torchglm.train.pretrain`; see docs/pretraining.md.
"""

from torchglm.losses import LossSums, Objective

from .config import ConfigError, JobConfig, load_job_config
from .trainer import NonFiniteError, Trainer, TrainerConfig

__all__ = [
    "ConfigError",
    "JobConfig",
    "LossSums",
    "NonFiniteError",
    "Objective",
    "Trainer",
    "TrainerConfig",
    "load_job_config",
]

"""Pretraining: typed job config, AdamW + schedule, parallelize (TP / activation checkpointing / FSDP2),
DeepSpeed ZeRO, atomic DCP checkpoints, the trainer loop and its logs. The ``pretrain`` command is
:mod:`torchglm.train.pretrain`; see docs/pretraining.md.
"""

from .config import ConfigError, JobConfig, load_job_config
from .trainer import LossSums, NonFiniteError, Objective, Trainer

__all__ = ["ConfigError", "JobConfig", "LossSums", "NonFiniteError", "Objective", "Trainer", "load_job_config"]

"""Pretraining data: corpus -> token shards -> packed texts -> blank-infilling batches.

See ``docs/data.md``. The pieces, in data-flow order: :mod:`.corpus` (readers), :mod:`.prepare`
(``torchglm prepare-data``), :mod:`.shards` (memory-mapped shards), :mod:`.dataset` (sampling, packing,
per-rank resumable batches), :mod:`.blanks` (the blank-infilling builder), :mod:`.collate` (tensors, padding).
"""

from .blanks import BLANK_MODES, BLANK_PRESETS, BlankConfig, BlankInfillingBuilder
from .collate import to_tensors
from .dataset import BlockDataset, PretrainBatches, build_pretraining_stream
from .shards import TokenShards, write_token_shards
from .special import SpecialIds, sentence_end_table

__all__ = [
    "BLANK_MODES",
    "BLANK_PRESETS",
    "BlankConfig",
    "BlankInfillingBuilder",
    "BlockDataset",
    "PretrainBatches",
    "SpecialIds",
    "TokenShards",
    "build_pretraining_stream",
    "sentence_end_table",
    "to_tensors",
    "write_token_shards",
]

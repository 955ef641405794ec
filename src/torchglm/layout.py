"""GLM's input layout, in one place: part A and part-B blocks -> ``input_ids``, 2-D positions, mask, labels.

A GLM sample is part A (the text with its blanks, attended bidirectionally) followed by part-B blocks, each
filling one blank left to right::

    part A      [CLS] x1 [MASK] x4 [eos]        part B: <|startofpiece|> x2 x3     (labels x2 x3 <|endofpiece|>)
    position      0   1    2    3    4                        2         2  2       (the blank's position)
    block pos     0   0    0    0    0                        1         2  3       (place inside the block)

A block sees all of part A, itself causally, and either every block before it (``blocks_see_each_other``: the
pretraining and fill layouts, where the mask is one number per sample, ``sep``) or no other block (scoring
choices side by side: an explicit mask). Labels are aligned with the inputs: the label at column i is the token
that column i predicts, -100 for none.

**One padding rule.** Padding is the pad id at position (0, 0) with label -100, and no real token ever attends
to it; a padding query sees part A (so no attention row is empty). Part B starts right after each sample's part A
(``align=False``, what ``sep`` can express) or at the same column in every sample (``align=True``: a batch that
decoding extends column by column), part A then padded on the right or the left (``pad_side``).

:func:`build_batch` builds whole batches from Python lists (tokenizer builders, tasks, fill's contexts);
:func:`block_columns` and :func:`extend_mask` build the columns and mask of blocks appended to a cached batch (the
decoding core).
The vectorised pretraining builder (``torchglm.data.blanks``) writes the same layout with numpy, for speed; a test
checks it against :func:`build_batch` sample by sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

import torch


class GLMBatch(TypedDict, total=False):
    """The batch every GLM model, task and trainer shares (tensors; ``sep`` or ``attention_mask``, not both)."""

    input_ids: torch.Tensor  # [B, L] long
    position_ids: torch.Tensor  # [B, 2, L] long: text position, block position
    sep: torch.Tensor  # [B] long: keys before sep are visible to every query, later ones causally
    attention_mask: torch.Tensor  # [B, 1, L, L] bool (True = may attend), where sep cannot say it
    labels: torch.Tensor  # [B, L] long, -100 = no loss; aligned with the inputs (not shifted)
    block_index: torch.Tensor  # [B, L] long: k inside the sample's k-th block, -1 in part A and padding
    blank_mode: torch.Tensor  # [B] long: pretraining objective of the sample (torchglm.data.BLANK_MODES)


MODEL_KEYS = ("input_ids", "position_ids", "sep", "attention_mask")


def model_inputs(batch: GLMBatch) -> dict[str, torch.Tensor]:
    """The keys of a batch that the model's forward takes (``input_ids``, ``position_ids``, ``sep`` or mask)."""
    return {key: batch[key] for key in MODEL_KEYS if key in batch}


@dataclass
class Block:
    """One part-B block: tokens fed at a blank, seeing part A and themselves causally.

    ``position`` is the text position of every token (an int: the blank's position for all of them) and
    ``block_position`` the place inside the block (an int: the first token's, counting up). ``labels`` holds the
    token each input predicts (-100: none), or None for a block without targets.
    """

    input_ids: Sequence[int]
    position: int | Sequence[int]
    block_position: int | Sequence[int] = 1
    labels: Sequence[int] | None = None

    def __post_init__(self):
        self.input_ids = [int(t) for t in self.input_ids]
        n = len(self.input_ids)
        self.position = _per_token(self.position, n, "position", step=0)
        self.block_position = _per_token(self.block_position, n, "block_position", step=1)
        if self.labels is not None:
            self.labels = [int(t) for t in self.labels]
            if len(self.labels) != n:
                raise ValueError(f"a block of {n} tokens has {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.input_ids)

    @classmethod
    def span(cls, start_id: int, tokens: Sequence[int], position: int, end_id: int | None = None) -> Block:
        """The block of a known span at a blank: ``start tokens`` predicting ``tokens end`` (training), or, with
        ``end_id`` None, ``start tokens[:-1]`` predicting ``tokens`` (scoring a continuation)."""
        tokens = list(tokens)
        if end_id is not None:
            return cls([start_id, *tokens], position, 1, [*tokens, end_id])
        if not tokens:
            raise ValueError("an empty span has nothing to score")
        return cls([start_id, *tokens[:-1]], position, 1, tokens)

    @classmethod
    def join(cls, blocks: Sequence[Block]) -> Block:
        """Blocks of successive blanks as one block (one choice filling several blanks: they see each other)."""
        labels = None
        if any(b.labels is not None for b in blocks):
            labels = [t for b in blocks for t in (b.labels if b.labels is not None else [-100] * len(b))]
        return cls(
            [t for b in blocks for t in b.input_ids],
            [p for b in blocks for p in b.position],
            [p for b in blocks for p in b.block_position],
            labels,
        )


def _per_token(value, n: int, what: str, step: int) -> list[int]:
    if isinstance(value, int) or (torch.is_tensor(value) and value.dim() == 0):
        return [int(value) + step * i for i in range(n)]
    value = [int(v) for v in value]
    if len(value) != n:
        raise ValueError(f"a block of {n} tokens has {len(value)} {what}s")
    return value


@dataclass
class Sample:
    """Part A (complete ids: [CLS], blanks, eos as the model expects) and the blocks that follow it."""

    part_a: Sequence[int]
    blocks: Sequence[Block] = ()
    position_offset: int = 0
    """Added to part A's text positions (the pretraining option ``random_position``)."""


def build_batch(
    samples: Sequence[Sample],
    *,
    pad_id: int,
    blocks_see_each_other: bool = True,
    align: bool | int = False,
    pad_side: str = "right",
    length: int | None = None,
    explicit_mask: bool = False,
) -> GLMBatch:
    """Lay out samples as one padded batch (see the module docstring for the rules).

    ``align``: part B starts at the same column in every sample: after the longest part A (True) or at a given
    column (an int, at least the longest part A), part A padded on ``pad_side``. ``length``: the batch's total
    length (an error if a sample needs more). The mask is ``sep`` where it says everything (blocks see each
    other, part A unpadded before part B), else a boolean ``attention_mask``; ``explicit_mask`` always gives the
    latter. ``labels`` are included when some block has labels; ``block_index`` always.
    """
    if not samples:
        raise ValueError("no samples to lay out")
    if pad_side not in ("right", "left"):
        raise ValueError(f"pad_side must be 'right' or 'left', got {pad_side!r}")
    a_lengths = [len(s.part_a) for s in samples]
    a_width = None
    if align is not False:
        a_width = max(a_lengths) if align is True else int(align)
        if a_width < max(a_lengths):
            raise ValueError(f"align={a_width} is shorter than the longest part A ({max(a_lengths)} tokens)")
    b_lengths = [sum(len(b) for b in s.blocks) for s in samples]
    ends = [(a if a_width is None else a_width) + b for a, b in zip(a_lengths, b_lengths, strict=True)]
    total = max(ends)
    if length is not None:
        if total > length:
            worst = ends.index(total)
            raise ValueError(f"sample {worst} takes {total} tokens, over the length {length}")
        total = length
    batch = len(samples)
    input_ids = torch.full((batch, total), pad_id, dtype=torch.long)
    position_ids = torch.zeros((batch, 2, total), dtype=torch.long)
    block_index = torch.full((batch, total), -1, dtype=torch.long)
    labels = torch.full((batch, total), -100, dtype=torch.long)
    a_start = torch.zeros(batch, dtype=torch.long)  # first column of part A
    b_start = torch.zeros(batch, dtype=torch.long)  # first column of part B
    has_labels = False
    for i, sample in enumerate(samples):
        n = a_lengths[i]
        first = a_width - n if a_width is not None and pad_side == "left" else 0
        a_start[i], b_start[i] = first, (n if a_width is None else a_width)
        if n:
            input_ids[i, first : first + n] = torch.as_tensor(list(sample.part_a), dtype=torch.long)
            position_ids[i, 0, first : first + n] = torch.arange(n) + sample.position_offset
        column = int(b_start[i])
        for k, block in enumerate(sample.blocks):
            end = column + len(block)
            input_ids[i, column:end] = torch.tensor(block.input_ids, dtype=torch.long)
            position_ids[i, 0, column:end] = torch.tensor(block.position, dtype=torch.long)
            position_ids[i, 1, column:end] = torch.tensor(block.block_position, dtype=torch.long)
            block_index[i, column:end] = k
            if block.labels is not None:
                labels[i, column:end] = torch.tensor(block.labels, dtype=torch.long)
                has_labels = True
            column = end
    out = GLMBatch(input_ids=input_ids, position_ids=position_ids)
    a_len = torch.tensor(a_lengths, dtype=torch.long)
    a_padded = a_width is not None and any(n != a_width for n in a_lengths)
    if blocks_see_each_other and not a_padded and not explicit_mask:
        out["sep"] = a_len
    else:
        out["attention_mask"] = _mask(a_start, a_len, b_start, block_index, blocks_see_each_other)
    if has_labels:
        out["labels"] = labels
    out["block_index"] = block_index
    return out


def _mask(a_start, a_len, b_start, block_index, blocks_see_each_other: bool) -> torch.Tensor:
    """``[B, 1, L, L]``: every query sees its sample's part A; a block token sees its block causally and, if
    ``blocks_see_each_other``, every earlier block token; padding keys are seen by nobody."""
    total = block_index.shape[1]
    columns = torch.arange(total)
    in_a = (columns >= a_start[:, None]) & (columns < (a_start + a_len)[:, None])  # [B, L]
    in_b = block_index >= 0
    keys_a = in_a[:, None, :]  # every query sees part A
    causal = columns[None, :, None] >= columns[None, None, :]  # query >= key
    both_b = in_b[:, :, None] & in_b[:, None, :]
    if blocks_see_each_other:
        linked = both_b & causal
    else:
        linked = both_b & causal & (block_index[:, :, None] == block_index[:, None, :])
    return (keys_a | linked)[:, None]


def block_targets(batch: GLMBatch, num_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each block's labels and the columns that predict them, ``[B, num_blocks, T]`` each (padded with -100 and
    0): the ``choice_ids`` / ``choice_indices`` of ``GLMForMultipleChoice`` when block k is choice k."""
    labels, block_index = batch["labels"], batch["block_index"]
    scored = labels != -100
    per_choice = [[(block_index[b] == c) & scored[b] for c in range(num_blocks)] for b in range(len(labels))]
    longest = max((int(m.sum()) for row in per_choice for m in row), default=0)
    choice_ids = torch.full((len(labels), num_blocks, longest), -100, dtype=torch.long)
    choice_indices = torch.zeros((len(labels), num_blocks, longest), dtype=torch.long)
    for b, row in enumerate(per_choice):
        for c, keep in enumerate(row):
            columns = keep.nonzero().flatten()
            choice_ids[b, c, : len(columns)] = labels[b, columns]
            choice_indices[b, c, : len(columns)] = columns
    return choice_ids, choice_indices


def block_columns(blocks: Sequence[Block | None], pad_id: int, device=None) -> GLMBatch:
    """One block per row (None: nothing), padded to the longest: the columns a cached batch is extended by.

    Returns ``input_ids [R, W]``, ``position_ids [R, 2, W]``, ``labels [R, W]`` and ``block_index [R, W]`` (0 on
    the block's tokens, -1 on padding), padding as everywhere.
    """
    rows, width = len(blocks), max((len(b) for b in blocks if b is not None), default=0)
    out = GLMBatch(
        input_ids=torch.full((rows, width), pad_id, dtype=torch.long),
        position_ids=torch.zeros((rows, 2, width), dtype=torch.long),
        labels=torch.full((rows, width), -100, dtype=torch.long),
        block_index=torch.full((rows, width), -1, dtype=torch.long),
    )
    for r, block in enumerate(blocks):
        if block is None or not len(block):
            continue
        n = len(block)
        out["input_ids"][r, :n] = torch.tensor(block.input_ids, dtype=torch.long)
        out["position_ids"][r, :, :n] = torch.tensor([block.position, block.block_position], dtype=torch.long)
        if block.labels is not None:
            out["labels"][r, :n] = torch.tensor(block.labels, dtype=torch.long)
        out["block_index"][r, :n] = 0
    return {key: value.to(device) for key, value in out.items()} if device is not None else out


def extend_mask(visible: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """The mask of ``W`` columns appended to a cached batch: ``[R, 1, W, K + W]``.

    ``visible [R, K]``: which cached keys each row may see (hidden ones are padding); ``real [R, W]``: which new
    columns are real tokens (of one block, causal in itself). Every new query sees the row's visible keys and the
    real new keys up to itself; padding is seen by nobody.
    """
    width = real.shape[1]
    steps = torch.arange(width, device=real.device)
    causal = steps[None, :, None] >= steps[None, None, :]  # [1, W, W]
    return torch.cat([visible[:, None, :].expand(-1, width, -1), causal & real[:, None, :]], dim=2)[:, None]

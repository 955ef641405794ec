"""The decoding state: contexts encoded once into a KV cache, then part-B blocks appended to it.

A :class:`DecodingState` holds a batch of rows, each a context (part A) and what has been fed after it, and
``visible [rows, keys]``: which cached keys each row may attend to. Padding after a short context, the keys of
a row that fed nothing, and the padding of short blocks are hidden, so padding is never attended. While every
key is visible the model gets no mask at all, which keeps SDPA on its fastest path.

Operations: :meth:`~DecodingState.append` (whole blocks, one per row, causal inside; returns their hidden
states), :meth:`~DecodingState.step` (one token per row; returns the next-token logits),
:meth:`~DecodingState.reorder` (rows become copies of given rows: beams move, or a context is forked for each of
its continuations), :meth:`~DecodingState.fork` and :meth:`~DecodingState.crop` (forget keys from a length on).
Positions and masks come from :mod:`torchglm.layout`, as every other GLM input does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import Cache, DynamicLayer

from torchglm.layout import Block, GLMBatch, Sample, block_columns, build_batch, extend_mask


class BufferLayer(DynamicLayer):
    """A cache layer whose keys and values live in buffers sized for the whole decoding up front.

    ``DynamicLayer`` appends with ``torch.cat``, copying the whole cache at every step: at 16 texts of 512 tokens
    that copy costs as much as the step's maths. Here a step writes its own token only and attention reads a view.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, _, dim = key_states.shape
        self.key_buffer = key_states.new_empty(batch, heads, self.capacity, dim)
        self.value_buffer = value_states.new_empty(batch, heads, self.capacity, value_states.shape[-1])
        self.device, self.is_initialized = key_states.device, True
        self._refresh()

    def _refresh(self):
        self.keys = self.key_buffer[:, :, : self.length]
        self.values = self.value_buffer[:, :, : self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"decoding cache full: {end} keys for {self.capacity} places")
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self._refresh()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def crop(self, tokens_to_remove: int) -> None:
        self.length -= abs(tokens_to_remove)
        if self.is_initialized:
            self._refresh()

    def _rebuffer(self, fn):
        if self.is_initialized:
            self.key_buffer, self.value_buffer = fn(self.key_buffer), fn(self.value_buffer)
            self._refresh()

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        self._rebuffer(lambda buffer: buffer.index_select(0, beam_idx.to(buffer.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._rebuffer(lambda buffer: buffer.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._rebuffer(lambda buffer: buffer[indices])


def check_contexts(contexts: Sequence[Sequence[int]], config, blank_set=None) -> None:
    """Every context non-empty, inside the vocabulary and the positions (and holding a blank, if given)."""
    for i, context in enumerate(contexts):
        if not context:
            raise ValueError(f"context {i} is empty")
        if min(context) < 0 or max(context) >= config.vocab_size:
            raise ValueError(f"context {i} holds ids outside the vocabulary [0, {config.vocab_size - 1}]")
        if len(context) > config.max_sequence_length:
            raise ValueError(
                f"context {i} has {len(context)} tokens; the model's positions stop at "
                f"max_sequence_length={config.max_sequence_length}"
            )
        if blank_set is not None and not any(t in blank_set for t in context):
            raise ValueError(f"context {i} has no blank (none of the ids {sorted(blank_set)})")


class DecodingState:
    """A batch's KV cache and what each row may see. Example::

        state = DecodingState(model, contexts, pad_id=0, capacity=32)   # contexts encoded once
        state.fork(4)                                                   # 4 rows per context (beams)
        logits = state.step(tokens, text_positions, block_position=1, feeds=running)    # [R, V]
        hidden = state.append([Block([sop, 7, 8], position=5), None, ...])            # [R, W, H]

    ``model`` is a GLM with a tied output head (``GLMForConditionalGeneration``, ``GLMForMultipleChoice``), in
    eval mode. ``capacity`` is the number of keys that may be added after the contexts.
    """

    def __init__(self, model, contexts: Sequence[Sequence[int]], *, pad_id: int, capacity: int):
        self.model, self.pad_id = model, pad_id
        device = model.device
        batch = build_batch([Sample(c) for c in contexts], pad_id=pad_id, align=True)
        lengths = torch.tensor([len(c) for c in contexts], device=device)
        length = int(lengths.max())
        self.visible = torch.arange(length, device=device)[None, :] < lengths[:, None]  # [R, K]
        self.padded = bool((lengths != length).any())
        self.cache = Cache(layers=[BufferLayer(length + capacity) for _ in range(model.config.num_layers)])
        # Part A is bidirectional: each context token sees its whole context and no padding.
        mask = batch["attention_mask"] if self.padded else length
        model.glm(
            batch["input_ids"].to(device), batch["position_ids"].to(device), mask, cache=self.cache, use_cache=True
        )

    @property
    def rows(self) -> int:
        return self.visible.shape[0]

    @property
    def length(self) -> int:
        """Keys in the cache (the same for every row; hidden ones included)."""
        return self.visible.shape[1]

    def _forward(self, input_ids, position_ids, real: torch.Tensor) -> torch.Tensor:
        """Feed columns after the cache; ``real [R, W]`` says which are tokens. Returns hidden states."""
        self.padded = self.padded or not bool(real.all())
        mask = extend_mask(self.visible, real) if self.padded else None  # None: every key visible, SDPA's fast path
        self.visible = torch.cat([self.visible, real], dim=1)
        return self.model.glm(input_ids, position_ids, mask, cache=self.cache, use_cache=True).last_hidden_state

    def step(
        self, tokens: torch.Tensor, text_positions: torch.Tensor, block_position: int, feeds: torch.Tensor
    ) -> torch.Tensor:
        """Feed one token per row at (text position, block position); rows with ``feeds`` False feed padding
        whose key nobody sees. Returns the next-token logits ``[R, V]``."""
        position_ids = torch.stack([text_positions, torch.full_like(text_positions, block_position)], dim=1)
        hidden = self._forward(tokens[:, None], position_ids[:, :, None], feeds[:, None])
        return self.model.output_logits(hidden[:, -1])  # [R, V]

    def append(self, blocks: Sequence[Block | None]) -> torch.Tensor:
        """Feed one whole block per row (None: nothing), causal inside; returns their hidden states ``[R, W, H]``
        (padding columns included)."""
        if len(blocks) != self.rows:
            raise ValueError(f"{len(blocks)} blocks for {self.rows} rows")
        return self.append_columns(block_columns(blocks, self.pad_id, device=self.visible.device))

    def append_columns(self, columns: GLMBatch) -> torch.Tensor:
        """:meth:`append` of blocks already laid out by ``torchglm.layout.block_columns`` (whose ``labels`` and
        ``block_index`` then say which hidden states to score)."""
        if columns["input_ids"].shape[1] == 0:
            return self.visible.new_zeros((self.rows, 0, self.model.config.hidden_size), dtype=torch.float32)
        real = columns["block_index"] >= 0
        return self._forward(columns["input_ids"], columns["position_ids"], real)

    def reorder(self, rows: torch.Tensor) -> None:
        """Rows become copies of ``rows`` (any length: beams move, or contexts fork per continuation)."""
        self.cache.reorder_cache(rows)
        self.visible = self.visible.index_select(0, rows)

    def fork(self, copies: int) -> None:
        """Every row becomes ``copies`` consecutive rows (beams start from the same context)."""
        if copies > 1:
            self.cache.batch_repeat_interleave(copies)
            self.visible = self.visible.repeat_interleave(copies, dim=0)

    def crop(self, length: int) -> None:
        """Forget every key from ``length`` on."""
        self.cache.crop(length - self.length)
        self.visible = self.visible[:, :length]

"""The released model cards' input builders: contexts from a tokenizer output, laid out by :mod:`torchglm.layout`.

A part-B block fills one blank: it starts with ``<|startofpiece|>``, every token in it has position
``(blank position, 1..n)``, and it sees all of part A (minus padding), every earlier block and itself causally.
Blanks are the [MASK], [sMASK] and [gMASK] tokens of the context, filled in left-to-right order.

The tokenizer's padding may be on either side; a context's positions count from its first real token, and part B
starts after the padded context (column ``L``) in every row, as in the released code. Padding follows the one
rule of :mod:`torchglm.layout` (pad id, position (0, 0), label -100, never attended); the released code gave
padding other positions, which no real token could see.
"""

from __future__ import annotations

import torch
from transformers import BatchEncoding

from torchglm.layout import Block, Sample, block_targets, build_batch


def _contexts(tokenizer, model_input) -> tuple[list[list[int]], int, str]:
    """The real tokens of each row of a tokenizer output, the padded width and the padding side."""
    ids = model_input["input_ids"]
    mask = model_input.get("attention_mask") if hasattr(model_input, "get") else None
    if torch.is_tensor(ids):
        rows = ids.reshape(-1, ids.shape[-1]).tolist()
        masks = None if mask is None else torch.as_tensor(mask).reshape(len(rows), -1).tolist()
    else:
        rows = [list(ids)] if ids and isinstance(ids[0], int) else [list(r) for r in ids]
        masks = None if mask is None else [list(mask)] if mask and isinstance(mask[0], int) else [list(m) for m in mask]
    width = max(map(len, rows))
    masks = masks or [[1] * len(r) for r in rows]
    left = any(m and not m[0] and any(m) for m in masks)
    contexts = [[t for t, keep in zip(row, m, strict=False) if keep] for row, m in zip(rows, masks, strict=True)]
    return contexts, width, "left" if left else "right"


def _blanks(tokenizer, contexts: list[list[int]]) -> list[list[int]]:
    """Sorted positions of the blank tokens of each context; an error for a context without one."""
    blank_ids = set(tokenizer.mask_token_ids)
    blanks = [[i for i, t in enumerate(c) if t in blank_ids] for c in contexts]
    for i, row in enumerate(blanks):
        if not row:
            names = {"MASK": "[MASK]", "sMASK": "[sMASK]", "gMASK": "[gMASK]"}
            present = " ".join(v for k, v in names.items() if tokenizer.layout.id(k) is not None)
            raise ValueError(f"sample {i} has no blank ({present}) to fill")
    return blanks


def _fills(tokenizer, target, n_blanks: int, what: str, sample: int) -> list[list[int]]:
    """One target/choice as token ids per blank: a str fills the first blank, a list of str the first ones."""
    texts = [target] if isinstance(target, str) else list(target)
    if len(texts) > n_blanks:
        raise ValueError(f"sample {sample}: {len(texts)} {what} texts for {n_blanks} blank(s)")
    return [tokenizer.encode(t, add_special_tokens=False) for t in texts]


def _cut(block: Block, length: int) -> Block:
    labels = None if block.labels is None else block.labels[:length]
    return Block(block.input_ids[:length], block.position[:length], block.block_position[:length], labels)


def build_inputs_for_generation(tokenizer, model_input, max_gen_length: int = 512, targets=None, padding=False):
    """Inputs to generate the first blank of each context, or to train on filling its blanks.

    ``model_input`` is a tokenizer output (``input_ids`` ``[B,L]``, optional ``attention_mask``).

    Without ``targets`` (generation): ``input_ids [B,L+1]`` (``<|startofpiece|>`` appended), ``position_ids
    [B,2,L+G]`` (``G = max_gen_length``; the generated tokens sit at the first blank's position with block
    positions ``1..G``) and ``generation_attention_mask [B,1,L+G,L+G]``. Only the first blank is generated;
    ``torchglm.fill`` fills every blank of a text, one after another.

    With ``targets`` (teacher forcing): one entry per sample (a str alone for a batch of one), each a str for
    the first blank or a list of str for the first blanks in order. Each filled blank becomes a part-B block
    ``<|startofpiece|> target`` with labels ``target <|endofpiece|>``; blocks follow one another, are cut to
    ``max_gen_length`` tokens in all, and are padded to the longest sample (to ``max_gen_length`` with
    ``padding=True``). Returns ``input_ids [B,L+G]``, ``position_ids [B,2,L+G]``, ``attention_mask
    [B,1,L+G,L+G]`` and ``labels [B,L+G]``: the token each position should predict, -100 on the context and
    padding (not shifted).
    """
    contexts, width, side = _contexts(tokenizer, model_input)
    blanks = _blanks(tokenizer, contexts)
    sop, eop, pad = tokenizer.sop_token_id, tokenizer.eop_token_id, tokenizer.pad_token_id
    if targets is None:
        planned = [Block([sop] + [pad] * (max_gen_length - 1), b[0]) for b in blanks]  # tokens to come
        batch = build_batch(
            [Sample(c, [block]) for c, block in zip(contexts, planned, strict=True)],
            pad_id=pad, align=width, pad_side=side, explicit_mask=True,
        )  # fmt: skip
        return BatchEncoding(
            {
                "input_ids": batch["input_ids"][:, : width + 1],
                "position_ids": batch["position_ids"],
                "generation_attention_mask": batch["attention_mask"].long(),
            }
        )
    if isinstance(targets, str):
        targets = [targets]
    if len(targets) != len(contexts):
        raise ValueError(f"{len(targets)} targets for a batch of {len(contexts)}")
    samples = []
    for b, target in enumerate(targets):
        fills = _fills(tokenizer, target, len(blanks[b]), "target", b)
        spans = [Block.span(sop, fill, blanks[b][k], end_id=eop) for k, fill in enumerate(fills)]
        samples.append(Sample(contexts[b], [_cut(Block.join(spans), max_gen_length)] if spans else []))
    length = width + max_gen_length if padding else None
    batch = build_batch(samples, pad_id=pad, align=width, pad_side=side, length=length, explicit_mask=True)
    labels = batch.get("labels", torch.full_like(batch["input_ids"], -100))
    return BatchEncoding(
        {
            "input_ids": batch["input_ids"],
            "position_ids": batch["position_ids"],
            "attention_mask": batch["attention_mask"].long(),
            "labels": labels,
        }
    )


def build_inputs_for_multiple_choice(tokenizer, model_input, choices, max_length: int | None = None):
    """Inputs to score every choice of every context in one forward pass.

    ``choices[b]`` lists sample ``b``'s choices (for a batch of one, a flat list of str also works); a choice
    is a str filling the context's first blank, or a list of str filling its first blanks in order. Each
    choice becomes its own part-B block(s) after the context, seeing the context but no other choice; the
    blocks hold ``<|startofpiece|> choice[:-1]``, so the logits at each block position predict the next
    choice token.

    Returns ``input_ids [B,L]``, ``position_ids [B,2,L]`` and ``attention_mask [B,1,L,L]`` (0/1, padded to the
    longest sample or to ``max_length``), ``choice_ids [B,C,T]`` (each choice's tokens over all its blanks,
    padded with -100) and ``choice_indices [B,C,T]`` (the sequence index whose logits predict that token,
    padded with 0). A choice's score is the sum of log-probabilities of ``choice_ids`` at ``choice_indices``.
    """
    contexts, width, side = _contexts(tokenizer, model_input)
    if len(contexts) == 1 and choices and isinstance(choices[0], str):
        choices = [choices]
    if len(choices) != len(contexts):
        raise ValueError(f"choices for {len(choices)} samples, batch of {len(contexts)}")
    blanks = _blanks(tokenizer, contexts)
    sop = tokenizer.sop_token_id
    samples = []
    for b, row in enumerate(choices):
        blocks = []
        for choice in row:
            fills = _fills(tokenizer, choice, len(blanks[b]), "choice", b)
            if any(not fill for fill in fills):
                raise ValueError(f"sample {b}: choice {choice!r} has an empty fill, nothing to score")
            blocks.append(Block.join([Block.span(sop, fill, blanks[b][k]) for k, fill in enumerate(fills)]))
        samples.append(Sample(contexts[b], blocks))
    try:
        batch = build_batch(
            samples, pad_id=tokenizer.pad_token_id, blocks_see_each_other=False, align=width, pad_side=side,
            length=max_length,
        )  # fmt: skip
    except ValueError as error:
        raise ValueError(f"a context with its choices is over max_length={max_length}: {error}") from error
    choice_ids, choice_indices = block_targets(batch, max(len(row) for row in choices))
    return BatchEncoding(
        {
            "input_ids": batch["input_ids"],
            "position_ids": batch["position_ids"],
            "attention_mask": batch["attention_mask"].long(),
            "choice_ids": choice_ids,
            "choice_indices": choice_indices,
        }
    )

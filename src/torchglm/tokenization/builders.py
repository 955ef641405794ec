"""Model inputs for generating and scoring blanks: GLM's part A (the context, bidirectional) and part B blocks.

A part-B block fills one blank: it starts with ``<|startofpiece|>``, every token in it has position
``(blank position, 1..n)``, and it sees all of part A (minus padding), every earlier block and itself causally.
Because earlier blocks are fully visible and a block is causal, the part-B mask is plainly lower-triangular
whatever the number of blocks. Blanks are the [MASK], [sMASK] and [gMASK] tokens of the context, filled in
left-to-right order.

Padding may be on either side: a context's positions count from its first real token, so a left-padded batch
gets the same positions as an unpadded one (with right padding they are ``0..L-1``, as in the released code).
"""

from __future__ import annotations

import torch
from transformers import BatchEncoding


def _context(tokenizer, model_input) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``input_ids [B,L]``, ``attention_mask [B,L]`` and part-A positions ``[B,L]`` of a tokenizer output."""
    ids = model_input["input_ids"]
    mask = model_input.get("attention_mask") if hasattr(model_input, "get") else None
    if not torch.is_tensor(ids):
        rows = [ids] if ids and isinstance(ids[0], int) else list(ids)
        length = max(map(len, rows))
        ids = torch.tensor([r + [tokenizer.pad_token_id] * (length - len(r)) for r in rows], dtype=torch.long)
        if mask is None:
            mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows], dtype=torch.long)
        elif not torch.is_tensor(mask):
            m = [mask] if mask and isinstance(mask[0], int) else list(mask)
            mask = torch.tensor([r + [0] * (length - len(r)) for r in m], dtype=torch.long)
    ids = ids.long().reshape(-1, ids.shape[-1])
    mask = torch.ones_like(ids) if mask is None else torch.as_tensor(mask).long().reshape(ids.shape)
    leading_pad = torch.cumprod(1 - mask, dim=1).sum(dim=1, keepdim=True)  # [B,1], 0 with right padding
    positions = (torch.arange(ids.shape[1]) - leading_pad).clamp(min=0)
    return ids, mask, positions


def _blanks(tokenizer, ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """Sorted indices of the blank tokens of each row (padding excluded); an error for a row without one."""
    is_blank = torch.isin(ids, torch.tensor(tokenizer.mask_token_ids)) & mask.bool()
    blanks = [torch.nonzero(row).flatten().tolist() for row in is_blank]
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


def _attention(mask: torch.Tensor, total: int, spans: list[list[tuple[int, int]]]) -> torch.Tensor:
    """``[B,1,total,total]`` 0/1: every row sees the real context tokens; each span is causal in itself."""
    batch, length = mask.shape
    out = torch.zeros(batch, total, total, dtype=torch.long)
    out[:, :, :length] = mask[:, None, :]
    for b, row_spans in enumerate(spans):
        for start, end in row_spans:
            out[b, start:end, start:end] = torch.tril(torch.ones(end - start, end - start, dtype=torch.long))
    return out.unsqueeze(1)


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
    ids, mask, ctx_pos = _context(tokenizer, model_input)
    batch, length = ids.shape
    blanks = _blanks(tokenizer, ids, mask)
    sop, eop = tokenizer.sop_token_id, tokenizer.eop_token_id
    if targets is None:
        gen = max_gen_length
        block_in = [[sop] for _ in range(batch)]
        block_pos = [[int(ctx_pos[b, blanks[b][0]])] * gen for b in range(batch)]
        block_rel = [list(range(1, gen + 1)) for _ in range(batch)]
    else:
        if isinstance(targets, str):
            targets = [targets]
        if len(targets) != batch:
            raise ValueError(f"{len(targets)} targets for a batch of {batch}")
        block_in, block_lab, block_pos, block_rel = [], [], [], []
        for b, target in enumerate(targets):
            tin, tlab, tpos, trel = [], [], [], []
            for k, fill in enumerate(_fills(tokenizer, target, len(blanks[b]), "target", b)):
                tin += [sop, *fill]
                tlab += [*fill, eop]
                tpos += [int(ctx_pos[b, blanks[b][k]])] * (len(fill) + 1)
                trel += list(range(1, len(fill) + 2))
            block_in.append(tin[:max_gen_length])
            block_lab.append(tlab[:max_gen_length])
            block_pos.append(tpos[:max_gen_length])
            block_rel.append(trel[:max_gen_length])
        gen = max_gen_length if padding else max(map(len, block_in))
        for b in range(batch):  # padding continues the last block (or sits at the first blank if none)
            n = len(block_in[b])
            last_pos = block_pos[b][-1] if n else int(ctx_pos[b, blanks[b][0]])
            last_rel = block_rel[b][-1] if n else 0
            block_in[b] += [tokenizer.pad_token_id] * (gen - n)
            block_lab[b] += [-100] * (gen - n)
            block_pos[b] += [last_pos] * (gen - n)
            block_rel[b] += list(range(last_rel + 1, last_rel + 1 + gen - n))
    position_ids = torch.stack(
        (
            torch.cat((ctx_pos, torch.tensor(block_pos, dtype=torch.long).reshape(batch, gen)), dim=1),
            torch.cat((torch.zeros_like(ids), torch.tensor(block_rel, dtype=torch.long).reshape(batch, gen)), dim=1),
        ),
        dim=1,
    )  # [B,2,L+G]
    attention = _attention(mask, length + gen, [[(length, length + gen)]] * batch)  # [B,1,L+G,L+G]
    input_ids = torch.cat((ids, torch.tensor(block_in, dtype=torch.long).reshape(batch, -1)), dim=1)
    if targets is None:
        return BatchEncoding(
            {"input_ids": input_ids, "position_ids": position_ids, "generation_attention_mask": attention}
        )
    labels = torch.cat((torch.full_like(ids, -100), torch.tensor(block_lab, dtype=torch.long)), dim=1)
    return BatchEncoding(
        {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": attention, "labels": labels}
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
    ids, mask, ctx_pos = _context(tokenizer, model_input)
    batch, length = ids.shape
    if batch == 1 and choices and isinstance(choices[0], str):
        choices = [choices]
    if len(choices) != batch:
        raise ValueError(f"choices for {len(choices)} samples, batch of {batch}")
    blanks = _blanks(tokenizer, ids, mask)
    sop = tokenizer.sop_token_id
    seqs, pos_rows, rel_rows, spans, all_ids, all_idx = [], [], [], [], [], []
    for b in range(batch):
        seq, pos, rel = ids[b].tolist(), ctx_pos[b].tolist(), [0] * length
        row_spans, row_ids, row_idx = [], [], []
        for choice in choices[b]:
            start, c_ids, c_idx = len(seq), [], []
            for k, fill in enumerate(_fills(tokenizer, choice, len(blanks[b]), "choice", b)):
                if not fill:
                    raise ValueError(f"sample {b}: choice {choice!r} has an empty fill, nothing to score")
                c_idx += range(len(seq), len(seq) + len(fill))
                c_ids += fill
                seq += [sop, *fill[:-1]]
                pos += [pos[blanks[b][k]]] * len(fill)
                rel += range(1, len(fill) + 1)
            row_spans.append((start, len(seq)))
            row_ids.append(c_ids)
            row_idx.append(c_idx)
        seqs.append(seq)
        pos_rows.append(pos)
        rel_rows.append(rel)
        spans.append(row_spans)
        all_ids.append(row_ids)
        all_idx.append(row_idx)
    total = max(map(len, seqs))
    if max_length is not None:
        if total > max_length:
            raise ValueError(f"a context with its choices takes {total} tokens, over max_length={max_length}")
        total = max_length
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([s + [pad] * (total - len(s)) for s in seqs], dtype=torch.long)
    position_ids = torch.tensor(
        [
            [p + p[-1:] * (total - len(p)), r + r[-1:] * (total - len(r))]
            for p, r in zip(pos_rows, rel_rows, strict=True)
        ],
        dtype=torch.long,
    )  # [B,2,L]; padding repeats the last position, as the released code did
    attention = _attention(mask, total, spans)  # [B,1,L,L]
    n_choices = max((len(c) for c in all_ids), default=0)
    n_tokens = max((len(t) for c in all_ids for t in c), default=0)
    choice_ids = torch.full((batch, n_choices, n_tokens), -100, dtype=torch.long)
    choice_indices = torch.zeros((batch, n_choices, n_tokens), dtype=torch.long)
    for b in range(batch):
        for c, (t_ids, t_idx) in enumerate(zip(all_ids[b], all_idx[b], strict=True)):
            choice_ids[b, c, : len(t_ids)] = torch.tensor(t_ids, dtype=torch.long)
            choice_indices[b, c, : len(t_idx)] = torch.tensor(t_idx, dtype=torch.long)
    return BatchEncoding(
        {
            "input_ids": input_ids,
            "position_ids": position_ids,
            "attention_mask": attention,
            "choice_ids": choice_ids,
            "choice_indices": choice_indices,
        }
    )

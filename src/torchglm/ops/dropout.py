"""Dropout on CPU.

torch's CPU dropout draws one Bernoulli float per element (~8 ns each) and SDPA's CPU kernel cannot drop
attention probabilities, so training on CPU spent a third of a base-size step on dropout. Here a keep mask costs
16 random bits per element (p is rounded to a multiple of 1/65536: 0.1 drops 0.1000061), and attention with
dropout runs a few heads at a time, so that each [Lq, Lk] block stays in cache, recomputing the probabilities in
the backward pass instead of storing them (as flash attention does).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def keep_mask(shape, p: float, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """True with probability ``1 - round(p * 65536) / 65536``, from the default generator unless one is given."""
    count = math.prod(shape)
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-(2**63), None, generator=generator)  # the full 64-bit range: four uniform 16-bit lanes
    return (words.view(torch.int16)[:count] >= -32768 + round(p * 65536)).view(shape)


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose CPU training path draws a cheap 16-bit keep mask (see above)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        return x * keep_mask(x.shape, self.p, x.device) * (1.0 / (1.0 - self.p))


class DropoutAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(d) masked) with dropout, times v; a few heads at a time, nothing [Lq, Lk] saved.

    ``mask`` is a boolean ``[B or 1, 1, Lq, Lk]`` (True = may attend) or None. Each chunk's keep mask comes from
    its own generator seeded from one draw of the default generator, so the backward pass (and activation
    checkpointing's recomputation) regenerates exactly the same mask.
    """

    CHUNK_BYTES = 4 << 20  # scores of one chunk: small enough to stay in a core's cache

    @staticmethod
    def _chunks(query, key):
        batch, heads, length = query.shape[:3]
        step = max(1, min(heads, DropoutAttention.CHUNK_BYTES // (4 * length * key.shape[-2])))
        return [(b, slice(h, h + step)) for b in range(batch) for h in range(0, heads, step)]

    @staticmethod
    def _probabilities(query, key, hidden_mask, b, heads):
        """The chunk's probabilities (fp32 or wider) and its q, k in that dtype."""
        dtype = torch.promote_types(query.dtype, torch.float32)
        q, k = query[b, heads].to(dtype), key[b, heads].to(dtype)
        scores = torch.matmul(q, k.transpose(-1, -2)).mul_(1.0 / math.sqrt(query.shape[-1]))
        if hidden_mask is not None:
            scores.masked_fill_(hidden_mask[b if len(hidden_mask) > 1 else 0], float("-inf"))
        return torch.softmax(scores, dim=-1), q, k

    @staticmethod
    @torch.autocast("cpu", enabled=False)  # products in fp32 whatever the ambient autocast says
    def forward(ctx, query, key, value, mask, p):
        seed = int(torch.randint(0, 2**62, (), device="cpu"))
        hidden = None if mask is None else ~mask
        out = query.new_empty(*query.shape[:-1], value.shape[-1])
        generator = torch.Generator(device=query.device)
        for i, (b, heads) in enumerate(DropoutAttention._chunks(query, key)):
            probs, _, _ = DropoutAttention._probabilities(query, key, hidden, b, heads)
            generator.manual_seed(seed + i)
            probs.mul_(keep_mask(probs.shape, p, query.device, generator)).mul_(1.0 / (1.0 - p))
            out[b, heads] = torch.matmul(probs, value[b, heads].to(probs.dtype))
        ctx.save_for_backward(query, key, value, hidden)
        ctx.p, ctx.seed = p, seed
        return out

    @staticmethod
    @torch.autocast("cpu", enabled=False)
    def backward(ctx, grad_out):
        query, key, value, hidden = ctx.saved_tensors
        p, scale = ctx.p, 1.0 / math.sqrt(query.shape[-1])
        grads = [torch.empty_like(t) for t in (query, key, value)]
        generator = torch.Generator(device=query.device)
        for i, (b, heads) in enumerate(DropoutAttention._chunks(query, key)):
            probs, q, k = DropoutAttention._probabilities(query, key, hidden, b, heads)
            generator.manual_seed(ctx.seed + i)
            keep = keep_mask(probs.shape, p, query.device, generator)
            g, v = grad_out[b, heads].to(probs.dtype), value[b, heads].to(probs.dtype)
            grads[2][b, heads] = torch.matmul((probs * keep).mul_(1.0 / (1.0 - p)).transpose(-1, -2), g)
            grad_probs = torch.matmul(g, v.transpose(-1, -2)).mul_(keep).mul_(1.0 / (1.0 - p))
            grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype).mul_(scale)
            grads[0][b, heads] = torch.matmul(grad_scores, k)
            grads[1][b, heads] = torch.matmul(grad_scores.transpose(-1, -2), q)
        return *grads, None, None

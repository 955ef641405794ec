"""GLM model speed against its nearest peer, transformers' GPT2LMHeadModel, in one run.

Both models get the same layers, width, heads, vocabulary and sequence length, the same dtype and threads.
Printed as ratios (torchglm / GPT-2): step time of forward+backward (target <= 1.0) and cached greedy
decoding tokens/s (target >= 1.0).

In a half precision this CPU has no GEMM for (bf16 without AVX512-BF16/AMX, fp16 without AVX512-FP16/AMX), GPT-2
would multiply with torch's reference kernel, 100-1000x slower, while torchglm goes through fp32 GEMM: such a ratio
would measure torch's kernel, not GPT-2. The peer is skipped there: its columns print "-" and the row says why.

    python benchmarks/model_speed.py                 # tiny and base widths, fp32 and bf16
    python benchmarks/model_speed.py --sizes tiny --dtypes float32
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from _machine import describe, has_half_gemm
from torchglm import GLMConfig, GLMForConditionalGeneration

SIZES = {
    "tiny": dict(num_layers=2, hidden_size=64, num_attention_heads=4, seq=128, batch=8, context=64, new=64),
    "base": dict(num_layers=12, hidden_size=768, num_attention_heads=12, seq=512, batch=1, context=128, new=32),
}
VOCAB = 30592


def build_models(size: dict, dtype: torch.dtype, peer: bool = True):
    """The GLM and its GPT-2 peer of the same dimensions in ``dtype`` (the peer None unless ``peer``)."""
    torch.manual_seed(0)
    glm = GLMForConditionalGeneration(
        GLMConfig(
            num_layers=size["num_layers"],
            hidden_size=size["hidden_size"],
            num_attention_heads=size["num_attention_heads"],
            max_sequence_length=size["seq"],
            vocab_size=VOCAB,
            embedding_dropout_prob=0.0,
            attention_dropout_prob=0.0,
            output_dropout_prob=0.0,
        )
    )
    if not peer:
        return glm.to(dtype), None
    gpt2 = GPT2LMHeadModel(
        GPT2Config(
            n_layer=size["num_layers"],
            n_embd=size["hidden_size"],
            n_head=size["num_attention_heads"],
            n_positions=size["seq"],
            vocab_size=VOCAB,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            attn_implementation="sdpa",
        )
    )
    return glm.to(dtype), gpt2.to(dtype)


def paired_median_times(first, second, repeats: int) -> tuple[float, float | None]:
    """Median wall time of each function, alternating them so that load changes hit both alike (``second``
    may be None: no peer, its time None)."""
    functions = [fn for fn in (first, second) if fn is not None]
    for fn in functions:
        fn()  # warm-up
    times: list[list[float]] = [[] for _ in functions]
    for _ in range(repeats):
        for fn, bucket in zip(functions, times, strict=True):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    medians = [statistics.median(bucket) for bucket in times]
    return medians[0], medians[1] if second is not None else None


def train_step_time(glm, gpt2, size, repeats):
    batch, seq = size["batch"], size["seq"]
    ids = torch.randint(0, VOCAB, (batch, seq))
    positions = torch.stack([torch.arange(seq), torch.zeros(seq, dtype=torch.long)]).expand(batch, 2, seq)

    def glm_step():
        glm.zero_grad(set_to_none=True)
        glm(ids, positions, attention_mask=0, labels=ids, use_cache=False).loss.backward()

    def gpt2_step():
        gpt2.zero_grad(set_to_none=True)
        gpt2(ids, labels=ids, use_cache=False).loss.backward()

    glm.train()
    if gpt2 is None:
        return paired_median_times(glm_step, None, repeats)
    gpt2.train()
    return paired_median_times(glm_step, gpt2_step, repeats)


@torch.no_grad()
def decode_tokens_per_second(glm, gpt2, size, repeats):
    """Greedy decoding with each model's own KV cache: prefill a context, then one token per step."""
    batch, context, new = size["batch"], size["context"], size["new"]
    ids = torch.randint(0, VOCAB, (batch, context))
    glm.eval()
    if gpt2 is not None:
        gpt2.eval()

    def glm_decode():
        positions = torch.stack([torch.arange(context), torch.zeros(context, dtype=torch.long)]).expand(batch, 2, -1)
        out = glm(ids, positions, attention_mask=context, use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        for step in range(1, new):
            position = torch.tensor([[context - 1], [step]]).expand(batch, 2, 1)
            out = glm(token, position, cache=out.cache, use_cache=True)
            token = out.logits[:, -1].argmax(-1, keepdim=True)

    def gpt2_decode():
        out = gpt2(ids, use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(1, new):
            out = gpt2(token, cache=out.cache, use_cache=True)
            token = out.logits[:, -1].argmax(-1, keepdim=True)

    glm_time, gpt2_time = paired_median_times(glm_decode, None if gpt2 is None else gpt2_decode, repeats)
    return batch * new / glm_time, None if gpt2_time is None else batch * new / gpt2_time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(describe())
    print("ratios are torchglm / GPT-2, both in the row's dtype")
    print(
        f"{'size':6} {'dtype':9} {'train s/step glm':>16} {'gpt2':>8} {'ratio':>6}   "
        f"{'decode tok/s glm':>16} {'gpt2':>8} {'ratio':>6}"
    )
    for size_name in args.sizes:
        size = SIZES[size_name]
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            peer = has_half_gemm(dtype)
            glm, gpt2 = build_models(size, dtype, peer)
            glm_time, gpt2_time = train_step_time(glm, gpt2, size, args.repeats)
            glm_rate, gpt2_rate = decode_tokens_per_second(glm, gpt2, size, args.repeats)
            if peer:
                print(
                    f"{size_name:6} {dtype_name:9} {glm_time:16.4f} {gpt2_time:8.4f} {glm_time / gpt2_time:6.2f}   "
                    f"{glm_rate:16.1f} {gpt2_rate:8.1f} {glm_rate / gpt2_rate:6.2f}",
                    flush=True,
                )
            else:
                print(
                    f"{size_name:6} {dtype_name:9} {glm_time:16.4f} {'-':>8} {'-':>6}   {glm_rate:16.1f} {'-':>8} "
                    f"{'-':>6}   GPT-2 skipped: this CPU has no {dtype_name} GEMM (torch's reference kernel; "
                    "torchglm runs its products through fp32 GEMM here)",
                    flush=True,
                )


if __name__ == "__main__":
    main()

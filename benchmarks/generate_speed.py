"""Decoding speed of ``torchglm.generation`` against GPT-2's ``generate`` and against decoding without a cache.

One run builds a GLM and a transformers ``GPT2LMHeadModel`` of the same layers, width, heads, vocabulary and
position table, same dtype and threads, and decodes 128 greedy tokens after a 512-token context for 1 and 16
texts. GLM fills a ``[gMASK]`` at the context's end through ``fill_ids`` (stop tokens off, so every run makes
all 128 tokens); GPT-2 continues the same context with its own ``generate``. The no-cache path re-runs the
trunk over the whole sequence at every step (what the released remote code does on current transformers; it
also computes logits everywhere, which is left out here, so this baseline is the faster of the two).

Decoding tokens/s exclude the context's encoding: (tokens after the first) / (time for 128 new tokens - time
for 1), so both sides pay their prefill alike. The no-cache time is the sum of its step times, each timed at
a few sequence lengths and interpolated linearly (a full run takes hours at 16 texts). Timings alternate
between the contenders and report medians, as the machine may be shared.

    python benchmarks/generate_speed.py                       # 6 layers x 512, fp32, batches 1 and 16
    python benchmarks/generate_speed.py --batches 1 --repeats 5
Targets: >= 1.0x GPT-2's tokens/s and >= 10x the no-cache path.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from torchglm import GLMConfig, GLMForConditionalGeneration
from torchglm.generation import fill_ids

VOCAB, SOP, GMASK = 30592, 30522, 30524  # the BERT-vocabulary layout of the released models


def build_models(layers: int, width: int, heads: int, positions: int, dtype: torch.dtype):
    torch.manual_seed(0)
    dropout = dict(embedding_dropout_prob=0.0, attention_dropout_prob=0.0, output_dropout_prob=0.0)
    glm = GLMForConditionalGeneration(
        GLMConfig(
            num_layers=layers,
            hidden_size=width,
            num_attention_heads=heads,
            max_sequence_length=positions,
            vocab_size=VOCAB,
            **dropout,
        )
    )
    gpt2 = GPT2LMHeadModel(
        GPT2Config(
            n_layer=layers,
            n_embd=width,
            n_head=heads,
            n_positions=positions,
            vocab_size=VOCAB,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            attn_implementation="sdpa",
            bos_token_id=None,
            eos_token_id=None,  # make every new token, as GLM does here
            pad_token_id=0,
        )
    )
    return glm.to(dtype).eval(), gpt2.to(dtype).eval()


def median_times(functions: dict, repeats: int) -> dict[str, float]:
    """Median wall time of each function, run in turn so that load changes hit all of them alike."""
    for fn in functions.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


@torch.inference_mode()
def no_cache_step_time(glm, contexts: torch.Tensor, new: int, samples: int, repeats: int) -> float:
    """Time of ``new - 1`` no-cache steps (the trunk over context + sop + tokens so far, logits of the last
    position), from a few timed lengths interpolated linearly."""
    batch, context = contexts.shape
    gen = torch.Generator().manual_seed(1)
    lengths = sorted({context + 1 + round(k * (new - 2) / (samples - 1)) for k in range(samples)})
    measured = []
    for length in lengths:
        tail = torch.randint(1000, VOCAB - 600, (batch, length - context), generator=gen)
        tail[:, 0] = SOP
        ids = torch.cat([contexts, tail], dim=1)
        block = torch.cat([torch.zeros(context, dtype=torch.long), torch.arange(1, length - context + 1)])
        text = torch.cat([torch.arange(context), torch.full((length - context,), context - 1)])
        position_ids = torch.stack([text, block]).expand(batch, 2, length)

        def step(ids=ids, position_ids=position_ids):
            hidden = glm.glm(ids, position_ids, context, use_cache=False).last_hidden_state[:, -1]
            torch.nn.functional.linear(hidden, glm.glm.word_embeddings.weight).argmax(-1)

        measured.append(median_times({"step": step}, repeats)["step"])
    # steps 1..new-1 feed sequences of context + 2 .. context + new tokens
    total = 0.0
    for length in range(context + 2, context + new + 1):
        i = min(max(sum(length >= x for x in lengths) - 1, 0), len(lengths) - 2)
        x0, x1 = lengths[i], lengths[i + 1]
        total += measured[i] + (measured[i + 1] - measured[i]) * (length - x0) / (x1 - x0)
    return total


@torch.inference_mode()
def compare(glm, gpt2, batch: int, context: int, new: int, repeats: int, samples: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, VOCAB - 600, (batch, context), generator=gen)  # plain word pieces
    ids[:, -1] = GMASK
    contexts = ids.tolist()
    glm_kwargs = dict(blank_ids=[GMASK], sop_id=SOP, stop_ids=[], pad_id=0)
    attention = torch.ones_like(ids)

    def glm_run(n):
        return lambda: fill_ids(glm, contexts, max_new_tokens=n, **glm_kwargs)

    def gpt2_run(n):
        return lambda: gpt2.generate(ids, attention_mask=attention, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    times = median_times(
        {"glm_1": glm_run(1), "glm_n": glm_run(new), "gpt2_1": gpt2_run(1), "gpt2_n": gpt2_run(new)}, repeats
    )
    decoded = batch * (new - 1)
    no_cache = no_cache_step_time(glm, ids, new, samples, max(1, repeats // 2))
    return {
        "glm": decoded / (times["glm_n"] - times["glm_1"]),
        "gpt2": decoded / (times["gpt2_n"] - times["gpt2_1"]),
        "no_cache": decoded / no_cache,
        "glm_end_to_end": batch * new / times["glm_n"],
        "gpt2_end_to_end": batch * new / times["gpt2_n"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-cache-samples", type=int, default=4, help="sequence lengths timed without a cache")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    glm, gpt2 = build_models(args.layers, args.width, args.heads, 2 * args.context, dtype)
    print(
        f"{args.layers} layers x {args.width}, {args.heads} heads, vocab {VOCAB}, {args.dtype}, "
        f"{args.threads} threads; context {args.context}, {args.new} new tokens; medians of {args.repeats}"
    )
    print(
        f"{'texts':>5} {'GLM tok/s':>10} {'GPT-2 tok/s':>12} {'no-cache tok/s':>15} {'vs GPT-2':>9} {'vs no-cache':>12}"
    )
    for batch in args.batches:
        r = compare(glm, gpt2, batch, args.context, args.new, args.repeats, args.no_cache_samples)
        print(
            f"{batch:>5} {r['glm']:>10.1f} {r['gpt2']:>12.1f} {r['no_cache']:>15.1f} "
            f"{r['glm'] / r['gpt2']:>8.2f}x {r['glm'] / r['no_cache']:>11.1f}x"
            f"   (end to end with the context: GLM {r['glm_end_to_end']:.1f}, GPT-2 {r['gpt2_end_to_end']:.1f} tok/s)",
            flush=True,
        )


if __name__ == "__main__":
    main()

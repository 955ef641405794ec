"""Decoding speed of ``torchglm.generation`` against GPT-2's ``generate``, the memory-bandwidth limit, and decoding
without a cache.

One run builds a GLM and a transformers ``GPT2LMHeadModel`` of the same layers, width, heads, vocabulary and
position table, same dtype and threads, and decodes greedy tokens after a 512-token context for 1 and 16 texts,
32, 64 and 128 new tokens. GLM fills a ``[gMASK]`` at the context's end through ``fill_ids`` (stop tokens off,
so every run makes all its tokens); GPT-2 continues the same context with its own ``generate`` (SDPA, its
default cache), as its users run it. Decoding tokens/s exclude the context's encoding: (tokens after the first)
/ (time for n new tokens - time for 1), so both sides pay their prefill alike. Timings alternate between the
contenders and report medians, as the machine may be shared.

The bandwidth limit of batch-1 decoding: every step reads all weights that multiply the new token (the blocks'
matrices and the tied output layer, ``V x H``; the embedding lookups read one row) and the KV cache (``2 L H T``
values at the step's length ``T``), so tokens/s can not exceed (read bandwidth) / (those bytes). The read
bandwidth is measured here (``_machine.read_bandwidth_gbs``, a reduction over 512 MB) with the same threads.

The no-cache path re-runs the trunk over the whole sequence at every step (what the released remote code does on
current transformers); its time is the sum of its step times, each timed at a few sequence lengths and
interpolated linearly. ``--previous FILE`` adds another ``fill_ids`` (e.g. an earlier ``generation.py``, which
imports nothing from torchglm) as a peer in the same run.

    python benchmarks/generate_speed.py                       # 6 layers x 512, fp32, 1 and 16 texts, 32/64/128
    python benchmarks/generate_speed.py --batches 1 --new 32 --repeats 5
Targets: >= 1.0x GPT-2's tokens/s in every cell and >= 10x the no-cache path.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from _machine import describe, has_half_gemm, read_bandwidth_gbs
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
    sync = torch.cuda.synchronize if torch.cuda.is_initialized() else lambda: None
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
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
        ids = torch.cat([contexts, tail], dim=1).to(glm.device)
        block = torch.cat([torch.zeros(context, dtype=torch.long), torch.arange(1, length - context + 1)])
        text = torch.cat([torch.arange(context), torch.full((length - context,), context - 1)])
        position_ids = torch.stack([text, block]).expand(batch, 2, length).to(glm.device)

        def step(ids=ids, position_ids=position_ids):
            hidden = glm.glm(ids, position_ids, sep=context, use_cache=False).last_hidden_state[:, -1]
            torch.nn.functional.linear(hidden, glm.glm.word_embeddings.weight).argmax(-1)

        measured.append(median_times({"step": step}, repeats)["step"])
    total = 0.0  # steps 1..new-1 feed sequences of context + 2 .. context + new tokens
    for length in range(context + 2, context + new + 1):
        i = min(max(sum(length >= x for x in lengths) - 1, 0), len(lengths) - 2)
        x0, x1 = lengths[i], lengths[i + 1]
        total += measured[i] + (measured[i + 1] - measured[i]) * (length - x0) / (x1 - x0)
    return total


def load_previous(path: str):
    """``fill_ids`` of another generation module file (a peer: the implementation before this one)."""
    spec = importlib.util.spec_from_file_location("previous_generation", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module.fill_ids


@torch.inference_mode()
def compare(glm, gpt2, batch: int, context: int, news: list[int], repeats: int, previous=None) -> dict:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, VOCAB - 600, (batch, context), generator=gen)  # plain word pieces
    ids[:, -1] = GMASK
    contexts = ids.tolist()
    glm_kwargs = dict(blank_ids=[GMASK], sop_id=SOP, stop_ids=[], pad_id=0)
    ids = ids.to(glm.device)
    attention = torch.ones_like(ids)
    runs = {}
    for n in [1, *news]:
        runs[f"glm_{n}"] = lambda n=n: fill_ids(glm, contexts, max_new_tokens=n, **glm_kwargs)
        if previous is not None:
            runs[f"previous_{n}"] = lambda n=n: previous(glm, contexts, max_new_tokens=n, **glm_kwargs)
        if gpt2 is not None:
            runs[f"gpt2_{n}"] = lambda n=n: gpt2.generate(
                ids, attention_mask=attention, max_new_tokens=n, min_new_tokens=n, do_sample=False
            )
    times = median_times(runs, repeats)
    rates = {}
    for n in news:
        for who in ("glm", "previous", "gpt2"):
            if f"{who}_{n}" in times:
                rates[who, n] = batch * (n - 1) / (times[f"{who}_{n}"] - times[f"{who}_1"])
    return rates


def bytes_per_token(glm, context: int, new: int) -> float:
    """Bytes one batch-1 decoding step reads on average: weights that multiply the token, and the KV cache."""
    config = glm.config
    element = next(glm.parameters()).element_size()
    blocks = sum(p.numel() for name, p in glm.named_parameters() if ".layers." in name)
    output = config.vocab_size * config.hidden_size
    mean_keys = context + 1 + new / 2
    cache = 2 * config.num_layers * config.hidden_size * mean_keys
    return (blocks + output + cache) * element


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--new", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-cache-samples", type=int, default=4, help="sequence lengths timed without a cache")
    parser.add_argument("--no-cache", action="store_true", help="also time decoding without a cache")
    parser.add_argument("--previous", help="a generation module file whose fill_ids runs as a peer")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu", help="torch device (cuda: no bandwidth limit is printed)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    print(describe() if device.type == "cpu" else torch.cuda.get_device_name(device))
    glm, gpt2 = (m.to(device) for m in build_models(args.layers, args.width, args.heads, 2 * args.context, dtype))
    if device.type == "cpu" and not has_half_gemm(dtype):
        print(f"GPT-2 skipped: this CPU has no {args.dtype} GEMM (torch's reference kernel): no fair ratio")
        gpt2 = None
    previous = load_previous(args.previous) if args.previous else None
    bandwidth = read_bandwidth_gbs() if device.type == "cpu" else float("nan")  # a CPU-memory figure
    print(
        f"{args.layers} layers x {args.width}, {args.heads} heads, vocab {VOCAB}, {args.dtype}, "
        f"{args.threads} threads; context {args.context}; medians of {args.repeats}; "
        f"read bandwidth {bandwidth:.1f} GB/s"
    )
    header = f"{'texts':>5} {'new':>4} {'GLM tok/s':>10} {'GPT-2 tok/s':>12} {'vs GPT-2':>9}"
    if previous is not None:
        header += f" {'previous':>9} {'vs previous':>12}"
    print(header + "   (batch 1: bandwidth limit, fraction reached)")
    for batch in args.batches:
        rates = compare(glm, gpt2, batch, args.context, args.new, args.repeats, previous)
        for n in args.new:
            glm_rate = rates["glm", n]
            line = f"{batch:>5} {n:>4} {glm_rate:>10.1f}"
            if gpt2 is not None:
                line += f" {rates['gpt2', n]:>12.1f} {glm_rate / rates['gpt2', n]:>8.2f}x"
            else:
                line += f" {'-':>12} {'-':>9}"
            if previous is not None:
                line += f" {rates['previous', n]:>9.1f} {glm_rate / rates['previous', n]:>11.2f}x"
            if batch == 1 and device.type == "cpu":
                limit = bandwidth * 1e9 / bytes_per_token(glm, args.context, n)
                line += f"   limit {limit:.1f} tok/s, {glm_rate / limit:.0%} reached"
            print(line, flush=True)
        if args.no_cache:
            ids = torch.randint(1000, VOCAB - 600, (batch, args.context), generator=torch.Generator().manual_seed(0))
            longest = max(args.new)
            no_cache = batch * (longest - 1) / no_cache_step_time(glm, ids, longest, args.no_cache_samples, 1)
            ratio = rates["glm", longest] / no_cache
            print(f"{batch:>5} {longest:>4} no cache {no_cache:.1f} tok/s: cached GLM {ratio:.1f}x")


if __name__ == "__main__":
    main()

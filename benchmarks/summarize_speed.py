"""Summaries per second of ``torchglm.tasks.seq2seq.generate`` (XSum's beam search, KV cache) against decoding
without a cache and against transformers' ``generate`` with beam search on a GPT-2 of the same dimensions.

One run builds a GLM and a ``GPT2LMHeadModel`` of the same layers, width, heads, vocabulary and positions (same
dtype and threads; ``generate_speed.build_models``) and decodes ``--docs`` XSum-length sources (``--source``
tokens, XSum's ``src_seq_length`` 608 by default) with 6 beams for exactly ``--new`` tokens each (the minimum
length equals the maximum, on both sides, so every run makes the same number of tokens). GLM reads
``[CLS] [sMASK] Content: source`` as part A and decodes its blank; GPT-2 continues the same ids with its own
``generate(num_beams=6)`` (SDPA, its default cache), as its users run it. Timings alternate between the
contenders and report medians.

The no-cache path runs the trunk over the whole sequence (source + the block so far) for every beam at every
step, as decoding without past key values does; its time is the sum of its step times, each timed at a few
sequence lengths and interpolated linearly (``generate_speed.no_cache_step_time``), plus one pass for the first
token. Beam bookkeeping is left out of it, which favours it.

    python benchmarks/summarize_speed.py                      # 6 layers x 512, fp32, 2 documents, 32 tokens
    python benchmarks/summarize_speed.py --docs 4 --new 60 --repeats 5
Targets: >= 5x the no-cache path and >= 1.0x GPT-2's summaries/s.
"""

from __future__ import annotations

import argparse

import torch

from _machine import describe, has_half_gemm
from generate_speed import SOP, VOCAB, build_models, median_times, no_cache_step_time
from torchglm.tasks import seq2seq

CLS, SMASK, EOP, PAD = 101, 30525, 30523, 0


class Ids:
    """The BERT-vocabulary command ids the decoder needs (no text is decoded into words here)."""

    sop_token_id, eop_token_id, pad_token_id = SOP, EOP, PAD

    def __len__(self):
        return VOCAB

    def decode(self, ids, skip_special_tokens=True):
        return ""


@torch.inference_mode()
def compare(glm, gpt2, docs: int, source: int, new: int, beams: int, repeats: int, samples: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, VOCAB - 600, (docs, source), generator=gen)
    ids[:, 0], ids[:, 1] = CLS, SMASK
    inputs = [seq2seq.Seq2SeqInput(row, 1) for row in ids.tolist()]
    options = seq2seq.get_task("xsum").generation_options(
        num_beams=beams, max_new_tokens=new, min_new_tokens=new, no_repeat_ngram_size=0
    )
    runs = {"glm": lambda: seq2seq.generate(glm, Ids(), inputs, options, batch_size=docs)}
    if gpt2 is not None:
        attention = torch.ones_like(ids)
        runs["gpt2"] = lambda: gpt2.generate(
            ids, attention_mask=attention, num_beams=beams, max_new_tokens=new, min_new_tokens=new,
            do_sample=False, early_stopping=False, length_penalty=1.0,
        )  # fmt: skip
    times = median_times(runs, repeats)
    rows = ids.repeat_interleave(beams, dim=0)
    no_cache = no_cache_step_time(glm, rows, new, samples, max(1, repeats // 2))
    positions = _positions(rows.shape)
    first = median_times({"first": lambda: glm.glm(rows, positions, source, use_cache=False)}, 1)["first"]
    times["no_cache"] = no_cache + first
    return {who: docs / seconds for who, seconds in times.items()}


def _positions(shape):
    batch, length = shape
    return torch.stack([torch.arange(length), torch.zeros(length, dtype=torch.long)]).expand(batch, 2, length)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--docs", type=int, default=2)
    parser.add_argument("--source", type=int, default=608, help="source tokens (XSum's src_seq_length: 608)")
    parser.add_argument("--new", type=int, default=32, help="tokens decoded per summary")
    parser.add_argument("--beams", type=int, default=6, help="XSum's 6")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-cache-samples", type=int, default=3, help="sequence lengths timed without a cache")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    print(describe())
    glm, gpt2 = build_models(args.layers, args.width, args.heads, args.source + args.new + 8, dtype)
    if not has_half_gemm(dtype):
        print(f"GPT-2 skipped: this CPU has no {args.dtype} GEMM (torch's reference kernel): no fair ratio")
        gpt2 = None
    print(
        f"{args.layers} layers x {args.width}, {args.heads} heads, vocab {VOCAB}, {args.dtype}, {args.threads} "
        f"threads; {args.docs} documents x {args.source} tokens, {args.beams} beams, {args.new} new tokens; "
        f"medians of {args.repeats}"
    )
    rates = compare(glm, gpt2, args.docs, args.source, args.new, args.beams, args.repeats, args.no_cache_samples)
    print(f"{'':10} {'summaries/s':>12}")
    for who, rate in rates.items():
        print(f"{who:10} {rate:12.3f}")
    print(f"GLM vs no-cache: {rates['glm'] / rates['no_cache']:.2f}x (target >= 5x)")
    if "gpt2" in rates:
        print(f"GLM vs GPT-2:    {rates['glm'] / rates['gpt2']:.2f}x (target >= 1.0x)")


if __name__ == "__main__":
    main()

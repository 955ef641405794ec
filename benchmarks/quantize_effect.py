"""What torchao int8 weight-only quantization (``from_pretrained(..., quantization="int8")``) changes: the weights'
bytes, the logits, and greedy decoding time per token, against the same model unquantized.

    python benchmarks/quantize_effect.py                         # the built-in glm-tiny-en, fp32
    python benchmarks/quantize_effect.py --model ../glm-large --dtype bfloat16 --threads 2

Bytes are those of the parameters as stored (a torchao tensor: its int8 data, scales and zero points). The logit
change is the largest absolute difference over a batch of random token ids (context bidirectional, then causal),
with the unquantized logits' largest magnitude for scale. Decoding time: greedy ``fill_ids`` of one ``[gMASK]``
at the end of a ``--context``-token context, ``--new`` tokens (stop tokens off), per new token after the first
(the context's encoding excluded), median of ``--repeats`` runs alternating the two models. Also prints the
weights' bytes of the glm-2b and glm-10b shapes, fp16/bf16 vs int8 blocks, computed from their configs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from _machine import describe
from torchglm import PRESETS, GLMConfig, GLMForConditionalGeneration
from torchglm.generation import fill_ids
from torchglm.quantization import block_linears, tensor_bytes
from torchglm.tokenization import GLMTokenizer


def parameter_bytes(model) -> tuple[int, int]:
    """(all parameters, the blocks' four projection weights) in bytes as stored."""
    total = sum(tensor_bytes(p) for p in model.parameters())
    blocks = sum(tensor_bytes(layer.weight) for layer in block_linears(model).values())
    return total, blocks


def preset_bytes(name: str, half: int = 2) -> tuple[float, float]:
    """GB of a preset's weights in 16 bits, and with its blocks' projections int8 (+ a 5-byte scale/zero per row)."""
    config = GLMConfig(**PRESETS[name])
    h, layers, vocab = config.hidden_size, config.num_layers, config.vocab_size
    inner = config.intermediate_size
    rows_cols = [(3 * h, h), (h, h), (inner, h), (h, inner)]
    linears = layers * sum(r * c for r, c in rows_cols)
    rows = layers * sum(r for r, _ in rows_cols)
    other = vocab * h + 2 * (config.max_sequence_length + 1) * h + layers * (4 * h + 3 * h + h + inner + h) + 2 * h
    full = (linears + other) * half
    return full / 1e9, (linears + 5 * rows + other * half) / 1e9


def decode_seconds_per_token(model, tokenizer, context: list[int], new: int) -> float:
    def run(n: int) -> float:
        start = time.perf_counter()
        fill_ids(
            model, [context], blank_ids=[tokenizer.gmask_token_id], sop_id=tokenizer.sop_token_id, stop_ids=[],
            pad_id=tokenizer.pad_token_id, max_new_tokens=n,
        )  # fmt: skip
        return time.perf_counter() - start

    return (run(new) - run(1)) / (new - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="glm-tiny-en")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    models = {
        "unquantized": GLMForConditionalGeneration.from_pretrained(args.model, dtype=dtype).eval(),
        "int8": GLMForConditionalGeneration.from_pretrained(args.model, dtype=dtype, quantization="int8").eval(),
    }
    print(describe(), f"| {args.model}, {args.dtype}, {args.threads} threads")
    for name, model in models.items():
        total, blocks = parameter_bytes(model)
        print(f"{name:12s} weights {total / 1e6:8.2f} MB, of which block projections {blocks / 1e6:8.2f} MB")
    tokenizer = GLMTokenizer.from_pretrained(args.model)
    torch.manual_seed(0)
    ids = torch.randint(1000, tokenizer.sop_token_id, (4, args.context))  # ordinary tokens: the commands come last
    positions = torch.stack([torch.arange(args.context), torch.zeros(args.context, dtype=torch.long)])
    with torch.no_grad():
        logits = {
            name: model(input_ids=ids, position_ids=positions.expand(4, 2, -1), sep=args.context // 2).logits.float()
            for name, model in models.items()
        }
    change = (logits["int8"] - logits["unquantized"]).abs()
    same = (logits["int8"].argmax(-1) == logits["unquantized"].argmax(-1)).float().mean()
    print(
        f"logits: max |change| {change.max():.4f} (mean {change.mean():.5f}), largest |logit| "
        f"{logits['unquantized'].abs().max():.2f}, same argmax at {same:.2%} of positions"
    )
    context = [tokenizer.cls_token_id, *ids[0, : args.context - 3].tolist(), tokenizer.gmask_token_id]
    context.append(tokenizer.eos_token_id)
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():
            decode_seconds_per_token(model, tokenizer, context, 4)  # warm-up
        for _ in range(args.repeats):
            for name, model in models.items():
                times[name].append(decode_seconds_per_token(model, tokenizer, context, args.new))
    for name, samples in times.items():
        print(f"{name:12s} greedy decoding {statistics.median(samples) * 1e3:7.2f} ms per token")
    for preset in ("2b", "10b"):
        full, quantized = preset_bytes(preset)
        print(f"glm-{preset}: weights {full:.1f} GB in bf16/fp16, {quantized:.1f} GB with int8 blocks")


if __name__ == "__main__":
    main()

"""Zero-shot evaluation speed: WikiText perplexity tokens/s and LAMBADA examples/s of ``torchglm.tasks`` against
a straightforward unbatched loop over the same windows and examples, and WikiText against transformers' GPT-2 of
the same dimensions evaluated the usual way.

One run builds a GLM and a ``GPT2LMHeadModel`` of the same layers, width, heads, vocabulary and positions
(``generate_speed.build_models``; random weights, same dtype and threads) and times, alternating, medians:

- **torchglm**: ``evaluate_perplexity`` / ``evaluate_lambada`` (``--batch-size`` windows or examples per pass,
  part A encoded into the cache, the vocabulary projected only at the scored tokens).
- **unbatched loop**: the same windows and examples one at a time, each a whole sequence through the model's
  forward with the logits of every position, then log-softmax and gather: the original evaluation's loop.
- **GPT-2**: sliding-window perplexity as the transformers docs write it: windows of ``seq_length - 1`` tokens,
  stride ``--overlap``, ``labels`` with -100 before the new tokens, batch 1: each token scored once with up to
  ``seq_length - 1 - overlap`` tokens of context, as in GLM's windows.

Text: the first ``--wikitext-lines`` lines of WikiText-103 test and the first ``--lambada`` LAMBADA examples,
tokenized with the BERT vocabulary (from ``../shared``; random ids where it is absent). Both models score the
same token ids. All three WikiText peers score the same tokens; the loop's total must equal torchglm's.

    python benchmarks/eval_speed.py                   # 6 layers x 512, 8 heads, seq 512, fp32, batch 8
    python benchmarks/eval_speed.py --repeats 5 --batch-size 16
    python benchmarks/eval_speed.py --device cuda --dtype bfloat16 --batch-size 16   # a GPU (benchmarks/gpu_check.sh)
Targets: torchglm >= 4x the unbatched loop, and no slower per token than GPT-2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from _machine import describe
from generate_speed import build_models, median_times
from torchglm.tasks import PerplexityText, PromptIds, evaluate_lambada, evaluate_perplexity, final_blank_inputs
from torchglm.tasks.language_model import lambada_example, perplexity_windows, wikitext_detokenize
from torchglm.tasks.scoring import fit_context, window_inputs

SHARED = Path(__file__).resolve().parents[2] / "shared"
CLS, MASK, EOS, SOP, GMASK = 101, 103, 0, 30522, 30524


class BertIds:
    """The command-token ids of the BERT-vocabulary GLMs, for ``PromptIds.from_tokenizer``."""

    cls_token_id, eos_token_id, pad_token_id, sop_token_id, eop_token_id = CLS, EOS, 0, SOP, 30523
    mask_token_id, smask_token_id, gmask_token_id = MASK, 30525, GMASK


def load_data(lines: int, lambada: int, seed: int = 0):
    """WikiText token ids and LAMBADA (context, answer) ids: real text where ../shared is, random ids elsewhere."""
    vocab = SHARED / "golden" / "glm-ref-fill"
    if vocab.is_dir():
        from torchglm.tokenization import GLMTokenizer

        tok = GLMTokenizer.from_pretrained(vocab)
        raw = (SHARED / "data" / "wikitext" / "wikitext-103" / "wiki.test.tokens").read_text(encoding="utf-8")
        text = wikitext_detokenize("".join(raw.splitlines(keepends=True)[:lines]))
        tokens = tok.encode(text, add_special_tokens=False, verbose=False)
        passages = (SHARED / "data" / "lambada" / "lambada_test.jsonl").read_text().splitlines()[:lambada]
        examples = [lambada_example(tok, json.loads(p)["text"]) for p in passages]
        return tokens, examples, "WikiText-103 test / LAMBADA test, BERT vocabulary"
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1000, 30000, (lines * 40,), generator=g).tolist()
    from torchglm.tasks import LambadaExample

    examples = [
        LambadaExample(torch.randint(1000, 30000, (int(n),), generator=g).tolist(), [int(a)])
        for n, a in zip(
            torch.randint(60, 120, (lambada,), generator=g), torch.randint(1000, 30000, (lambada,)), strict=True
        )
    ]
    return tokens, examples, "random ids (../shared absent)"


@torch.inference_mode()
def loop_score(model, part_a, block) -> tuple[float, bool]:
    """One sequence run whole (logits at every position), then the labelled positions' log-probabilities."""
    device = model.device
    ids = torch.tensor([part_a + block.input_ids], device=device)
    positions = torch.tensor([[list(range(len(part_a))) + block.position, [0] * len(part_a) + block.block_position]],
                             device=device)  # fmt: skip
    logits = model(ids, positions, attention_mask=torch.tensor([len(part_a)], device=device)).logits[0].float()
    log_probs = logits.log_softmax(-1)
    rows = torch.tensor([len(part_a) + k for k, t in enumerate(block.labels) if t != -100], device=device)
    wanted = torch.tensor([t for t in block.labels if t != -100], device=device)
    return float(log_probs[rows, wanted].sum()), bool((logits[rows].argmax(-1) == wanted).all())


def loop_perplexity(model, ids, tokens, seq_length, overlap) -> float:
    total = 0.0
    for span in perplexity_windows(len(tokens), seq_length, overlap):
        total -= loop_score(model, *window_inputs(tokens, span, ids))[0]
    return total


def loop_lambada(model, ids, examples, seq_length) -> int:
    correct = 0
    for e in examples:
        part_a, block = final_blank_inputs(fit_context(e.context_ids, len(e.answer_ids), seq_length), e.answer_ids, ids)
        correct += loop_score(model, part_a, block)[1]
    return correct


@torch.inference_mode()
def gpt2_perplexity(gpt2, tokens, seq_length, overlap) -> float:
    """The transformers docs' sliding-window perplexity (``labels``, batch 1)."""
    encodings = torch.tensor([tokens], device=gpt2.device)
    max_length, stride, total, previous_end = seq_length - 1, overlap, 0.0, 0
    for begin in range(0, len(tokens), stride):
        end = min(begin + max_length, len(tokens))
        target_length = end - previous_end
        input_ids = encodings[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-target_length] = -100
        loss = gpt2(input_ids, labels=target_ids).loss
        scored = (target_ids[:, 1:] != -100).sum().item()
        total += float(loss) * scored
        previous_end = end
        if end == len(tokens):
            break
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--seq-length", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--wikitext-lines", type=int, default=200)
    parser.add_argument("--lambada", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="all three peers run in it (on a CPU, keep float32 unless it has a GEMM for the dtype)",
    )
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    print(describe() if device.type == "cpu" else torch.cuda.get_device_name(device))
    glm, gpt2 = (m.to(device) for m in build_models(args.layers, args.width, args.heads, args.seq_length, dtype))
    tokens, examples, source = load_data(args.wikitext_lines, args.lambada)
    ids = PromptIds.from_tokenizer(BertIds())
    text = PerplexityText("", len(tokens))
    windows = perplexity_windows(len(tokens), args.seq_length, args.overlap)
    print(
        f"model: {args.layers} layers x {args.width}, {args.heads} heads, vocabulary 30592, {args.dtype} on "
        f"{device}; data: {source}"
    )
    print(f"WikiText: {len(tokens)} tokens, {len(windows)} windows of {args.seq_length - 1} (overlap {args.overlap});")
    print(f"LAMBADA: {len(examples)} examples; torchglm batch {args.batch_size}; medians of {args.repeats}")

    def ours_wikitext():
        return evaluate_perplexity(glm, BertIds(), text, tokens=tokens, seq_length=args.seq_length,
                                   overlap=args.overlap, batch_size=args.batch_size).total_nll  # fmt: skip

    def ours_lambada():
        return evaluate_lambada(glm, BertIds(), examples, seq_length=args.seq_length, batch_size=args.batch_size)

    ours_total, loop_total = ours_wikitext(), loop_perplexity(glm, ids, tokens, args.seq_length, args.overlap)
    # The same sums: to fp32 rounding, or to half precision's where the peers run in it (batched and one-by-one
    # products round differently there, and a near tie may flip a LAMBADA argmax).
    exact = dtype == torch.float32
    assert abs(ours_total - loop_total) <= (1e-4 if exact else 2e-2) * abs(loop_total), (ours_total, loop_total)
    ours_correct, loop_correct = ours_lambada().correct, loop_lambada(glm, ids, examples, args.seq_length)
    assert ours_correct == loop_correct or not exact, (ours_correct, loop_correct)
    wikitext = median_times({
        "torchglm": ours_wikitext,
        "unbatched loop": lambda: loop_perplexity(glm, ids, tokens, args.seq_length, args.overlap),
        "GPT-2 (transformers)": lambda: gpt2_perplexity(gpt2, tokens, args.seq_length, args.overlap),
    }, args.repeats)  # fmt: skip
    lambada = median_times({
        "torchglm": ours_lambada,
        "unbatched loop": lambda: loop_lambada(glm, ids, examples, args.seq_length),
    }, args.repeats)  # fmt: skip
    scored = len(tokens) - 1
    print(f"\n{'WikiText perplexity':24} {'tokens/s':>10} {'torchglm is':>12}")
    for name, seconds in wikitext.items():
        print(f"{name:24} {scored / seconds:10.0f} {seconds / wikitext['torchglm']:11.2f}x")
    print(f"\n{'LAMBADA':24} {'examples/s':>10} {'torchglm is':>12}")
    for name, seconds in lambada.items():
        print(f"{name:24} {len(examples) / seconds:10.1f} {seconds / lambada['torchglm']:11.2f}x")


if __name__ == "__main__":
    main()

"""Multi-token cloze evaluation speed (COPA, ReCoRD): ``superglue.score_inputs``, which encodes each example's part A
once into the KV cache and scores every choice as a block after it, against scoring every choice as its own full
sequence, in one run.

Both sides score the same dev examples with the same GLM (6 layers x 512, 8 heads, the BERT vocabulary of the
released models, random weights, fp32) and the BERT tokenizer of ``../shared/data/vocab``; both run the output
layer only at the answer tokens and batch their rows (the full-sequence peer: ``--batch-size`` choice rows per
forward pass, each row part A + ``[sop] answer``, padding masked). ReCoRD is read in evaluation mode (every entity
of the passage a choice), COPA from its dev set. Timings alternate between the two and report medians; the two
must give the same scores (checked to 1e-3).

    python benchmarks/cloze_speed.py                         # COPA 64 and ReCoRD 8 examples, 3 repeats
    python benchmarks/cloze_speed.py --record 16 --repeats 5
Target: >= 3x the full-sequence scoring on ReCoRD.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from _machine import describe
from generate_speed import build_models, median_times
from torchglm import GLMTokenizer
from torchglm.layout import build_batch, model_inputs
from torchglm.tasks import superglue

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@torch.inference_mode()
def full_sequence_scores(model, tokenizer, inputs, batch_size: int) -> list[list[float]]:
    """Every choice as its own sequence: part A + [sop] answer, batched by rows, summed answer log-probs."""
    rows, owners = [], []
    for i, item in enumerate(inputs):
        for c, row in enumerate(superglue.training_rows(item, tokenizer.sop_token_id)):
            rows.append(row)
            owners.append((i, c))
    scores = [[0.0] * len(item.choice_ids) for item in inputs]
    order = sorted(range(len(rows)), key=lambda r: -len(rows[r].part_a))
    for first in range(0, len(order), batch_size):
        chunk = order[first : first + batch_size]
        batch = build_batch([rows[r] for r in chunk], pad_id=tokenizer.pad_token_id)
        labels = batch["labels"]
        targets = labels != -100
        logits = model(**model_inputs(batch), predict_at=targets, use_cache=False).logits.float()
        token = F.log_softmax(logits, dim=-1).gather(1, labels[targets][:, None]).squeeze(1)
        per_row = torch.zeros(len(chunk)).index_add(0, targets.nonzero()[:, 0], token)
        for k, r in enumerate(chunk):
            i, c = owners[r]
            scores[i][c] = float(per_row[k])
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copa", type=int, default=64, help="COPA dev examples")
    parser.add_argument("--record", type=int, default=8, help="ReCoRD examples (evaluation mode: every entity)")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16, help="contexts (ours) or choice rows (peer) per pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not (SHARED / "data" / "superglue").is_dir():
        raise SystemExit(f"{SHARED} is absent: the benchmark reads its SuperGLUE files and BERT vocabulary")
    print(describe())
    tokenizer = GLMTokenizer.from_bert_vocab(SHARED / "data" / "vocab" / "bert-uncased-vocab.txt")
    model, _ = build_models(args.layers, args.width, args.heads, 512, torch.float32)  # dropout off, BERT vocab
    print(f"{args.layers} layers x {args.width}, {args.heads} heads, fp32, {args.threads} threads; medians of "
          f"{args.repeats}, alternated")  # fmt: skip
    data = SHARED / "data" / "superglue"
    for task, count, split, file_split in (("copa", args.copa, "dev", "val"), ("record", args.record, "dev", "train")):
        examples = superglue.read_examples(task, superglue.task_file(data, task, file_split), split)[:count]
        inputs = superglue.build_inputs(tokenizer, task, examples)
        ours = superglue.score_inputs(model, tokenizer, inputs, batch_size=args.batch_size)
        theirs = full_sequence_scores(model, tokenizer, inputs, args.batch_size)
        worst = max(abs(a - b) for o, t in zip(ours, theirs, strict=True) for a, b in zip(o.scores, t, strict=True))
        assert worst < 1e-3, f"{task}: the two scorings differ by {worst}"
        times = median_times(
            {
                "cached": lambda inputs=inputs: superglue.score_inputs(model, tokenizer, inputs,
                                                                        batch_size=args.batch_size),
                "full": lambda inputs=inputs: full_sequence_scores(model, tokenizer, inputs, args.batch_size),
            },
            args.repeats,
        )  # fmt: skip
        choices = sum(len(i.choice_ids) for i in inputs)
        context = sum(len(i.choice_part_a[0]) for i in inputs) / len(inputs)
        print(
            f"{task:7} {len(inputs)} examples, {choices / len(inputs):.1f} choices, part A {context:.0f} tokens: "
            f"cached {len(inputs) / times['cached']:.2f} examples/s, full sequences "
            f"{len(inputs) / times['full']:.2f}: {times['full'] / times['cached']:.2f}x (max |diff| {worst:.1e})"
        )
    print("target: >= 3x on ReCoRD")


if __name__ == "__main__":
    main()

"""Batch-encoding speed of torchglm's tokenizers against transformers' own fast tokenizers on the same files.

Target (issue 3): within 10% of ``BertTokenizerFast`` / ``GPT2TokenizerFast`` (ratio >= 0.9), i.e. the command-token
handling must not make encoding slow. Both sides encode the same lines to the same ids, in batches, without
special tokens (``--special-tokens`` adds them), in one process; the two are timed alternately ``--repeats`` times
and each one's best run counts. Both wall-clock and process CPU time (summed over the Rust worker threads) are
reported: on a machine shared with other jobs the CPU-time ratio is the steadier one.

    python benchmarks/tokenizer_speed.py                   # Gutenberg corpus from ../shared
    python benchmarks/tokenizer_speed.py --corpus file.txt --batch-size 512
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from transformers import BertTokenizerFast, GPT2TokenizerFast

from _machine import describe
from torchglm.tokenization import GLMTokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def read_lines(paths: list[Path], limit_mb: float) -> list[str]:
    lines, size = [], 0
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                lines.append(line)
                size += len(line.encode("utf-8"))
            if size >= limit_mb * 2**20:
                return lines
    return lines


def seconds(tokenizer, lines: list[str], batch_size: int, special: bool) -> tuple[float, float]:
    """Wall time and process CPU time (all threads) of ``tokenizer(batch)`` over all lines."""
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(lines), batch_size):
        tokenizer(lines[i : i + batch_size], add_special_tokens=special)
    return time.perf_counter() - wall, time.process_time() - cpu


def compare(ours, theirs, lines, batch_size: int, repeats: int, special: bool) -> dict[str, tuple[float, float]]:
    """Best-of-``repeats`` (wall, cpu) seconds of each, timed alternately so that load changes hit both."""
    best = {"ours": (float("inf"),) * 2, "theirs": (float("inf"),) * 2}
    for _ in range(repeats):
        for name, tokenizer in (("theirs", theirs), ("ours", ours)):
            wall, cpu = seconds(tokenizer, lines, batch_size, special)
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, nargs="*", help="text files (default: ../shared Gutenberg books)")
    parser.add_argument("--vocab-dir", type=Path, default=SHARED / "data" / "vocab")
    parser.add_argument("--limit-mb", type=float, default=2.0, help="encode at most this much text")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--special-tokens",
        action="store_true",
        help="add special tokens ([CLS] ... eos for torchglm; GPT2TokenizerFast adds none, so not like for like)",
    )
    args = parser.parse_args()
    print(describe())
    corpus = args.corpus or sorted((SHARED / "data" / "corpus" / "gutenberg").glob("*.txt"))
    lines = read_lines(corpus, args.limit_mb)
    vocab = args.vocab_dir
    pairs = {
        "bert (WordPiece)": (
            GLMTokenizer.from_bert_vocab(vocab / "bert-uncased-vocab.txt"),
            BertTokenizerFast(vocab=str(vocab / "bert-uncased-vocab.txt"), do_lower_case=True),
        ),
        "gpt2 (byte-level BPE)": (
            GLMTokenizer.from_gpt2_vocab(vocab / "gpt2-vocab.json", vocab / "gpt2-merges.txt"),
            GPT2TokenizerFast(vocab=str(vocab / "gpt2-vocab.json"), merges=str(vocab / "gpt2-merges.txt")),
        ),
    }
    size = sum(len(line.encode("utf-8")) for line in lines) / 2**20
    special = "with" if args.special_tokens else "without"
    print(f"{len(lines)} lines, {size:.2f} MB, batches of {args.batch_size}, {special} special tokens", end="")
    print(f", best of {args.repeats}")
    for name, (ours, theirs) in pairs.items():
        # Same work on both sides: the ids must agree (no command tokens in plain text; transformers 5 ignores
        # the old ``vocab_file=`` keyword and would silently encode everything as unknown).
        sample = lines[:2000]
        same = (
            ours(sample, add_special_tokens=False)["input_ids"] == theirs(sample, add_special_tokens=False)["input_ids"]
        )
        if not same:
            raise SystemExit(f"{name}: torchglm and transformers disagree on the sample; not comparable")
        best = compare(ours, theirs, lines, args.batch_size, args.repeats, args.special_tokens)
        for i, clock in enumerate(("wall", "cpu")):
            mb_ours, mb_peer = size / best["ours"][i], size / best["theirs"][i]
            ratio = mb_ours / mb_peer
            print(
                f"{name:22s} {clock:4s}  torchglm {mb_ours:6.2f} MB/s  transformers {mb_peer:6.2f} MB/s  "
                f"ratio {ratio:.2f}  {'ok' if ratio >= 0.9 else 'BELOW TARGET'}"
            )


if __name__ == "__main__":
    main()

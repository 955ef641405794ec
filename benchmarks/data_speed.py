"""Pretraining data speed on one core: blank-infilling samples/s and prepare-data MB/s.

    python benchmarks/data_speed.py [--batch-size 32] [--seconds 10]

Peer: the original GLM implementation builds about 670 samples/s (512-token sequences, multi-task mix) on one
core of the project's machine; the issue's targets are >= 6,700 samples/s (10x) and >= 2 MB/s per core for
prepare-data. Threads are pinned to one (numpy, torch, the Rust tokenizer) before anything is imported.
Uses ../shared/data/corpus and the BERT vocabulary of ../shared/golden/glm-ref-fill when present, else random
tokens (samples/s only).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _machine import describe  # noqa: E402
from torchglm.data import (  # noqa: E402
    BlankConfig,
    BlankInfillingBuilder,
    BlockDataset,
    PretrainBatches,
    SpecialIds,
    TokenShards,
    write_token_shards,
)
from torchglm.data.prepare import prepare_data  # noqa: E402

ORIGINAL_SAMPLES_PER_S = 670.0
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def make_shards(folder: Path) -> tuple[dict[str, TokenShards], dict[str, float]]:
    """Shards of the Gutenberg books, one document per book and one per line (timing prepare-data on one core),
    or of random tokens when ../shared or the tokenizer is absent."""
    corpus, vocab = SHARED / "data" / "corpus" / "gutenberg", SHARED / "golden" / "glm-ref-fill"
    try:
        from torchglm.tokenization import GLMTokenizer
    except ImportError:
        GLMTokenizer = None
    if corpus.is_dir() and vocab.is_dir() and GLMTokenizer is not None:
        files = [str(f) for f in sorted(corpus.glob("*.txt"))]
        size = sum(Path(f).stat().st_size for f in files)
        shards, rates = {}, {}
        for fmt in ("file", "lines"):
            tokenizer = GLMTokenizer.from_pretrained(vocab)  # fresh: its word cache starts cold
            start = time.perf_counter()
            prepare_data(files, folder / fmt, tokenizer, fmt=fmt, workers=0, progress=False, chunk_mb=1.0)
            rates[fmt] = size / 1e6 / (time.perf_counter() - start)
            shards[fmt] = TokenShards(folder / fmt)
        return shards, rates
    rng = np.random.default_rng(0)
    docs = []
    for _ in range(200):
        doc = rng.integers(2000, 30000, size=int(rng.integers(200, 20000)))
        doc[rng.random(len(doc)) < 0.05] = 1012  # "." every ~20 tokens
        docs.append(doc)
    write_token_shards(folder, docs, 30526, SpecialIds.bert_uncased(), [1012])
    return {"random": TokenShards(folder)}, {}


def samples_per_second(stream: PretrainBatches, seconds: float) -> tuple[float, dict]:
    stream.batch(0)  # warm-up
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        stream.batch(steps)
        steps += 1
    return steps * stream.batch_size / (time.perf_counter() - start), dict(stream.builder.stats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(describe())
    with tempfile.TemporaryDirectory() as tmp:
        corpora, rates = make_shards(Path(tmp))
        for fmt, rate in rates.items():
            print(f"prepare-data, 1 process, --format {fmt}: {rate:.2f} MB/s per core  (target >= 2 MB/s)")
        for name, shards in corpora.items():
            print(f"corpus '{name}': {shards.num_documents} documents, {shards.num_tokens} tokens")
            dataset = BlockDataset(shards, seq_length=512, seed=1234)
            for batch_size in sorted({8, args.batch_size}):
                config = BlankConfig(seq_length=512)  # multi-task mix: token 0.5 / sentence 0.3 / document 0.2
                builder = BlankInfillingBuilder(config, shards.special_ids, dataset.sentence_ends)
                stream = PretrainBatches(dataset, builder, batch_size)
                rate, stats = samples_per_second(stream, args.seconds)
                modes = {k.split("/")[1]: v for k, v in stats.items() if k.startswith("samples/")}
                print(
                    f"  samples/s, 512 tokens, multi-task mix, batch {batch_size}: {rate:,.0f}  "
                    f"({rate / ORIGINAL_SAMPLES_PER_S:.1f}x the original's {ORIGINAL_SAMPLES_PER_S:.0f}; "
                    f"target >= 6,700)  blank modes {modes}"
                )
            texts = dataset.get_batch(np.arange(args.batch_size))
            start, n = time.perf_counter(), 0
            while time.perf_counter() - start < args.seconds / 2:
                builder.build(texts, n)
                n += 1
            rate = n * args.batch_size / (time.perf_counter() - start)
            print(f"  builder alone (texts already packed), batch {args.batch_size}: {rate:,.0f} samples/s")
            start, n = time.perf_counter(), 0
            while time.perf_counter() - start < args.seconds / 2:
                dataset.get_batch(np.arange(n * args.batch_size, (n + 1) * args.batch_size))
                n += 1
            rate = n * args.batch_size / (time.perf_counter() - start)
            print(f"  dataset alone (sampling, cropping, packing): {rate:,.0f} samples/s")
    print(f"load average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()

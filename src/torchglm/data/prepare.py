"""Tokenize text corpora into memory-mapped token shards (resumable, parallel, every bad line reported).

Example::

    torchglm prepare-data "corpus/**/*.jsonl.gz" --output data/shards \\
        --tokenizer ../shared/data/vocab/bert-uncased-vocab.txt --tokenizer-kind bert --text-field text

Inputs are cut into work items (byte ranges of about ``--chunk-mb``), tokenized by ``--workers`` processes, and
written one shard per item; the manifest is rewritten atomically after each shard, so an interrupted run, started
again with the same arguments, skips what is done. Progress shows bytes/s and the ETA; the log goes to the terminal
and to ``OUTPUT/prepare.log``; bad lines (invalid JSON, missing field, bytes that are not UTF-8) are counted,
listed with file and line in ``OUTPUT/bad_lines.tsv`` and the log, and never stop the run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing
import os
import re
import time
from collections import Counter
from itertools import chain
from pathlib import Path

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .corpus import FORMATS, BadLine, WorkItem, expand_inputs, plan_items, read_documents
from .shards import (
    MANIFEST,
    atomic_write_bytes,
    atomic_write_json,
    finish_manifest,
    new_manifest,
    token_dtype,
    write_shard,
)
from .special import SpecialIds, sentence_end_table

logger = logging.getLogger("torchglm.data.prepare")

_PROBE = 'The quick brown fox, 3.14 times; "quoted" text?\nNew line: naïve café — 中文。'
_PROBES = [
    _PROBE,
    "Mr. Woodhouse's  FAMILY\t(1816) -- [ Emma ] #x_y+z=1 {a|b} ~`^ @home!\r\nend...",
    "ctrl\x0bchars\x1fjoin words\x7f and a veryveryveryveryveryveryveryveryveryveryveryveryveryverylongword"
    "veryveryveryveryveryveryveryveryveryveryveryveryveryverylongword",
    "Tsinghua University is located in [MASK] and [gMASK] <|endoftext|> [sMASK].",
    "   ",
]
_MAX_LOGGED_BAD = 50


# ---------------------------------------------------------------------- tokenizer plumbing
_ASCII_CONTROL = dict.fromkeys([*range(0, 9), 11, 12, *range(14, 32), 127])  # dropped by BERT's cleaner
_BERT_WORDS = re.compile(r"[^ \t\n\r!-/:-@\[-`{-~]+|[!-/:-@\[-`{-~]")  # words, and each punctuation mark


class CachedWordPiece:
    """BERT-family encoder with a word cache: ASCII text split into words as BERT's basic tokenizer does
    (drop control characters, lowercase, split on whitespace and punctuation), each distinct word sent once to the
    Rust WordPiece model and remembered. On this project's machines the Rust tokenizer alone gives ~1 MB/s per
    core (its normalizer tracks offsets character by character); the cache gives several times that.

    Exactness is checked, not assumed: :func:`batch_encoder` compares it with ``tokenizer.encode`` on probe texts
    and each work item compares its first documents; any difference switches to the tokenizer's own path. Texts
    that are not ASCII or that hold a command-token string always take the tokenizer's own path.
    """

    def __init__(self, tokenizer, fallback, max_words: int = 1 << 20):
        self.backend = tokenizer.backend_tokenizer
        self.fallback = fallback
        self.max_words = max_words
        self.cache: dict[str, list[int]] = {}
        strings = [t.token for t in tokenizer.command_tokens] + list(getattr(tokenizer.layout, "aliases", []))
        self.commands = re.compile("|".join(re.escape(x) for x in sorted(set(strings), key=len, reverse=True)))

    def __call__(self, texts: list[str]) -> list[list[int]]:
        words_of: list[list[str] | None] = []
        for text in texts:
            if text.isascii() and not self.commands.search(text):
                words_of.append(_BERT_WORDS.findall(text.translate(_ASCII_CONTROL).lower()))
            else:
                words_of.append(None)
        cache = self.cache
        missing = {w for words in words_of if words for w in words if w not in cache}
        if missing:
            if len(cache) + len(missing) > self.max_words:
                cache.clear()
            missing = list(missing)
            for word, encoding in zip(
                missing, self.backend.encode_batch(missing, add_special_tokens=False), strict=True
            ):
                cache[word] = encoding.ids
        out = []
        for text, words in zip(texts, words_of, strict=True):
            if words is None:
                out.append(list(self.fallback([text])[0]))
            else:
                out.append(list(chain.from_iterable(map(cache.__getitem__, words))))
        return out


def batch_encoder(tokenizer):
    """A function ``list[str] -> list[list[int]]`` giving ``tokenizer.encode(text, add_special_tokens=False)`` for
    each text, as fast as the tokenizer allows: the word cache for GLM's BERT tokenizers, the tokenizer's batch
    call for other transformers tokenizers, else ``encode`` per text."""

    def plain(texts):
        return [list(tokenizer.encode(t, add_special_tokens=False)) for t in texts]

    encoder = plain
    if callable(tokenizer) and hasattr(tokenizer, "backend_tokenizer"):

        def batched(texts):
            return [list(x) for x in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]

        encoder = batched
    if getattr(tokenizer, "glm_kind", None) == "bert" and hasattr(tokenizer, "backend_tokenizer"):
        cached = CachedWordPiece(tokenizer, encoder)
        if cached(_PROBES) == plain(_PROBES):
            cached.reference = plain
            return cached
    return encoder


def tokenizer_vocab_size(tokenizer) -> int:
    if hasattr(tokenizer, "__len__"):
        return len(tokenizer)
    return tokenizer.get_vocab_size()


def tokenizer_info(tokenizer, ids: SpecialIds, vocab_size: int, name: str | None = None) -> dict:
    """What identifies the tokenizer in the manifest: its class, name, size and a fingerprint of its output."""
    encoded = list(batch_encoder(tokenizer)([_PROBE])[0])
    digest = hashlib.sha256(json.dumps([encoded, ids.__dict__, vocab_size], default=list).encode()).hexdigest()
    return {
        "class": type(tokenizer).__name__,
        "name": name or getattr(tokenizer, "name_or_path", None),
        "vocab_size": vocab_size,
        "fingerprint": digest[:16],
    }


_WORKER: dict = {}


def _init_worker(tokenizer, text_field: str, output: str, dtype: str, eos: int) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker: the pool is the parallelism
    _WORKER.update(
        encode=batch_encoder(tokenizer),
        text_field=text_field,
        output=Path(output),
        dtype=np.dtype(dtype),
        eos=eos,
    )


def _process(item: WorkItem) -> dict:
    """Worker: read, tokenize and write one item; returns its manifest entry (bad lines go to a side file)."""
    started = time.perf_counter()
    docs = read_documents(item, _WORKER["text_field"])
    encode, eos, dtype = _WORKER["encode"], _WORKER["eos"], _WORKER["dtype"]
    reference = getattr(encode, "reference", None)
    if reference is not None:  # the word cache must agree with the tokenizer on this item's own text
        head = [text[:4000] for text in docs.texts[:16]]  # a bounded sample: the reference path is slow
        if encode(head) != reference(head):
            logging.getLogger(__name__).warning("%s: word cache disagrees with the tokenizer; using it", item.file)
            encode = encode.fallback
    arrays = []
    empty = docs.empty
    for at in range(0, len(docs.texts), 256):  # batches keep the Rust encoder busy without holding everything
        for ids in encode(docs.texts[at : at + 256]):
            if len(ids):
                arrays.append(np.append(np.asarray(ids, dtype=np.int64), eos))
            else:
                empty += 1
    name = f"shard-{item.index:05d}"
    if arrays:
        top = max(int(a.max()) for a in arrays)
        if top > np.iinfo(dtype).max:
            raise ValueError(f"token id {top} does not fit {dtype}")
    entry = write_shard(_WORKER["output"], name, arrays, dtype)
    bad_name = None
    if docs.bad:
        bad_name = f"{name}.bad.tsv"
        text = "".join(f"{b.file}\t{b.line}\t{b.reason}\n" for b in docs.bad)
        atomic_write_bytes(_WORKER["output"] / bad_name, text.encode("utf-8"))
    entry.update(
        item=item.index,
        source={"file": item.file, "start": item.start, "end": item.end, "first_line": item.first_line},
        bytes=item.size,
        empty_documents=empty,
        bad_lines=len(docs.bad),
        bad_file=bad_name,
        bad_examples=[str(b) for b in docs.bad[:5]],
        bad_reasons=dict(Counter(b.reason.split(":")[0].split(" (")[0] for b in docs.bad)),
        seconds=round(time.perf_counter() - started, 3),
    )
    return entry


# ---------------------------------------------------------------------- the command
def _setup_logging(output: Path) -> list[logging.Handler]:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.FileHandler(output / "prepare.log", encoding="utf-8")]
    if not any(isinstance(h, logging.StreamHandler) for h in logging.getLogger().handlers):
        handlers.append(logging.StreamHandler())
    for handler in handlers:
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handlers


def _settings(files: list[Path], fmt: str, text_field: str, chunk_bytes: int, tok: dict) -> dict:
    inputs = []
    for path in files:
        stat = path.stat()
        inputs.append({"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return {"inputs": inputs, "format": fmt, "text_field": text_field, "chunk_bytes": chunk_bytes, "tokenizer": tok}


def _shard_intact(output: Path, entry: dict, itemsize: int) -> bool:
    bin_path, idx_path = output / f"{entry['name']}.bin", output / f"{entry['name']}.idx"
    return (
        bin_path.is_file()
        and idx_path.is_file()
        and bin_path.stat().st_size == entry["tokens"] * itemsize
        and idx_path.stat().st_size == (entry["documents"] + 1) * 8
    )


def prepare_data(
    inputs: list[str],
    output: str | Path,
    tokenizer,
    *,
    fmt: str = "auto",
    text_field: str = "text",
    workers: int | None = None,
    chunk_mb: float = 16.0,
    overwrite: bool = False,
    progress: bool = True,
    max_items: int | None = None,
    tokenizer_name: str | None = None,
) -> dict:
    """Tokenize ``inputs`` (paths or globs) into shards under ``output``; returns the manifest.

    ``workers`` processes (default: all cores; 0 = in this process). A run whose manifest matches the
    inputs, options and tokenizer resumes where it stopped; ``overwrite`` starts over. ``max_items`` stops after
    that many work items (the manifest stays incomplete, as after an interruption).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}")
    expand_inputs(inputs)  # no input file is an error before the output folder exists
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    handlers = _setup_logging(output)
    try:
        return _prepare(
            inputs, output, tokenizer, fmt, text_field, workers, chunk_mb, overwrite, progress, max_items,
            tokenizer_name,
        )  # fmt: skip
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()


def _prepare(inputs, output, tokenizer, fmt, text_field, workers, chunk_mb, overwrite, progress, max_items, name):
    files = expand_inputs(inputs)
    ids = SpecialIds.from_tokenizer(tokenizer)
    vocab_size = max(tokenizer_vocab_size(tokenizer), ids.max_id + 1)
    dtype = token_dtype(vocab_size)
    ends = np.flatnonzero(sentence_end_table(tokenizer, vocab_size)).tolist()
    tok = tokenizer_info(tokenizer, ids, vocab_size, name)
    chunk_bytes = max(1 << 16, int(chunk_mb * (1 << 20)))
    settings = _settings(files, fmt, text_field, chunk_bytes, tok)

    path = output / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    if manifest is not None and manifest.get("settings") != settings:
        if not overwrite:
            raise ValueError(
                f"{output} holds shards of other inputs/options/tokenizer: pass overwrite=True (--overwrite) "
                "or choose another output folder"
            )
        manifest = None
    if manifest is None:
        for stale in list(output.glob("shard-*")) + [output / "bad_lines.tsv"]:
            stale.unlink(missing_ok=True)
        manifest = new_manifest(vocab_size, ids, ends, tok)
        manifest["settings"] = settings
    elif manifest.get("complete"):
        logger.info("%s is complete (%d documents, %d tokens): nothing to do", output, manifest["documents"],
                    manifest["tokens"])  # fmt: skip
        return manifest

    items = plan_items(files, fmt, chunk_bytes)
    done = {e["item"]: e for e in manifest["shards"] if _shard_intact(output, e, dtype.itemsize)}
    for leftover in output.glob("*.tmp"):
        leftover.unlink()
    pending = [item for item in items if item.index not in done]
    if max_items is not None:
        pending = pending[:max_items]
    total_bytes = sum(item.size for item in items)
    logger.info(
        "prepare-data: %d files, %.1f MB, %d work items (%d done before), tokenizer %s (vocab %d, %s), output %s",
        len(files), total_bytes / 1e6, len(items), len(done), tok["class"], vocab_size, dtype.name, output,
    )  # fmt: skip

    def record(entry: dict) -> None:
        done[entry["item"]] = entry
        manifest["shards"] = [done[k] for k in sorted(done)]
        atomic_write_json(path, manifest)
        for example in entry["bad_examples"][: max(0, _MAX_LOGGED_BAD - logged[0])]:
            logger.warning("bad line %s", example)
        logged[0] += len(entry["bad_examples"])

    logged = [0]  # bad lines echoed to the log so far (all of them are in bad_lines.tsv)
    started = time.perf_counter()
    n_workers = (os.cpu_count() or 1) if workers is None else workers
    init_args = (tokenizer, text_field, str(output), dtype.name, ids.eos)
    bar = tqdm(
        total=sum(item.size for item in pending), unit="B", unit_scale=True, unit_divisor=1024,
        desc="prepare-data", disable=not progress, smoothing=0.1,
    )  # fmt: skip
    with logging_redirect_tqdm(loggers=[logger]), bar:
        if n_workers <= 1 or len(pending) <= 1:
            _init_worker(*init_args)
            for item in pending:
                entry = _process(item)
                record(entry)
                bar.update(item.size)
        else:
            # fork: workers start in milliseconds with the tokenizer already loaded (spawn re-imports torch and
            # transformers per worker, seconds each); the Rust tokenizer disables its own threads after a fork.
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            with context.Pool(min(n_workers, len(pending)), _init_worker, init_args) as pool:
                for entry in pool.imap_unordered(_process, pending):
                    record(entry)
                    bar.update(entry["bytes"])
    elapsed = time.perf_counter() - started
    processed = sum(item.size for item in pending)

    if len(done) < len(items):
        logger.info("stopped after %d of %d work items: run again to resume", len(done), len(items))
        return manifest
    manifest["shards"] = [done[item.index] for item in items]
    _write_bad_lines(output, manifest)
    finish_manifest(manifest)
    manifest["bad_lines"] = sum(e["bad_lines"] for e in manifest["shards"])
    reasons: Counter = Counter()
    for entry in manifest["shards"]:
        reasons.update(entry["bad_reasons"])
    manifest["bad_line_reasons"] = dict(reasons)
    manifest["empty_documents"] = sum(e["empty_documents"] for e in manifest["shards"])
    atomic_write_json(path, manifest)
    logger.info(
        "done: %d documents, %d tokens, %d bad lines %s, %d empty documents; %.1f MB in %.1f s (%.2f MB/s)",
        manifest["documents"], manifest["tokens"], manifest["bad_lines"], dict(reasons),
        manifest["empty_documents"], processed / 1e6, elapsed, processed / 1e6 / max(elapsed, 1e-9),
    )  # fmt: skip
    if manifest["bad_lines"]:
        logger.warning("every bad line is listed in %s", output / "bad_lines.tsv")
    return manifest


def _write_bad_lines(output: Path, manifest: dict) -> None:
    """Gather the per-shard bad-line files into one ``bad_lines.tsv`` (file, line, reason)."""
    rows = ["file\tline\treason\n"]
    for entry in manifest["shards"]:
        if entry.get("bad_file"):
            rows.append((output / entry["bad_file"]).read_text(encoding="utf-8"))
    atomic_write_bytes(output / "bad_lines.tsv", "".join(rows).encode("utf-8"))


def read_bad_lines(folder: str | Path) -> list[BadLine]:
    """The bad lines a finished run reported."""
    lines = (Path(folder) / "bad_lines.tsv").read_text(encoding="utf-8").splitlines()[1:]
    out = []
    for row in lines:
        file, line, reason = row.split("\t", 2)
        out.append(BadLine(file, int(line), reason))
    return out


# ---------------------------------------------------------------------- CLI
# The families each bare vocabulary file can be, first the one assumed without --tokenizer-kind.
_FILE_KINDS = {".model": ("chinese", "chinese-legacy"), ".json": ("gpt2", "roberta"), ".txt": ("bert",)}


def load_tokenizer(path: str, kind: str | None):
    """The tokenizer of a folder or a bare vocabulary file; ``kind`` is honoured for both, or refused where the
    file cannot be that family (it was silently ignored for files: glm-10b-chinese got [gMASK] at 50009)."""
    from torchglm.errors import InputError
    from torchglm.tokenization import GLMTokenizer

    file = Path(path)
    if not file.exists():
        raise InputError(f"--tokenizer {path}: no such folder or vocabulary file")
    if file.is_file():  # a bare vocabulary file: vocab.txt (BERT), *.model (SentencePiece), *vocab.json + merges
        kinds = _FILE_KINDS.get(file.suffix, _FILE_KINDS[".txt"])
        kind = kind or kinds[0]
        if kind not in kinds:
            raise InputError(f"--tokenizer-kind {kind}: {file.name} is a {kinds[0]} vocabulary; use one of {kinds}")
        if file.suffix == ".model":
            return GLMTokenizer.from_sentencepiece(file, legacy_gmask=kind == "chinese-legacy")
        if file.suffix == ".json":
            merges = file.with_name(file.name.replace("vocab.json", "merges.txt"))
            if not merges.is_file():
                raise InputError(f"--tokenizer {path}: BPE needs {merges.name} beside it")
            build = GLMTokenizer.from_roberta_vocab if kind == "roberta" else GLMTokenizer.from_gpt2_vocab
            return build(file, merges)
        return GLMTokenizer.from_bert_vocab(file)
    try:
        return GLMTokenizer.from_pretrained(path, kind=kind) if kind else GLMTokenizer.from_pretrained(path)
    except ValueError as error:
        raise InputError(f"--tokenizer {path}: {error}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="input files or globs (quote globs; .gz is read transparently)")
    parser.add_argument("--output", "-o", required=True, help="folder for the shards and manifest.json")
    parser.add_argument(
        "--tokenizer", required=True, help="tokenizer folder, or a vocab.txt / *vocab.json (+ merges) / .model file"
    )
    parser.add_argument("--tokenizer-kind", default=None, help="tokenizer family (e.g. bert, gpt2, roberta, chinese)")
    parser.add_argument("--format", default="auto", choices=FORMATS, help="input format (default: by extension)")
    parser.add_argument("--text-field", default="text", help="JSON field holding the text (dotted path allowed)")
    parser.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: all cores)")
    parser.add_argument("--chunk-mb", type=float, default=16.0, help="size of a work item (and of a shard's input)")
    parser.add_argument("--overwrite", action="store_true", help="discard shards made with other options")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (the log still has rates)")


def run(args: argparse.Namespace) -> int:
    from torchglm.errors import InputError

    tokenizer = load_tokenizer(args.tokenizer, args.tokenizer_kind)
    try:
        manifest = _prepare_from_args(args, tokenizer)
    except (OSError, ValueError) as error:  # missing inputs, a folder of other shards: one line, exit 2
        raise InputError(str(error)) from None
    if manifest.get("complete") and not manifest.get("documents"):
        raise InputError(f"read 0 documents from {', '.join(args.inputs)}: nothing to train on (see {args.output})")
    return 0 if manifest.get("complete") else 1


def _prepare_from_args(args: argparse.Namespace, tokenizer) -> dict:
    return prepare_data(
        args.inputs,
        args.output,
        tokenizer,
        fmt=args.format,
        text_field=args.text_field,
        workers=args.workers,
        chunk_mb=args.chunk_mb,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        tokenizer_name=args.tokenizer,
    )

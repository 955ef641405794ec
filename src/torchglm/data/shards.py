"""Memory-mapped token shards: a flat token buffer, a document index and a JSON manifest.

Layout of a shards folder::

    manifest.json         tokenizer, dtype, special ids, sentence-end ids, counts, per-shard checksums
    shard-00000.bin       every document's tokens back to back (uint16 below 65,536 ids, else uint32)
    shard-00000.idx       int64 offsets into the .bin, one per document plus the end (starts at 0)

Each document ends with eos. Shards are written to a temporary name and moved into place with ``os.replace``, so a
shard that exists is complete; the manifest is rewritten the same way after every shard, which is what makes
``prepare-data`` resumable. Reading maps the files (nothing is loaded) and slices them as plain numpy views.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .special import SpecialIds

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id: halves disk and page-cache use for <= 65,536 ids."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to ``path.tmp`` then ``os.replace``: readers and resumed runs never see a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


SAMPLE_BLOCKS, SAMPLE_BLOCK_BYTES = 16, 4096


def sample_spans(size: int) -> list[tuple[int, int]]:
    """The byte ranges of a file that its sampled hash covers: 16 blocks of 4 KiB spread evenly (all of a
    small file)."""
    if size <= SAMPLE_BLOCKS * SAMPLE_BLOCK_BYTES:
        return [(0, size)]
    step = (size - SAMPLE_BLOCK_BYTES) // (SAMPLE_BLOCKS - 1)
    return [(i * step, SAMPLE_BLOCK_BYTES) for i in range(SAMPLE_BLOCKS)]


def sampled_sha256(data) -> str:
    """SHA-256 over :func:`sample_spans` of ``data`` (bytes, or a file's memory map): checked on every open, so
    that a damaged shard is found in microseconds; the full hash needs ``verify``."""
    digest = hashlib.sha256()
    for start, length in sample_spans(len(data)):
        digest.update(bytes(data[start : start + length]))
    return digest.hexdigest()


def write_shard(folder: Path, name: str, documents: Sequence[np.ndarray], dtype: np.dtype) -> dict:
    """Write one shard (``name.bin`` + ``name.idx``) atomically and return its manifest entry."""
    folder = Path(folder)
    lengths = np.fromiter((len(d) for d in documents), dtype=np.int64, count=len(documents))
    offsets = np.zeros(len(documents) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.concatenate(documents).astype(dtype, copy=False) if documents else np.zeros(0, dtype=dtype)
    token_bytes, index_bytes = tokens.tobytes(), offsets.astype("<i8").tobytes()
    atomic_write_bytes(folder / f"{name}.bin", token_bytes)
    atomic_write_bytes(folder / f"{name}.idx", index_bytes)
    return {
        "name": name,
        "documents": int(len(documents)),
        "tokens": int(offsets[-1]),
        "sha256_bin": hashlib.sha256(token_bytes).hexdigest(),
        "sha256_idx": hashlib.sha256(index_bytes).hexdigest(),
        "sampled_sha256_bin": sampled_sha256(token_bytes),
    }


def write_token_shards(
    folder: Path,
    documents: Iterable[Sequence[int]],
    vocab_size: int,
    ids: SpecialIds,
    sentence_end_ids: Sequence[int] = (),
    documents_per_shard: int = 100_000,
    tokenizer: dict | None = None,
) -> dict:
    """Write already-tokenized documents (eos appended here) as shards + manifest; for tests and small corpora."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(vocab_size)
    shards, batch = [], []

    def flush():
        shards.append(write_shard(folder, f"shard-{len(shards):05d}", batch, dtype))
        batch.clear()

    for doc in documents:
        batch.append(np.append(np.asarray(doc, dtype=np.int64), ids.eos))
        if len(batch) >= documents_per_shard:
            flush()
    if batch or not shards:
        flush()
    manifest = new_manifest(vocab_size, ids, sentence_end_ids, tokenizer or {"name": "custom"})
    manifest["shards"] = shards
    finish_manifest(manifest)
    atomic_write_json(folder / MANIFEST, manifest)
    return manifest


def new_manifest(vocab_size: int, ids: SpecialIds, sentence_end_ids: Sequence[int], tokenizer: dict) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "tokenizer": tokenizer,
        "vocab_size": int(vocab_size),
        "dtype": token_dtype(vocab_size).name,
        "special_ids": {k: (list(v) if isinstance(v, tuple) else v) for k, v in ids.__dict__.items() if v is not None},
        "sentence_end_ids": [int(i) for i in sentence_end_ids],
        "shards": [],
        "complete": False,
    }


def finish_manifest(manifest: dict) -> None:
    manifest["documents"] = sum(s["documents"] for s in manifest["shards"])
    manifest["tokens"] = sum(s["tokens"] for s in manifest["shards"])
    manifest["complete"] = True


class TokenShards:
    """Read-only view of a shards folder: document lengths and token slices, memory-mapped.

    Example::

        shards = TokenShards("data/shards")
        shards.num_documents, shards.num_tokens
        shards.document(3)                  # np.ndarray of ids, ending with eos
        shards.tokens(3, 10, 20)            # a slice, without reading the rest
    """

    def __init__(self, folder: str | Path, verify: bool = False):
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `torchglm prepare-data` first")
        self.manifest = json.loads(path.read_text(encoding="utf-8"))
        if not self.manifest.get("complete"):
            raise ValueError(f"{self.folder} is incomplete (prepare-data was interrupted): run it again to resume")
        self.dtype = np.dtype(self.manifest["dtype"])
        self.vocab_size = int(self.manifest["vocab_size"])
        special = dict(self.manifest["special_ids"])
        for key in ("sentinel_masks", "sentinel_sops"):
            if key in special:
                special[key] = tuple(special[key])
        self.special_ids = SpecialIds(**special)
        self.buffers: list[np.ndarray] = []
        lengths, shard_of, offsets = [], [], []
        for number, entry in enumerate(self.manifest["shards"]):
            self._check_sizes(entry)
            if verify:
                self._verify(entry)
            index = np.fromfile(self.folder / f"{entry['name']}.idx", dtype="<i8")
            if entry["tokens"]:
                mm = np.memmap(self.folder / f"{entry['name']}.bin", dtype=self.dtype, mode="r")
                self._check_sample(entry, mm)
                self.buffers.append(mm.view(np.ndarray))  # plain view: slicing skips memmap bookkeeping
            else:
                self.buffers.append(np.zeros(0, dtype=self.dtype))
            lengths.append(np.diff(index))
            offsets.append(index[:-1])
            shard_of.append(np.full(len(index) - 1, number, dtype=np.int32))
        self.doc_lengths = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
        self.doc_offsets = np.concatenate(offsets) if offsets else np.zeros(0, dtype=np.int64)
        self.doc_shards = np.concatenate(shard_of) if shard_of else np.zeros(0, dtype=np.int32)

    def _check_sizes(self, entry: dict) -> None:
        """The fast check on every open: each shard file exists with the size its manifest entry implies, so a
        truncated or missing shard is named here rather than read as garbage (``verify=True``: full SHA-256)."""
        expected = {"bin": int(entry["tokens"]) * self.dtype.itemsize, "idx": (int(entry["documents"]) + 1) * 8}
        for suffix, size in expected.items():
            path = self.folder / f"{entry['name']}.{suffix}"
            actual = path.stat().st_size if path.is_file() else None
            if actual is None and suffix == "bin" and size == 0:
                continue  # a shard of empty documents has no .bin
            if actual != size:
                state = "missing" if actual is None else f"{actual} bytes"
                raise ValueError(f"{path}: {state}, the manifest says {size} (a truncated or damaged shard)")

    def _check_sample(self, entry: dict, tokens: np.memmap) -> None:
        """The sampled hash of the tokens (manifests written before it have none: skipped)."""
        expected = entry.get("sampled_sha256_bin")
        if expected is not None and sampled_sha256(tokens.view(np.uint8)) != expected:
            raise ValueError(
                f"{self.folder / (entry['name'] + '.bin')}: its sampled SHA-256 differs from the manifest's (the "
                "file changed since prepare-data wrote it)"
            )

    def _verify(self, entry: dict) -> None:
        for suffix in ("bin", "idx"):
            path = self.folder / f"{entry['name']}.{suffix}"
            if not path.is_file():
                continue  # a shard of empty documents has no .bin (sizes checked it)
            if sha256_file(path) != entry[f"sha256_{suffix}"]:
                raise ValueError(f"{path}: its SHA-256 differs from the manifest's (the file changed)")

    @property
    def num_documents(self) -> int:
        return len(self.doc_lengths)

    @property
    def num_tokens(self) -> int:
        return int(self.doc_lengths.sum())

    def sentence_end_table(self) -> np.ndarray:
        """Boolean table over ids of the sentence-end tokens recorded by prepare-data."""
        table = np.zeros(max(self.vocab_size, self.special_ids.max_id + 1), dtype=bool)
        table[np.asarray(self.manifest.get("sentence_end_ids", []), dtype=np.int64)] = True
        return table

    def tokens(self, doc: int, start: int, stop: int) -> np.ndarray:
        """Tokens ``start:stop`` of document ``doc`` (clipped to the document), as a view into the map."""
        length = int(self.doc_lengths[doc])
        start, stop = max(0, min(start, length)), max(0, min(stop, length))
        base = int(self.doc_offsets[doc])
        return self.buffers[self.doc_shards[doc]][base + start : base + stop]

    def document(self, doc: int) -> np.ndarray:
        return self.tokens(doc, 0, int(self.doc_lengths[doc]))

    def gather(self, docs: np.ndarray, starts: np.ndarray, counts: np.ndarray, lead: int = 0) -> np.ndarray:
        """Tokens ``start:start + count`` of every document ``docs[k]``, back to back in one array, each piece after
        ``lead`` slots that are left for the caller to fill (a packed text's ``[CLS]``). The ranges must lie inside
        their documents.

        A batch's texts are read with this one call: few or long pieces as views joined by one ``np.concatenate``
        (well under a microsecond a piece), hundreds of short ones with one fancy index per shard touched.
        """
        counts = np.asarray(counts, dtype=np.int64)
        source = self.doc_offsets[docs] + starts  # where the pieces start, inside their shards
        shard = self.doc_shards[docs]
        total = int(counts.sum()) + lead * len(counts)
        if len(counts) <= 128 or total >= 64 * len(counts):
            buffers, slot = self.buffers, np.empty(lead, dtype=self.dtype)
            pieces = []
            for number, begin, end in zip(shard.tolist(), source.tolist(), (source + counts).tolist(), strict=True):
                if lead:
                    pieces.append(slot)
                pieces.append(buffers[number][begin:end])
            return np.concatenate(pieces) if pieces else np.empty(0, dtype=self.dtype)
        sizes = counts + lead
        at = sizes.cumsum() - sizes + lead  # where each piece's tokens go
        out = np.empty(total, dtype=self.dtype)
        order = shard.argsort(kind="stable")  # the pieces of each shard side by side
        sorted_shard = shard[order]
        cuts = (sorted_shard[1:] != sorted_shard[:-1]).nonzero()[0] + 1
        bounds = [0, *cuts.tolist(), len(counts)]
        counts, at, source = counts[order], at[order], source[order]
        # Token j of the pieces (in shard order): piece k = piece_of[j], offset j - first[k] inside it.
        first = counts.cumsum() - counts
        rel = np.arange(int(counts.sum())) - first.repeat(counts)
        dest = at.repeat(counts) + rel
        src = source.repeat(counts) + rel
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            lo, hi = int(first[a]), int(first[b - 1] + counts[b - 1])
            out[dest[lo:hi]] = self.buffers[int(sorted_shard[a])][src[lo:hi]]
        return out

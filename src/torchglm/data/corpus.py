"""Corpus readers: files (globs, ``.gz``) -> work items -> documents, with every bad line accounted for.

Formats:

- ``lines``: one document per non-blank line;
- ``paragraphs``: documents separated by blank lines;
- ``jsonl``: one JSON object per line, the text in a configurable field (dotted paths like ``meta.text`` allowed);
- ``file``: each file is one document;
- ``auto``: ``jsonl`` for ``.jsonl``/``.json``/``.ndjson`` (optionally ``.gz``), else ``lines``.

Large uncompressed files are cut into byte ranges at line (or, for paragraphs, blank-line) boundaries so that
worker processes tokenize one file in parallel and an interrupted run resumes at a range, not a file. A line that
cannot be used (invalid JSON, missing or non-string field, bytes that are not UTF-8) becomes a :class:`BadLine`
with its file and 1-based line number: it is reported, never fatal, never silently lost.
"""

from __future__ import annotations

import glob
import gzip
import json
import re
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

FORMATS = ("auto", "lines", "paragraphs", "jsonl", "file")
_JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
_BLANK_LINE = re.compile(rb"\n[ \t\r\f\v]*\n")


@dataclass(frozen=True)
class BadLine:
    """A line that produced no document: where it is and why."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass(frozen=True)
class WorkItem:
    """A byte range of one input file, read and tokenized by one worker into one shard."""

    index: int
    file: str
    start: int
    end: int
    first_line: int
    format: str
    compressed: bool = False

    @property
    def size(self) -> int:
        return self.end - self.start

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Documents:
    """The documents of a work item, the line each starts on, and its bad lines."""

    texts: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    bad: list[BadLine] = field(default_factory=list)
    empty: int = 0


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Files named by paths or globs (``**`` recursive), sorted within each pattern, without duplicates."""
    files: list[Path] = []
    seen = set()
    for pattern in patterns:
        matches = sorted(glob.glob(str(pattern), recursive=True)) if glob.has_magic(str(pattern)) else [pattern]
        matches = [Path(m) for m in matches if Path(m).is_file()]
        if not matches:
            raise FileNotFoundError(f"no input file matches {pattern!r}")
        for path in matches:
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                files.append(path)
    return files


def resolve_format(path: Path, fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    if fmt != "auto":
        return fmt
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return "jsonl" if name.endswith(_JSON_SUFFIXES) else "lines"


def _next_boundary(f, offset: int, size: int, paragraphs: bool, window: int = 1 << 20) -> int:
    """First offset >= ``offset`` just after a newline (or after a blank line for paragraphs); ``size`` if none."""
    position = offset
    carry = b""
    while position < size:
        f.seek(position)
        block = f.read(window)
        data = carry + block
        base = position - len(carry)
        if paragraphs:
            match = _BLANK_LINE.search(data)
            if match:
                return base + match.end()
            carry = data[-64:]
        else:
            at = data.find(b"\n")
            if at >= 0:
                return base + at + 1
            carry = b""
        position += len(block)
    return size


def plan_items(files: list[Path], fmt: str, chunk_bytes: int) -> list[WorkItem]:
    """Cut the inputs into work items of about ``chunk_bytes`` (compressed files and ``file`` format whole)."""
    items: list[WorkItem] = []
    for path in files:
        kind = resolve_format(path, fmt)
        size = path.stat().st_size
        compressed = path.name.endswith(".gz")
        if compressed or kind == "file" or size <= chunk_bytes:
            items.append(WorkItem(len(items), str(path), 0, size, 1, kind, compressed))
            continue
        with open(path, "rb") as f:
            start, line = 0, 1
            while start < size:
                end = _next_boundary(f, min(start + chunk_bytes, size), size, kind == "paragraphs")
                items.append(WorkItem(len(items), str(path), start, end, line, kind))
                f.seek(start)
                line += f.read(end - start).count(b"\n")
                start = end
    return items


def _read_bytes(item: WorkItem) -> bytes:
    if item.compressed:
        try:
            with gzip.open(item.file, "rb") as f:
                return f.read()
        except (OSError, EOFError, zlib.error) as error:  # BadGzipFile is an OSError
            from torchglm.errors import InputError

            raise InputError(f"{item.file}: not a readable gzip file ({error})") from None
    with open(item.file, "rb") as f:
        f.seek(item.start)
        return f.read(item.size)


def _decode_lines(item: WorkItem, data: bytes, bad: list[BadLine]) -> list[str | None]:
    """Lines of the item (``None`` where the bytes are not UTF-8, each such line reported)."""
    try:
        return data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        pass
    lines: list[str | None] = []
    for number, raw in enumerate(data.split(b"\n"), start=item.first_line):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as error:
            bad.append(
                BadLine(item.file, number, f"undecodable bytes (not UTF-8): {error.reason} at byte {error.start}")
            )
            lines.append(None)
    return lines


def _field(record, path: list[str]):
    for key in path:
        if not isinstance(record, dict) or key not in record:
            return None, False
        record = record[key]
    return record, True


def read_documents(item: WorkItem, text_field: str = "text") -> Documents:
    """Read one work item into documents; bad lines (and binary parts) are collected, never raised; an unreadable
    .gz file is an InputError naming it."""
    out = Documents()
    data = _read_bytes(item)
    if b"\x00" in data:  # text never holds NUL bytes: a binary file would become garbage training text
        out.bad.append(BadLine(item.file, item.first_line, "binary data (NUL bytes): this part of the file is skipped"))
        return out
    lines = _decode_lines(item, data, out.bad)
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line does not start another one
    first = item.first_line
    if item.format == "lines":
        for number, line in enumerate(lines, start=first):
            if line is not None and line.strip():
                out.texts.append(line.strip())
                out.lines.append(number)
    elif item.format == "jsonl":
        path = text_field.split(".")
        for number, line in enumerate(lines, start=first):
            if line is None or not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                out.bad.append(BadLine(item.file, number, f"invalid JSON: {error.msg} (column {error.colno})"))
                continue
            value, found = _field(record, path)
            if not found:
                out.bad.append(BadLine(item.file, number, f"missing field {text_field!r}"))
            elif not isinstance(value, str):
                out.bad.append(BadLine(item.file, number, f"field {text_field!r} is {type(value).__name__}, not text"))
            elif not value.strip():
                out.empty += 1
            else:
                out.texts.append(value)
                out.lines.append(number)
    elif item.format == "paragraphs":
        current: list[str] = []
        start_line = first
        for number, line in enumerate(lines + [""], start=first):
            if line is None:
                continue  # reported; the rest of its paragraph is kept
            if line.strip():
                if not current:
                    start_line = number
                current.append(line.rstrip("\r"))
            elif current:
                out.texts.append("\n".join(current))
                out.lines.append(start_line)
                current = []
    elif item.format == "file":
        text = "\n".join(line for line in lines if line is not None)
        if text.strip():
            out.texts.append(text)
            out.lines.append(first)
        else:
            out.empty += 1
    else:
        raise ValueError(f"unknown format {item.format!r}")
    out.bad.sort(key=lambda bad: bad.line)
    return out

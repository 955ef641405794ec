"""prepare-data on slices of ../shared/data/corpus: shards equal the tokenizer's output, bad lines are reported
with file and line, interrupted runs resume to the same shards, and the command line works."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from torchglm.data.corpus import WorkItem, plan_items, read_documents
from torchglm.data.prepare import batch_encoder, prepare_data, read_bad_lines
from torchglm.data.shards import TokenShards


@pytest.fixture(scope="module")
def tokenizer(shared_dir):
    tokenization = pytest.importorskip("torchglm.tokenization")
    folder = shared_dir / "golden" / "glm-ref-fill"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent: it holds the BERT vocabulary folder these tests tokenize with")
    return tokenization.GLMTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def corpus(shared_dir):
    folder = shared_dir / "data" / "corpus"
    if not (folder / "tinyshakespeare.txt").is_file():
        pytest.skip(f"{folder} is absent: it holds the text these tests tokenize")
    return folder


def encode(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]


def test_word_cache_equals_tokenizer(tokenizer, corpus):
    lines = (corpus / "gutenberg" / "carroll-alice.txt").read_text().split("\n")[:400]
    lines += ["Ünïcode naïve — text", "a [MASK] b", "x\x0by\x1fz", ""]
    assert batch_encoder(tokenizer)(lines) == [tokenizer.encode(t, add_special_tokens=False) for t in lines]


def test_formats_bad_lines_and_shards(tokenizer, corpus, tmp_path):
    lines = (corpus / "tinyshakespeare.txt").read_text().split("\n")[:120]
    (tmp_path / "plays.txt").write_text("\n".join(lines) + "\n")
    records = [
        json.dumps({"text": "First good record."}),
        "{not json",
        json.dumps({"body": "no text field"}),
        json.dumps({"text": 42}),
        json.dumps({"text": "   "}),
        json.dumps({"text": "Last good record!"}),
    ]
    raw = (
        ("\n".join(records[:3]) + "\n").encode()
        + b'{"text": "bad \xff\xfe bytes"}\n'
        + ("\n".join(records[3:])).encode()
    )
    (tmp_path / "records.jsonl").write_bytes(raw)
    with gzip.open(tmp_path / "more.jsonl.gz", "wt") as f:
        f.write(json.dumps({"meta": {"text": "Nested field, gzipped."}}) + "\n")
    para = "First paragraph\nstill first.\n\n\nSecond paragraph.\n   \nThird.\n"
    (tmp_path / "paras.md").write_text(para)

    out = tmp_path / "shards"
    manifest = prepare_data([str(tmp_path / "*.txt"), str(tmp_path / "records.jsonl")], out, tokenizer, workers=0)
    assert manifest["complete"] and manifest["bad_lines"] == 4
    bad = [(b.file.split("/")[-1], b.line, b.reason.split(":")[0].split(" (")[0]) for b in read_bad_lines(out)]
    assert bad == [
        ("records.jsonl", 2, "invalid JSON"),
        ("records.jsonl", 3, "missing field 'text'"),
        ("records.jsonl", 4, "undecodable bytes"),
        ("records.jsonl", 5, "field 'text' is int, not text"),
    ]
    assert manifest["empty_documents"] == 1
    assert "records.jsonl:2: invalid JSON" in (out / "prepare.log").read_text()
    shards = TokenShards(out, verify=True)
    expected = [encode(tokenizer, line.strip()) for line in lines if line.strip()]
    expected += [encode(tokenizer, "First good record."), encode(tokenizer, "Last good record!")]
    assert shards.num_documents == len(expected)
    assert [shards.document(i).tolist() for i in range(shards.num_documents)] == expected
    assert manifest["tokenizer"]["vocab_size"] == 30526 and shards.dtype == np.uint16
    assert shards.sentence_end_table()[tokenizer.convert_tokens_to_ids(".")]

    out2 = tmp_path / "shards2"
    prepare_data([str(tmp_path / "more.jsonl.gz")], out2, tokenizer, workers=0, text_field="meta.text")
    assert TokenShards(out2).document(0).tolist() == encode(tokenizer, "Nested field, gzipped.")
    out3 = tmp_path / "shards3"
    prepare_data([str(tmp_path / "paras.md")], out3, tokenizer, workers=0, fmt="paragraphs")
    docs = TokenShards(out3)
    assert docs.num_documents == 3
    assert docs.document(0).tolist() == encode(tokenizer, "First paragraph\nstill first.")


def test_chunks_keep_line_numbers(tmp_path):
    lines = [json.dumps({"text": f"line {i} " + "x" * 200}) for i in range(1, 2001)]
    lines[1499] = "{broken"
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(lines) + "\n")
    items = plan_items([path], "auto", 1 << 16)
    assert len(items) > 4 and items[0].start == 0 and items[-1].end == path.stat().st_size
    assert all(a.end == b.start for a, b in zip(items, items[1:], strict=False))
    found = [b for item in items for b in read_documents(item).bad]
    assert [(b.line, b.reason.split(":")[0]) for b in found] == [(1500, "invalid JSON")]
    total = sum(len(read_documents(item).texts) for item in items)
    assert total == 1999
    whole = read_documents(WorkItem(0, str(path), 0, path.stat().st_size, 1, "jsonl"))
    assert [b.line for b in whole.bad] == [1500]


def test_resume_after_interruption(tokenizer, corpus, tmp_path):
    source = corpus / "tinyshakespeare.txt"
    sliced = tmp_path / "slice.txt"
    sliced.write_bytes(source.read_bytes()[:400_000])
    reference = prepare_data([str(sliced)], tmp_path / "ref", tokenizer, workers=0, chunk_mb=0.0625, progress=False)
    assert len(reference["shards"]) >= 6
    out = tmp_path / "resumed"
    partial = prepare_data([str(sliced)], out, tokenizer, workers=0, chunk_mb=0.0625, max_items=2)
    assert not partial["complete"] and len(partial["shards"]) == 2
    with pytest.raises(ValueError, match="incomplete"):
        TokenShards(out)
    (out / "shard-00002.bin.tmp").write_bytes(b"half a shard")  # debris of a killed worker
    manifest = prepare_data([str(sliced)], out, tokenizer, workers=2, chunk_mb=0.0625)
    assert manifest["complete"] and not list(out.glob("*.tmp"))
    assert [s["sha256_bin"] for s in manifest["shards"]] == [s["sha256_bin"] for s in reference["shards"]]
    assert "2 done before" in (out / "prepare.log").read_text()
    with pytest.raises(ValueError, match="overwrite"):
        prepare_data([str(sliced)], out, tokenizer, workers=0, chunk_mb=1.0)


def test_command_line(shared_dir, tokenizer, corpus, tmp_path):
    from torchglm.cli import main

    out = tmp_path / "cli"
    argv = ["prepare-data", str(corpus / "gutenberg" / "blake-poems.txt"), "--output", str(out), "--format", "file"]
    argv += ["--tokenizer", str(shared_dir / "golden" / "glm-ref-fill"), "--workers", "0", "--no-progress"]
    assert main(argv) == 0
    shards = TokenShards(out)
    assert shards.num_documents == 1
    text = (corpus / "gutenberg" / "blake-poems.txt").read_text()
    assert shards.document(0).tolist() == encode(tokenizer, text.rstrip("\n"))


def test_tokenizer_kind_is_honoured_for_vocabulary_files_or_refused(shared_dir):
    from torchglm.data.prepare import load_tokenizer
    from torchglm.errors import InputError

    vocab = shared_dir / "data" / "vocab"
    expected = json.loads((shared_dir / "golden" / "tokenizers.json").read_text())
    legacy = load_tokenizer(str(vocab / "cog-pretrain.model"), "chinese-legacy")
    assert legacy.gmask_token_id == 50007 != load_tokenizer(str(vocab / "cog-pretrain.model"), None).gmask_token_id
    assert "chinese-sp" in expected  # the legacy layout the golden file describes
    roberta = load_tokenizer(str(vocab / "roberta-vocab.json"), "roberta")
    assert roberta.glm_kind == "roberta"
    with pytest.raises(InputError, match="--tokenizer-kind chinese: bert-uncased-vocab.txt is a bert vocabulary"):
        load_tokenizer(str(vocab / "bert-uncased-vocab.txt"), "chinese")
    with pytest.raises(InputError, match="no such folder or vocabulary file"):
        load_tokenizer(str(vocab / "nope.txt"), None)


def test_zero_documents_is_an_error(shared_dir, tmp_path, capsys):
    from torchglm.cli import main

    (tmp_path / "blank.txt").write_text("\n\n   \n")
    argv = ["prepare-data", str(tmp_path / "blank.txt"), "--output", str(tmp_path / "out"), "--no-progress",
            "--tokenizer", str(shared_dir / "data" / "vocab" / "bert-uncased-vocab.txt")]  # fmt: skip
    assert main(argv) == 2
    assert "read 0 documents" in capsys.readouterr().err


def test_a_bad_gzip_is_named_and_binary_files_are_skipped_and_counted(shared_dir, tmp_path, capsys):
    import os

    from torchglm.cli import main

    vocab = str(shared_dir / "data" / "vocab" / "bert-uncased-vocab.txt")
    (tmp_path / "broken.txt.gz").write_bytes(gzip.compress(b"some text\n" * 50)[:-20])
    argv = ["prepare-data", "--tokenizer", vocab, "--no-progress", "--workers", "1"]
    assert main([*argv, str(tmp_path / "broken.txt.gz"), "--output", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "broken.txt.gz: not a readable gzip file" in err and "Traceback" not in err
    (tmp_path / "good.txt").write_text("A line of text.\nAnother one.\n")
    (tmp_path / "image.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00" + os.urandom(2000))
    assert main([*argv, str(tmp_path / "good.txt"), str(tmp_path / "image.bin"), "--output", str(tmp_path / "b")]) == 0
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["documents"] == 2 and manifest["bad_lines"] == 1
    [bad] = read_bad_lines(tmp_path / "b")
    assert bad.file.endswith("image.bin") and "binary data" in bad.reason

"""A sweep of bad input for every command: exit status 2, one message naming the problem, no traceback, and
no output file left behind."""

from __future__ import annotations

import pytest

from torchglm.cli import main


@pytest.fixture
def files(shared_dir, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "bad.jsonl").write_text('{"text": "a b"}\n{"nope": 1}\n')
    (tmp_path / "blank.txt").write_text("\n \n")
    (tmp_path / "words.txt").write_text("some words to score\n")
    (tmp_path / "pair.source").write_text("first document\nsecond document\n")
    (tmp_path / "pair.target").write_text("first summary\n")
    (tmp_path / "nosum.jsonl").write_text('{"document": "a text"}\n')
    import json
    import shutil

    for task, lines in (
        (
            "RTE",
            [
                '{"premise": "a", "hypothesis": "b", "label": "entailment", "idx": 0}',
                '{"premise": "a", "label": "entailment", "idx": 1}',
            ],
        ),
        ("CB", ['{"premise": "a", "hypothesis": "b", "label": "maybe", "idx": 0}']),
    ):
        (tmp_path / "sg" / task).mkdir(parents=True)
        for split in ("val", "train"):
            (tmp_path / "sg" / task / f"{split}.jsonl").write_text("\n".join(lines) + "\n")

    shutil.copytree(shared_dir / "golden" / "glm-ref-fill", tmp_path / "badshape")
    config = json.loads((tmp_path / "badshape" / "config.json").read_text())
    (tmp_path / "badshape" / "config.json").write_text(json.dumps({**config, "hidden_size": 128}))
    (tmp_path / "emptydoc.jsonl").write_text('{"document": "a b", "summary": "c"}\n{"document": " ", "summary": "d"}\n')
    return {
        "model": str(shared_dir / "golden" / "glm-ref-fill"),
        "mp2": str(shared_dir / "golden" / "glm-ref-tiny-mp2"),
        "vocab": str(shared_dir / "data" / "vocab" / "bert-uncased-vocab.txt"),
        "tmp": tmp_path,
    }


CASES = [
    # (argv with {model} {mp2} {vocab} {tmp} placeholders, words the message must hold)
    (["fill", "--model", "{tmp}/nope", "x"], "no such model folder"),
    (["fill", "--model", "{model}", "--num-beams", "0", "a [MASK]"], "num_beams"),
    (["fill", "--model", "{model}", "--batch-size", "0", "a [MASK]"], "--batch-size 0"),
    (["fill", "--model", "{model}", "--max-new-tokens", "100000", "a [MASK]"], "max_new_tokens"),
    (["fill", "--model", "{model}", "--file", "{tmp}/missing.txt"], "--file {tmp}/missing.txt: cannot read"),
    (["fill", "--model", "{model}", "an [XMASK]"], "unknown blank '[XMASK]'"),
    (["fill", "--model", "{tmp}/badshape", "a [MASK]"], "its weights do not fit its config.json"),
    (["convert", "{tmp}/nope", "{tmp}/out"], "does not exist"),
    (["convert", "{model}", "{tmp}"], "exists; choose a new output folder"),
    (["prepare-data", "{tmp}/missing.txt", "--output", "{tmp}/out", "--tokenizer", "{vocab}"], "no input file matches"),
    (["prepare-data", "{tmp}/blank.txt", "--output", "{tmp}/out", "--tokenizer", "{tmp}/nope"], "--tokenizer"),
    (["prepare-data", "{tmp}/blank.txt", "--output", "{tmp}/out", "--tokenizer", "{vocab}", "--tokenizer-kind",
      "gpt2"], "--tokenizer-kind gpt2"),
    (["pretrain", "--config", "{tmp}/missing.yaml"], "does not exist"),
    (["evaluate", "lambada", "--model", "{model}", "--data", "{tmp}/bad.jsonl"], 'line 2: field "text" is missing'),
    (["evaluate", "wikitext", "--model", "{model}", "--data", "{tmp}/empty.txt"], "the file is empty"),
    (["evaluate", "wikitext", "--model", "{model}", "--data", "{tmp}/words.txt", "--seq-length", "4"], "too short"),
    (["evaluate", "multichoice", "--model", "{model}", "--data", "{tmp}/missing.jsonl"], "no such file"),
    (["evaluate", "seq2seq", "--task", "xsum", "--model", "{model}", "--data", "{tmp}/pair.source", "--output",
      "{tmp}/out"], "pair.source has 2 lines but {tmp}/pair.target has 1"),
    (["evaluate", "seq2seq", "--task", "xsum", "--model", "{model}", "--data", "{tmp}/nosum.jsonl", "--output",
      "{tmp}/out"], 'nosum.jsonl, line 1: field "summary" is missing'),
    (["evaluate", "seq2seq", "--task", "xsum", "--model", "{model}", "--data", "{tmp}/emptydoc.jsonl", "--output",
      "{tmp}/out"], 'emptydoc.jsonl, line 2: field "document" is empty'),
    (["evaluate", "seq2seq", "--task", "xsum", "--model", "{model}", "--data", "{tmp}/emptydoc.jsonl",
      "--num-beams", "0"], "--num-beams must be an integer >= 1"),
    (["summarize", "{tmp}/missing.txt", "--model", "{model}"], "no such file"),
    (["summarize", "{tmp}/blank.txt", "--model", "{model}", "--output", "{tmp}/out.txt"], "the file is empty"),
    (["evaluate", "superglue", "--task", "rte", "--model", "{model}", "--data", "{tmp}/sg"],
     'RTE/val.jsonl, line 2: field "hypothesis" is missing'),
    (["evaluate", "superglue", "--task", "rte", "--model", "{model}", "--data", "{tmp}/sg", "--split", "nope"],
     "nope.jsonl: no such file"),
    (["evaluate", "superglue", "--task", "cb", "--model", "{model}", "--data", "{tmp}/sg"], "unknown label 'maybe'"),
    (["finetune", "superglue", "--task", "rte", "--model", "{model}", "--data", "{tmp}/sg", "--output", "{tmp}/run",
      "--task.pattern_id", "8"], "rte has no pattern 8"),
    (["finetune", "seq2seq", "--model", "{model}", "--data", "{tmp}/nope", "--output", "{tmp}/run"],
     "{tmp}/nope: no such file or folder"),
    (["finetune", "seq2seq", "--data", "{tmp}", "--output", "{tmp}/run"], "model.init_from (--model) is empty"),
    (["finetune", "seq2seq", "--model", "{model}", "--data", "{tmp}", "--output", "{tmp}/run", "--optim.lr", "0"],
     "optim.lr must be > 0"),
]  # fmt: skip


@pytest.mark.parametrize("argv, words", CASES, ids=[" ".join(a[:2]) + f" #{i}" for i, (a, _) in enumerate(CASES)])
def test_bad_input_is_one_line_and_exit_status_2(files, capsys, argv, words):
    before = sorted(p.name for p in files["tmp"].iterdir())
    argv = [a.format(**files) for a in argv]
    assert main([*argv, "--no-progress"] if argv[0] in ("evaluate", "prepare-data", "summarize") else argv) == 2
    err = capsys.readouterr().err
    assert words.format(**files) in err and "Traceback" not in err, err
    assert sorted(p.name for p in files["tmp"].iterdir()) == before  # no output left behind

"""``torchglm evaluate``: the original's LAMBADA and WikiText totals from the command line, the results JSON and
log, and bad input as one line with exit status 2."""

from __future__ import annotations

import hashlib
import json

import pytest

from torchglm.cli import main


@pytest.fixture(scope="module")
def golden(shared_dir):
    cases = json.loads((shared_dir / "golden" / "lm-eval.json").read_text())
    return shared_dir / "golden" / "glm-ref-fill", cases


@pytest.mark.parametrize("mode", ["bidirectional", "unidirectional"])
def test_lambada_from_the_command_line_reproduces_the_original(golden, shared_dir, tmp_path, mode, capsys):
    model, cases = golden
    lines = (shared_dir / "data" / "lambada" / "lambada_test.jsonl").read_text().splitlines()
    expected = cases[f"lambada_{mode}"]
    data = tmp_path / "lambada.jsonl"
    data.write_text("".join(lines[c["index"]] + "\n" for c in expected["examples"]))
    output = tmp_path / "out" / "lambada.json"
    argv = ["evaluate", "lambada", "--model", str(model), "--data", str(data), "--seq-length", "128",
            "--output", str(output), "--batch-size", "5", "--no-progress"]  # fmt: skip
    assert main(argv + (["--unidirectional"] if mode == "unidirectional" else [])) == 0
    record = json.loads(output.read_text())
    assert [r["nll"] for r in record["examples"]] == pytest.approx(
        [c["answer_nll"] for c in expected["examples"]], rel=1e-4
    )
    assert [r["correct"] for r in record["examples"]] == [c["correct"] for c in expected["examples"]]
    assert record["accuracy"] == expected["accuracy"] and record["total"] == 20
    assert record["data_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert record["settings"]["unidirectional"] == (mode == "unidirectional")
    assert "LAMBADA" in capsys.readouterr().out and "accuracy" in output.with_suffix(".log").read_text()


@pytest.mark.parametrize("mode", ["bidirectional", "unidirectional"])
def test_wikitext_from_the_command_line_reproduces_the_originals_totals(golden, shared_dir, tmp_path, mode, capsys):
    model, cases = golden
    expected = cases[f"wikitext_{mode}"]
    data = shared_dir / "data" / "wikitext" / "wikitext-103" / "wiki.test.tokens"
    output = tmp_path / "wikitext.json"
    argv = ["evaluate", "wikitext", "--model", str(model), "--data", str(data), "--limit", str(cases["wikitext_lines"]),
            "--seq-length", "128", "--overlap", "32", "--output", str(output)]  # fmt: skip
    assert main(argv + (["--unidirectional"] if mode == "unidirectional" else [])) == 0
    record = json.loads(output.read_text())
    assert record["total_nll"] == pytest.approx(expected["total_nll"], rel=1e-4)
    assert record["scored_tokens"] == expected["scored_tokens"] and len(record["windows"]) == len(expected["windows"])
    assert record["num_tokens"] == expected["num_tokenized_tokens"]
    assert record["num_words"] == expected["num_original_tokens"]
    assert record["ppl"] == pytest.approx(expected["ppl"], rel=1e-3)
    assert record["adjusted_ppl"] == pytest.approx(expected["adjusted_ppl"], rel=1e-3)
    assert "per token" in capsys.readouterr().out


def test_multichoice_from_the_command_line(golden, tmp_path):
    model, _ = golden
    data = tmp_path / "mc.jsonl"
    data.write_text(
        json.dumps({"inputs_pretokenized": "the sky is", "choices_pretokenized": ["blue", "green"], "label": 0})
        + "\n"
        + json.dumps({"context": "one plus one is", "choices": ["two", "three", "ten"], "label": 0})
        + "\n"
    )
    output = tmp_path / "mc.json"
    argv = ["evaluate", "multichoice", "--model", str(model), "--data", str(data), "--output", str(output)]
    assert main(argv + ["--length-normalize"]) == 0
    record = json.loads(output.read_text())
    assert record["total"] == 2 and record["settings"]["length_normalize"] is True
    assert [len(r["scores"]) for r in record["examples"]] == [2, 3]
    assert record["accuracy"] == sum(r["prediction"] == 0 for r in record["examples"]) / 2


def test_bad_input_is_one_line_and_exit_status_2(golden, tmp_path, capsys):
    model, _ = golden
    good = tmp_path / "ok.jsonl"
    good.write_text('{"text": "a b c"}\n')
    bad_line = tmp_path / "bad.jsonl"
    bad_line.write_text('{"text": "a b c"}\n{"txt": "a b"}\n')
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\u00e9\n".encode("latin-1"))
    choices = tmp_path / "choices.jsonl"
    choices.write_text(
        '{"context": "x", "choices": ["a", "b"], "label": 0}\n{"context": "y", "choices": ["a"], "label": 1}\n'
    )
    cases = [
        (["evaluate", "lambada", "--model", str(tmp_path / "nope"), "--data", str(good)], "no such model folder"),
        (["evaluate", "lambada", "--model", str(model), "--data", str(bad_line)], 'bad.jsonl, line 2: field "text"'),
        (["evaluate", "lambada", "--model", str(model), "--data", str(tmp_path / "nope.jsonl")], "no such file"),
        (["evaluate", "lambada", "--model", str(model), "--data", str(good), "--seq-length", "512"],
         "--seq-length 512 is above the model's positions (max_sequence_length=128)"),
        (["evaluate", "lambada", "--model", str(model), "--data", str(good), "--batch-size", "0"], "--batch-size 0"),
        (["evaluate", "wikitext", "--model", str(model), "--data", str(empty)], "empty.txt: the file is empty"),
        (["evaluate", "wikitext", "--model", str(model), "--data", str(good), "--overlap", "200"], "--overlap 200"),
        (["evaluate", "lambada", "--model", str(tmp_path), "--data", str(good)], "cannot load a GLM"),
        (["evaluate", "wikitext", "--model", str(model), "--data", str(latin1)], "latin1.txt, line 1: not UTF-8"),
        (["evaluate", "multichoice", "--model", str(model), "--data", str(choices)],
         'choices.jsonl, line 2: field "label" 1 is outside the 1 choices'),
        (["evaluate", "multichoice", "--model", str(model)], "evaluate multichoice needs --data FILE"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main(argv + ["--no-progress"]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_totals_stay_close_to_the_originals(golden, shared_dir, tmp_path, dtype):
    model, cases = golden
    data = shared_dir / "data" / "wikitext" / "wikitext-103" / "wiki.test.tokens"
    output = tmp_path / "wikitext.json"
    argv = ["evaluate", "wikitext", "--model", str(model), "--data", str(data), "--limit", "40", "--seq-length",
            "128", "--overlap", "32", "--dtype", dtype, "--output", str(output), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    record = json.loads(output.read_text())
    assert record["dtype"] == dtype
    assert record["total_nll"] == pytest.approx(cases["wikitext_bidirectional"]["total_nll"], rel=2e-3)


def test_results_json_gets_the_mode_of_an_ordinary_file(tmp_path):
    """A results JSON is as readable as any file the user's umask allows (a mkstemp writer made them 0600)."""
    import os

    from torchglm.data.shards import atomic_write_json

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "results.json", {"accuracy": 0.5})
        (tmp_path / "plain.json").write_text("{}")
    finally:
        os.umask(old)
    assert json.loads((tmp_path / "results.json").read_text()) == {"accuracy": 0.5}
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "results.json").stat().st_mode == (tmp_path / "plain.json").stat().st_mode
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []

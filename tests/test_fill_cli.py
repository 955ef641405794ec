"""``torchglm fill``: the original's fills through the command line, texts from arguments, files and stdin."""

from __future__ import annotations

import io
import json

import pytest

from torchglm.cli import main


@pytest.fixture(scope="module")
def golden(shared_dir):
    pytest.importorskip("torchglm.tokenization")
    folder = shared_dir / "golden" / "glm-ref-fill"
    return folder, json.loads((folder / "fill_cases.json").read_text())


def run_fill(capsys, *args):
    code = main(["fill", *map(str, args)])
    out = capsys.readouterr().out
    return code, out


def test_cli_reproduces_the_golden_fills_as_json(golden, capsys):
    folder, cases = golden
    texts = [case["text"] for case in cases["cases"]]
    code, out = run_fill(capsys, "--model", folder, "--max-new-tokens", 8, "--json", "--batch-size", 4, *texts)
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == len(texts)
    for line, case in zip(lines, cases["cases"], strict=True):
        assert line["text"] == case["text"]
        assert line["context_ids"] == case["context_ids"]
        assert [blank["token_ids"] for blank in line["blanks"]] == case["fills"]
        assert [blank["position"] for blank in line["blanks"]] == case["mask_positions"]


def test_cli_reads_files_and_stdin_and_streams(golden, capsys, tmp_path, monkeypatch):
    folder, cases = golden
    texts = [case["text"] for case in cases["cases"][:3]]
    _, expected = run_fill(capsys, "--model", folder, "--max-new-tokens", 8, *texts)
    assert len(expected.splitlines()) == 3
    listing = tmp_path / "texts.txt"
    listing.write_text("\n".join(texts) + "\n\n")
    assert run_fill(capsys, "--model", folder, "--max-new-tokens", 8, "--file", listing) == (0, expected)
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(texts) + "\n"))
    assert run_fill(capsys, "--model", folder, "--max-new-tokens", 8) == (0, expected)
    code, streamed = run_fill(capsys, "--model", folder, "--max-new-tokens", 8, "--stream", texts[0])
    assert code == 0 and streamed.splitlines()[-1] == expected.splitlines()[0]


def test_cli_interactive_keeps_going_after_a_bad_text(golden, capsys, monkeypatch):
    folder, cases = golden
    monkeypatch.setattr("sys.stdin", io.StringIO("a [MASK2] b\n" + cases["cases"][1]["text"] + "\n"))
    code = main(["fill", "--model", str(folder), "--max-new-tokens", "8", "--interactive"])
    captured = capsys.readouterr()
    assert code == 0
    assert "unknown blank '[MASK2]'" in captured.err
    assert "Tsinghua University is located in" in captured.out


def test_cli_with_a_missing_model_folder_says_what_to_pass(capsys, tmp_path):
    assert main(["fill", "--model", str(tmp_path / "nope"), "some text"]) == 2
    assert "no such model folder" in capsys.readouterr().err


def test_bad_lines_of_a_file_are_named_and_the_others_still_filled(golden, capsys, tmp_path):
    folder, cases = golden
    good = [case["text"] for case in cases["cases"][:2]]
    _, expected = run_fill(capsys, "--model", folder, "--max-new-tokens", 8, *good)
    listing = tmp_path / "texts.txt"
    listing.write_text(f"{good[0]}\nan [XMASK] here\n\n{good[1]}\n")
    code = main(["fill", "--model", str(folder), "--max-new-tokens", "8", "--file", str(listing)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == expected
    assert "texts.txt, line 2: unknown blank '[XMASK]'" in captured.err and "1 of 3 texts failed" in captured.err
    assert "Traceback" not in captured.err


def test_ban_takes_one_list_and_leaves_the_texts_alone(golden, capsys):
    folder, cases = golden
    text = next(case["text"] for case in cases["cases"] if case["fills"][0])
    _, plain = run_fill(capsys, "--model", folder, "--max-new-tokens", 8, "--json", text)
    first = json.loads(plain)["blanks"][0]["token_ids"][0]
    code, banned = run_fill(capsys, "--model", folder, "--max-new-tokens", 8, "--json", "--ban", f"{first},7", text)
    assert code == 0 and len(banned.splitlines()) == 1  # the text was not taken for a token id
    assert first not in json.loads(banned)["blanks"][0]["token_ids"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--num-beams", "0", "a [MASK]"], "num_beams must be an integer >= 1, got 0"),
        (["--batch-size", "0", "a [MASK]"], "--batch-size 0: must be at least 1"),
        (["--stream", "--json", "a [MASK]"], "--stream prints tokens as they come"),
        (["", "a"], "text 1: the text is empty"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_status_2(golden, capsys, args, message):
    folder, _ = golden
    assert main(["fill", "--model", str(folder), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_name_that_is_not_a_folder_never_goes_to_the_network(capsys, tmp_path):
    import time

    start = time.perf_counter()
    assert main(["fill", "--model", "glm-large", "a [MASK]"]) == 2
    assert "--model glm-large: no such model folder" in capsys.readouterr().err
    assert time.perf_counter() - start < 5  # the hub lookup it replaces waited 30 s for the network


def test_hub_ids_only_with_the_network_allowed(monkeypatch, tmp_path, capsys):
    from torchglm.cli import main
    from torchglm.fill_cli import is_hub_id

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert is_hub_id("THUDM/glm-large") and not is_hub_id("glm-large") and not is_hub_id("./glm-large")
    assert not is_hub_id("runs/final")  # runs/ is a local folder: a missing run, not a hub id
    assert not is_hub_id("a/b/c") and not is_hub_id("/abs/path")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["fill", "--model", "THUDM/glm-large", "a [MASK]"]) == 2
    assert "a hub id, and HF_HUB_OFFLINE is set" in capsys.readouterr().err

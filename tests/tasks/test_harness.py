"""The lm-evaluation-harness backend: its three request types against the project's own scoring and decoding,
and lm_eval end to end on local task files (offline)."""

from __future__ import annotations

import json
import os
import tempfile

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # read before `datasets` is imported: never reach for the hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")
lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is the optional extra torchglm[eval]")

from lm_eval.api.instance import Instance  # noqa: E402

from torchglm.generation import fill_ids  # noqa: E402
from torchglm.tasks import ChoiceExample, PromptIds, evaluate_multiple_choice, score_final_blank  # noqa: E402
from torchglm.tasks.harness import GLMHarnessLM  # noqa: E402
from torchglm.tasks.scoring import score_windows, window_spans  # noqa: E402

from .helpers import EOP, EOS, GMASK, SOP, WordTokenizer, tiny_model  # noqa: E402


def requests(kind, arguments):
    return [Instance(kind, {}, args, i) for i, args in enumerate(arguments)]


@pytest.fixture(scope="module")
def backend():
    return GLMHarnessLM(model=tiny_model(), tokenizer=WordTokenizer(), batch_size=3, seq_length=32, overlap=6)


def test_loglikelihood_equals_the_projects_own_scoring(backend):
    tok, ids = backend.tokenizer, PromptIds.from_tokenizer(backend.tokenizer)
    pairs = [("the cat sat on the", " mat"), ("the cat sat on the", " big red hat"), ("a b c ", "d e"),
             ("", "alone words"), ("x " * 40, "y")]  # fmt: skip
    got = backend.loglikelihood(requests("loglikelihood", pairs))
    expected = score_final_blank(backend.model, ids, [tok.encode(c) for c, _ in pairs],
                                 [[tok.encode(a)] for _, a in pairs], seq_length=32)  # fmt: skip
    for (log_prob, greedy), [want] in zip(got, expected, strict=True):
        assert log_prob == pytest.approx(want.log_prob, abs=1e-5) and greedy == want.is_greedy


def test_loglikelihood_rolling_scores_every_token_once_the_first_from_an_empty_prompt(backend):
    tok, ids = backend.tokenizer, PromptIds.from_tokenizer(backend.tokenizer)
    texts = ["one", "a b c d e f g", " ".join(f"w{i}" for i in range(75))]
    got = backend.loglikelihood_rolling(requests("loglikelihood_rolling", [(t,) for t in texts]))
    for text, total in zip(texts, got, strict=True):
        tokens = tok.encode(text)
        spans = window_spans(len(tokens), 31, 6, score_first=True)
        scores = score_windows(backend.model, ids, tokens, spans, batch_size=1)
        assert sum(s.num_tokens for s in scores) == len(tokens)
        assert total == pytest.approx(sum(s.log_prob for s in scores), abs=1e-4)


def test_generate_until_is_greedy_fill_cut_at_the_stop_string(backend):
    tok = backend.tokenizer
    contexts = ["the cat sat", "one two three four", "a"]
    kwargs = {"until": ["zzz-never"], "max_gen_toks": 5}
    got = backend.generate_until(requests("generate_until", [(c, kwargs) for c in contexts]))
    parts = [[tok.cls_token_id, *tok.encode(c), GMASK] for c in contexts]
    fills = fill_ids(backend.model, parts, blank_ids=[GMASK], sop_id=SOP, stop_ids=[EOP, EOS], max_new_tokens=5,
                     banned_ids=(96,))  # fmt: skip
    expected = [tok.decode(f.token_ids) for [f] in fills]
    assert got == expected
    word = expected[1].split()[1] if len(expected[1].split()) > 1 else None
    if word is not None:  # a stop string inside the generated text cuts it there
        cut = backend.generate_until(requests("generate_until", [(contexts[1], {"until": [word], "max_gen_toks": 5})]))
        assert cut == [expected[1][: expected[1].index(word)]]


@pytest.fixture(scope="module")
def local_tasks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    rows = [
        {"context": "The capital of France is", "choices": [" Paris", " London", " a dog"], "label": 0},
        {"context": "Two plus two is", "choices": [" four", " seven"], "label": 1},
        {"context": "The sky is", "choices": [" blue", " green", " loud"], "label": 2},
    ]
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (folder / "glm_choice.yaml").write_text(
        "task: glm_choice\n" + source + "output_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: label\n'
        "metric_list:\n  - metric: acc\n"
    )
    return folder, rows


def test_lm_eval_runs_a_local_task_and_agrees_with_evaluate_multiple_choice(shared_dir, local_tasks, monkeypatch):
    from lm_eval.tasks import TaskManager

    from torchglm.fill_cli import load

    folder, rows = local_tasks
    model, tokenizer = load(str(shared_dir / "golden" / "glm-ref-fill"))
    monkeypatch.setenv("HF_DATASETS_CACHE", tempfile.mkdtemp())
    results = lm_eval.simple_evaluate(
        model=GLMHarnessLM(model=model, tokenizer=tokenizer, batch_size=4), tasks=["glm_choice"],
        task_manager=TaskManager(include_path=str(folder)), log_samples=True,
    )  # fmt: skip
    ours = evaluate_multiple_choice(
        model, tokenizer, [ChoiceExample(r["context"], r["choices"], r["label"]) for r in rows]
    )
    assert results["results"]["glm_choice"]["acc,none"] == pytest.approx(ours.accuracy)
    samples = sorted(results["samples"]["glm_choice"], key=lambda s: s["doc_id"])
    for sample, row in zip(samples, ours.examples, strict=True):
        assert [r[0] for r in sample["filtered_resps"]] == pytest.approx(row["scores"], abs=1e-5)


def test_torchglm_evaluate_harness_runs_lm_evals_command_line(shared_dir, local_tasks, tmp_path, monkeypatch):
    from torchglm.cli import main

    folder, _ = local_tasks
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    status = main(["evaluate", "harness", "--model", str(shared_dir / "golden" / "glm-ref-fill"), "--tasks",
                   "glm_choice", "--include_path", str(folder), "--output_path", str(tmp_path / "out")])  # fmt: skip
    assert status == 0
    [written] = list((tmp_path / "out").rglob("results_*.json"))
    assert "acc,none" in json.loads(written.read_text())["results"]["glm_choice"]

"""The original's SuperGLUE cloze inputs (``../shared/golden/superglue-cloze.json``): for the first dev examples of
each task (ReCoRD: of train.jsonl), with the BERT and GPT-2 tokenizers at the default patterns, torchglm rebuilds
the ids, 2-D positions, sep, targets, logit masks and labels from the shared data. Any example of the same kind
is built by the same rule."""

from __future__ import annotations

import json

import pytest

from torchglm import GLMTokenizer
from torchglm.tasks import superglue


@pytest.fixture(scope="module")
def golden(shared_dir):
    return json.loads((shared_dir / "golden" / "superglue-cloze.json").read_text())


@pytest.fixture(scope="module")
def tokenizers(shared_dir):
    vocab = shared_dir / "data" / "vocab"
    return {
        "bert": GLMTokenizer.from_bert_vocab(vocab / "bert-uncased-vocab.txt"),
        "gpt2": GLMTokenizer.from_gpt2_vocab(vocab / "gpt2-vocab.json", vocab / "gpt2-merges.txt"),
    }


CASES = [f"{family}/{task}" for family in ("bert", "gpt2") for task in superglue.TASKS
         if task not in superglue.EXTERNAL_TASKS]  # the CLUE tasks (tasks/clue.py) have no golden file  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_cloze_inputs_match_the_original(shared_dir, golden, tokenizers, case):
    family, task = case.split("/")
    want = golden[case]
    assert want["pattern_id"] == superglue.DEFAULT_PATTERN[task] and want["seq_length"] == superglue.SEQ_LENGTH[task]
    tokenizer = tokenizers[family]
    split = {"dev": "val", "train": "train"}[want["split"]]
    path = superglue.task_file(shared_dir / "data" / "superglue", task, split)
    examples = superglue.read_examples(task, path, want["split"])[: len(want["samples"])]
    built = [
        superglue.fixed_length_arrays(
            superglue.cloze_input(tokenizer, task, example), want["seq_length"], tokenizer.eos_token_id,
            tokenizer.sop_token_id,
        )
        for example in examples
    ]  # fmt: skip
    keys = ("text", "position", "mask", "target", "logit_mask", "label")
    if task == "record":
        # A question with several gold answers gives one training example per answer, a0, a1, ... The original
        # took the answers in the iteration order of a Python set (it changes with PYTHONHASHSEED), torchglm in
        # the file's order, so the examples of one question are compared as a set: guid without its answer index.
        def question(guid):
            return guid.rsplit("-a", 1)[0]

        ours = sorted(
            (question(e.guid), json.dumps([b[k] for k in keys])) for e, b in zip(examples, built, strict=True)
        )
        theirs = sorted((question(s["guid"]), json.dumps([s[k] for k in keys])) for s in want["samples"])
        assert ours == theirs
        return
    for sample, example, arrays in zip(want["samples"], examples, built, strict=True):
        assert example.guid == sample["guid"]
        for key in keys:
            assert arrays[key] == sample[key], (case, sample["guid"], key)

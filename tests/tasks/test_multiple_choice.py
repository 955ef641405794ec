"""Zero-shot multiple choice: both file formats, scores against full forward passes, length normalisation,
batching, bad lines named."""

from __future__ import annotations

import json

import pytest

from torchglm.errors import InputError
from torchglm.tasks import ChoiceExample, evaluate_multiple_choice, read_multiple_choice

from .helpers import CLS, EOS, GMASK, SOP, WordTokenizer, full_pass_log_probs, tiny_model


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_both_formats_are_read(tmp_path):
    path = write_jsonl(tmp_path / "mc.jsonl", [
        {"inputs_pretokenized": "Is the sky blue?", "choices_pretokenized": ["yes", "no"], "label": 0},
        {"context": "Two plus two is", "choices": ["four", "five", "six"], "label": 2, "idx": 7},
        {"context": "Unlabelled", "choices": ["a", "b"]},
    ])  # fmt: skip
    examples = read_multiple_choice(path)
    assert examples == [
        ChoiceExample("Is the sky blue?", ["yes", "no"], 0, 1),
        ChoiceExample("Two plus two is", ["four", "five", "six"], 2, 2),
        ChoiceExample("Unlabelled", ["a", "b"], None, 3),
    ]


def test_choices_score_as_full_forward_passes_and_the_best_is_picked():
    model, tokenizer = tiny_model(), WordTokenizer()
    examples = [
        ChoiceExample("the cat sat on the", ["mat", "big red hat", "dog"], 1),
        ChoiceExample("one two three", ["four five", "six"], 0),
        ChoiceExample("a", ["b c d e", "f"], None),
    ]
    result = evaluate_multiple_choice(model, tokenizer, examples, batch_size=2)
    normalized = evaluate_multiple_choice(model, tokenizer, examples, length_normalize=True, batch_size=1)
    labelled = correct = 0
    for example, row, norm_row in zip(examples, result.examples, normalized.examples, strict=True):
        context = tokenizer.encode(example.context)
        part_a = [CLS, *context, GMASK, EOS]
        sums, means = [], []
        for choice in example.choices:
            answer = tokenizer.encode(choice)
            ids = part_a + [SOP, *answer[:-1]]
            text_pos = list(range(len(part_a))) + [len(part_a) - 2] * len(answer)
            block_pos = [0] * len(part_a) + list(range(1, len(answer) + 1))
            targets = [(len(part_a) + k, t) for k, t in enumerate(answer)]
            values, _ = full_pass_log_probs(model, ids, text_pos, block_pos, len(part_a), targets)
            sums.append(sum(values))
            means.append(sum(values) / len(values))
        assert row["scores"] == pytest.approx(sums, abs=1e-5) and norm_row["scores"] == pytest.approx(means, abs=1e-5)
        assert row["prediction"] == max(range(len(sums)), key=sums.__getitem__)
        assert norm_row["prediction"] == max(range(len(means)), key=means.__getitem__)
        if example.label is not None:
            labelled += 1
            correct += row["prediction"] == example.label
            assert row["correct"] == (row["prediction"] == example.label)
        else:
            assert "correct" not in row
    assert result.accuracy == correct / labelled and result.total == 3


def test_bad_lines_are_named_with_line_and_field(tmp_path):
    cases = [
        ({"context": "x", "choices": ["a", "b"], "label": 2}, r'line 2: field "label" 2 is outside the 2 choices'),
        ({"context": "x", "choices": ["a"], "label": -1}, r'line 2: field "label" -1 is outside the 1 choices'),
        ({"context": "x", "label": 0}, r'line 2: field "choices" must be a non-empty list'),
        ({"choices": ["a"], "label": 0}, r'line 2: missing field "inputs_pretokenized" \(or "context"\)'),
        ({"context": "x", "choices": ["a", ""], "label": 0}, r"non-empty strings"),
        ({"context": "x", "choices": ["a", "b"], "label": "0"}, r'line 2: field "label" must be an integer'),
        ({"context": 3, "choices": ["a"], "label": 0}, r'line 2: field "context" is not a string'),
    ]
    for bad, message in cases:
        path = write_jsonl(tmp_path / "mc.jsonl", [{"context": "ok", "choices": ["a"], "label": 0}, bad])
        with pytest.raises(InputError, match=message):
            read_multiple_choice(path)

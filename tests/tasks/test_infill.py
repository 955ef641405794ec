"""Blank filling on held-out sentences: the blanked word's draw, inputs as written by hand, scores equal to full
forward passes in each layout (GLM with and without the right context, causal LM), and bad input named."""

from __future__ import annotations

import json

import pytest

from torchglm.cli import main
from torchglm.errors import InputError
from torchglm.tasks.infill import blank_one_word, evaluate_infill, read_infill_sentences

from .helpers import CLS, EOS, MASK, SOP, WordTokenizer, full_pass_log_probs, tiny_model

SENTENCES = [
    "the queen said that the cat was grinning at alice again",
    "alice , who was rather tired , sat down on the bank",
    "short line",
    "down the rabbit hole she went , never once considering how in the world she was to get out again",
]


def test_the_blanked_word_is_alphabetic_not_the_first_and_drawn_per_line_with_a_seed():
    for line, sentence in enumerate(SENTENCES, start=1):
        example = blank_one_word(sentence, line)
        assert example.word.isalpha() and example.left  # some left context for every model
        assert f"{example.left} {example.word} {example.right}".strip() == sentence
        assert blank_one_word(sentence, line) == example  # deterministic
    draws = {blank_one_word(SENTENCES[3], 4, seed=s).word for s in range(20)}
    assert len(draws) > 3  # the seed changes the draw
    assert blank_one_word(", , .", 1) is None


def test_lines_outside_the_word_limits_are_skipped_and_bad_files_named(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("\n".join(SENTENCES) + "\n\n")
    examples = read_infill_sentences(path, min_words=8, max_words=15)
    assert [e.line for e in examples] == [1, 2]
    assert len(read_infill_sentences(path, min_words=2, max_words=100)) == 4
    with pytest.raises(InputError, match="no line has 30 to 40 words"):
        read_infill_sentences(path, min_words=30, max_words=40)
    with pytest.raises(InputError, match="min-words"):
        read_infill_sentences(path, min_words=9, max_words=8)
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(InputError, match="empty"):
        read_infill_sentences(tmp_path / "empty.txt")


@pytest.mark.parametrize("layout", ["glm", "glm-left-only", "causal"])
def test_scores_equal_full_forward_passes_and_batching_changes_nothing(tmp_path, layout):
    model, tokenizer = tiny_model(), WordTokenizer()
    path = tmp_path / "s.txt"
    path.write_text("\n".join(SENTENCES) + "\n")
    examples = read_infill_sentences(path, min_words=2)
    options = {"right_context": layout == "glm", "causal": layout == "causal", "seq_length": 64}
    one = evaluate_infill(model, tokenizer, examples, batch_size=1, **options)
    many = evaluate_infill(model, tokenizer, examples, batch_size=3, **options)
    for e, a, b in zip(examples, one.examples, many.examples, strict=True):
        left, [word], right = tokenizer.encode(e.left), tokenizer.encode(e.word), tokenizer.encode(e.right)
        if layout == "causal":  # [CLS] left word, one causal pass (sep 0), block positions 0
            ids = [CLS, *left]
            text_pos, block_pos, sep = list(range(len(ids))), [0] * len(ids), 0
        else:  # [CLS] left [MASK] (right) [eos] | [sop] at the mask, predicting the word
            part_a = [CLS, *left, MASK, *(right if layout == "glm" else []), EOS]
            ids = part_a + [SOP]
            text_pos = list(range(len(part_a))) + [len(left) + 1]
            block_pos, sep = [0] * len(part_a) + [1], len(part_a)
        [log_prob], greedy = full_pass_log_probs(model, ids, text_pos, block_pos, sep, [(len(ids) - 1, word)])
        assert a["nll"] == pytest.approx(-log_prob, abs=1e-5) and a["correct"] == greedy
        assert b["nll"] == pytest.approx(a["nll"], abs=1e-5) and b["correct"] == a["correct"]
    assert one.accuracy == sum(r["correct"] for r in one.examples) / len(examples)
    assert one.nll_per_token == pytest.approx(sum(r["nll"] for r in one.examples) / len(examples), rel=1e-6)


def test_sentences_longer_than_the_sequence_are_counted_as_skipped(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("\n".join(SENTENCES) + "\n")
    result = evaluate_infill(tiny_model(), WordTokenizer(), read_infill_sentences(path, min_words=2), seq_length=12)
    assert result.skipped == 3 and result.total == 1  # only "short line" ([CLS] short [M] [eos] [sop]) fits


def test_the_command_line_writes_results_and_names_bad_options(shared_dir, tmp_path, capsys):
    golden_fill_model = shared_dir / "golden" / "glm-ref-fill"
    data = tmp_path / "sentences.txt"
    data.write_text("\n".join(SENTENCES) + "\n")
    output = tmp_path / "infill.json"
    base = ["evaluate", "infill", "--model", str(golden_fill_model), "--data", str(data), "--no-progress"]
    assert main(base + ["--output", str(output), "--min-words", "2"]) == 0
    record = json.loads(output.read_text())
    assert record["task"] == "infill" and record["total"] == 4 and record["settings"]["layout"] == "bidirectional"
    assert "blank filling" in capsys.readouterr().out
    assert main(base + ["--left-only", "--causal"]) == 2
    assert main(base + ["--unidirectional"]) == 2
    assert "--unidirectional does not apply" in capsys.readouterr().err

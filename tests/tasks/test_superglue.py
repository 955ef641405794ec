"""SuperGLUE cloze tasks on hand-made examples: patterns, truncation, cached scoring against full passes, the
official metrics against hand-computed values, and the readers' errors."""

from __future__ import annotations

import json

import pytest

from torchglm.errors import InputError
from torchglm.tasks import superglue
from torchglm.tasks.superglue import ClozeExample

from .helpers import CLS, EOP, EOS, MASK, SOP, WordTokenizer, full_pass_log_probs, tiny_model


@pytest.fixture(scope="module")
def bert(shared_dir):
    from torchglm import GLMTokenizer

    return GLMTokenizer.from_bert_vocab(shared_dir / "data" / "vocab" / "bert-uncased-vocab.txt")


def text_of(tokenizer, ids):
    return tokenizer.decode([t for t in ids if t != tokenizer.pad_token_id])


def test_patterns_read_as_written(bert):
    rte = ClozeExample("dev-0", "The cat sat on the mat.", "A cat sat.", "entailment")
    item = superglue.cloze_input(bert, "rte", rte)
    assert text_of(bert, item.part_a) == '[CLS] " a cat sat "? [MASK], " the cat sat on the mat. "'
    assert bert.convert_ids_to_tokens(item.verbalizer_ids) == ["yes", "no"] and item.label == 0
    boolq = ClozeExample("dev-1", "Paris is in France.", "is paris in france", "true")
    item = superglue.cloze_input(bert, "boolq", boolq)
    assert (
        text_of(bert, item.part_a)
        == "[CLS] based on the following passage is paris in france? [MASK]. paris is in france."
    )
    copa = ClozeExample("dev-2", "The man fell.", None, 1, {"choice1": "He slipped.", "choice2": "He laughed.",
                                                          "question": "cause"})  # fmt: skip
    item = superglue.cloze_input(bert, "copa", copa)
    assert (
        text_of(bert, item.choice_part_a[0]) == '[CLS] " he slipped " or " he laughed "? the man fell because [MASK].'
    )
    assert [bert.decode(a) for a in item.choice_ids] == ["he slipped <|endofpiece|>", "he laughed <|endofpiece|>"]
    wsc = ClozeExample("dev-3", "Anna told Sue that she won.", None, "True",
                       {"span1_text": "Anna", "span2_text": "she", "span1_index": 0, "span2_index": 4})  # fmt: skip
    item = superglue.cloze_input(bert, "wsc", wsc)
    assert text_of(bert, item.choice_part_a[0]).startswith("[CLS] anna told sue that * she * won. question :")
    assert (
        superglue.verbalizer("cb", 4, "neutral") == " neither" and superglue.verbalizer("boolq", 1, "true") == " true"
    )


class DistinctWords(WordTokenizer):
    """Each new word its own id (1, 2, ...): no hash collisions in a test that reads the words back."""

    def encode(self, text, add_special_tokens=False, verbose=True):
        ids = []
        for word in text.split():
            known = {w: i for i, w in self.words.items()}
            if word not in known:
                known[word] = len(self.words) + 1
                self.words[known[word]] = word
            ids.append(known[word])
        return ids


def test_truncation_shortens_the_longest_shortenable_part_one_token_at_a_time():
    tok = DistinctWords()
    premise, hypothesis = " ".join(f"p{i}" for i in range(20)), "h0 h1 h2 h3"
    example = ClozeExample("dev-0", premise, hypothesis, "entailment")
    parts = superglue.pattern_parts("rte", example, 1)  # [hypothesis, "?"], [MASK, ",", " " + premise]
    assert parts == ([("h0 h1 h2 h3", True), "?"], [superglue.MASK, ",", (" " + premise, True)])
    item = superglue.cloze_input(tok, "rte", example, pattern_id=1, seq_length=16)
    # 16 = [CLS] + eos + [sop] + 13 pattern tokens: 4 + 1 + 1 + 1 + 20 = 27 cut by 14, all from the premise (it
    # keeps more shortenable tokens than the hypothesis)
    assert len(item.part_a) == 15 and item.part_a[0] == CLS and item.part_a[-1] == EOS
    kept = tok.decode(item.part_a[1:-1]).split()
    assert kept[:5] == ["h0", "h1", "h2", "h3", "?"] and kept[5:7] == [f"<{MASK}>", ","]
    assert kept[7:] == [f"p{i}" for i in range(6)]
    shorter = superglue.cloze_input(tok, "rte", example, pattern_id=1, seq_length=13)
    words = tok.decode(shorter.part_a[1:-1]).split()
    # 17 to cut: 16 from the premise (down to the hypothesis' 4), then the tie goes to part B: the premise again
    assert words == ["h0", "h1", "h2", "h3", "?", f"<{MASK}>", ",", "p0", "p1", "p2"]
    far = superglue.cloze_input(tok, "rte", example, pattern_id=1, seq_length=11)  # 19 cut: then A and B in turn
    assert tok.decode(far.part_a[1:-1]).split() == ["h0", "h1", "h2", "?", f"<{MASK}>", ",", "p0", "p1"]


def test_cached_choice_scores_equal_full_passes():
    model, tok = tiny_model(max_sequence_length=64), WordTokenizer()
    examples = [
        ClozeExample("dev-0", "a b c d", None, 0, {"choice1": "e f", "choice2": "g h i", "question": "effect"}),
        ClozeExample("dev-1", "j k", None, 1, {"choice1": "l", "choice2": "m n", "question": "cause"}),
    ]
    inputs = [superglue.cloze_input(tok, "copa", e, seq_length=40) for e in examples]
    single = [superglue.cloze_input(tok, "rte", ClozeExample("dev-2", "x y z", "w", "entailment"), seq_length=40)]
    scored = superglue.score_inputs(model, tok, inputs + single, batch_size=2)
    for item, result in zip(inputs, scored, strict=False):
        for c, (part_a, mask, answer) in enumerate(
            zip(item.choice_part_a, item.choice_mask_positions, item.choice_ids, strict=True)
        ):
            ids = part_a + [SOP, *answer[:-1]]
            n = len(part_a)
            text = list(range(n)) + [mask] * len(answer)
            blocks = [0] * n + list(range(1, len(answer) + 1))
            values, _ = full_pass_log_probs(
                model, ids, text, blocks, n, list(zip(range(n, n + len(answer)), answer, strict=True))
            )
            assert result.scores[c] == pytest.approx(sum(values), abs=1e-4)
    [rte] = single
    ids, n = rte.part_a + [SOP], len(rte.part_a)
    for k, verbalizer in enumerate(rte.verbalizer_ids):
        values, _ = full_pass_log_probs(model, ids, list(range(n)) + [rte.mask_position], [0] * n + [1], n,
                                        [(n, verbalizer)])  # fmt: skip
        assert scored[2].scores[k] == pytest.approx(values[0], abs=1e-4)
    assert EOP == inputs[0].choice_ids[0][-1]


def _ex(guid, label, **meta):
    return ClozeExample(guid, "", None, label, meta)


def test_metrics_against_hand_computed_values():
    cb = [_ex(str(i), label) for i, label in enumerate(["entailment", "contradiction", "neutral", "entailment"])]
    got = superglue.metrics("cb", cb, [0, 1, 0, 0])  # labels 0 1 2 0
    # F1 entailment: p=2/3 r=1 -> 0.8; contradiction 1.0; neutral 0 -> macro 0.6
    assert got == {"accuracy": pytest.approx(75.0), "f1_macro": pytest.approx(60.0)}
    multirc = [_ex("a", 1, passage_idx=0, question_idx=0, answer_idx=0),
               _ex("b", 0, passage_idx=0, question_idx=0, answer_idx=1),
               _ex("c", 1, passage_idx=0, question_idx=1, answer_idx=2),
               _ex("d", 1, passage_idx=1, question_idx=0, answer_idx=3)]  # fmt: skip
    got = superglue.metrics("multirc", multirc, [1, 0, 0, 1])
    # F1a over answers: tp 2, fp 0, fn 1 -> 0.8; questions exactly right: (0,0) and (1,0) of 3
    assert got == {"f1a": pytest.approx(80.0), "em": pytest.approx(200 / 3)}
    record = [_ex("q0", "0", candidates=["The Eiffel Tower", "Paris"], answers=["Eiffel Tower", "tower"]),
              _ex("q1", "0", candidates=["New York City", "Boston"], answers=["New York"])]  # fmt: skip
    got = superglue.metrics("record", record, [0, 0])
    # q0: normalised "eiffel tower" equals the first gold: F1 1, EM 1; q1: 2 of 3 predicted tokens -> F1 0.8, EM 0
    assert got == {"f1": pytest.approx(90.0), "em": pytest.approx(50.0)}
    assert superglue.token_f1("the cat", "a cat") == 1.0
    rows = superglue.submission_rows("multirc", multirc, [1, 0, 0, 1])
    assert rows[0] == {"idx": 0, "passage": {"questions": [{"idx": 0, "answers": [{"idx": 0, "label": 1},
                       {"idx": 1, "label": 0}]}, {"idx": 1, "answers": [{"idx": 2, "label": 0}]}]}}  # fmt: skip


def test_bad_task_files_name_file_line_and_field(tmp_path):
    path = tmp_path / "val.jsonl"
    path.write_text(json.dumps({"premise": "a", "hypothesis": "b", "label": "entailment", "idx": 0}) + "\n"
                    + json.dumps({"premise": "a", "label": "entailment", "idx": 1}) + "\n")  # fmt: skip
    with pytest.raises(InputError, match=r'val.jsonl, line 2: field "hypothesis" is missing'):
        superglue.read_examples("rte", path)
    path.write_text(json.dumps({"premise": "a", "hypothesis": "b", "label": "maybe", "idx": 0}) + "\n")
    with pytest.raises(InputError, match=r"val.jsonl, line 1: unknown label 'maybe'"):
        superglue.read_examples("rte", path)
    path.write_text("\n")
    with pytest.raises(InputError, match="the file is empty"):
        superglue.read_examples("rte", path)
    example = ClozeExample("dev-0", "a", "b", "entailment")
    with pytest.raises(InputError, match=r"rte has no pattern 7 \(its patterns: 0..4\)"):
        superglue.cloze_input(WordTokenizer(), "rte", example, pattern_id=7)
    with pytest.raises(InputError, match="not one of"):
        superglue.read_examples("rtee", path)


def test_evaluate_cli_writes_the_submission_file(shared_dir, tmp_path):
    from torchglm import GLMForConditionalGeneration, GLMTokenizer
    from torchglm.cli import main

    folder = shared_dir / "golden" / "glm-ref-fill"
    out = tmp_path / "rte"
    args = ["evaluate", "superglue", "--task", "rte", "--model", str(folder), "--limit", "6", "--seq-length", "128",
            "--output", str(out), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "RTE.jsonl").read_text().splitlines()]
    model = GLMForConditionalGeneration.from_pretrained(folder).eval()
    tokenizer = GLMTokenizer.from_pretrained(folder)
    path = superglue.task_file(shared_dir / "data" / "superglue", "rte", "val")
    examples = superglue.read_examples("rte", path, "dev")[:6]
    scored = superglue.score_inputs(model, tokenizer, superglue.build_inputs(tokenizer, "rte", examples, None, 128))
    assert rows == [
        {"idx": e.idx, "label": superglue.LABELS["rte"][s.prediction]} for e, s in zip(examples, scored, strict=True)
    ]
    results = json.loads((out / "results.json").read_text())
    accuracy = 100 * sum(s.prediction == s.label for s in scored) / 6
    assert results["metrics"] == {"accuracy": pytest.approx(accuracy)} and results["pattern_id"] == 0
    assert main([*args[:-3], "--pattern-id", "9", "--no-progress"]) == 2

"""The cloze losses (the original's --loss-func) against hand-computed values and against the scorer, and WSC's
negative candidates (--wsc-negative) for hand-checked sentences."""

from __future__ import annotations

import json
import math

import pytest
import torch

from torchglm.tasks import superglue
from torchglm.tasks.noun_phrases import noun_phrases, wsc_negatives
from torchglm.tasks.superglue import ClozeExample

from .helpers import WordTokenizer, tiny_model

INF = float("-inf")


def test_cloze_loss_terms_match_hand_computed_values():
    # three examples' choice scores (log-probabilities; the second has two choices, -inf pads it) and gold choices
    scores = torch.tensor([[-1.0, -3.0, -4.0], [-2.5, -2.0, INF], [-2.0, -1.5, -2.2]])
    gold = torch.tensor([0, 1, 0])
    # cross-entropy: log(sum exp s) - s_gold
    want_ce = [
        math.log(math.exp(-1) + math.exp(-3) + math.exp(-4)) + 1.0,  # 0.169846
        math.log(math.exp(-2.5) + math.exp(-2.0)) + 2.0,  # 0.474077
        math.log(math.exp(-2) + math.exp(-1.5) + math.exp(-2.2)) + 2.0,  # 1.243420
    ]
    # hinge, margin 1: sum over wrong choices of max(0, 1 + s_j - s_gold)
    want_hinge = [0.0, 0.5, 1.5 + 0.8]  # [-3 and -4 are 2+ below -1]; [1 - 2.5 + 2]; [1 - 1.5 + 2, 1 - 2.2 + 2]
    want_generative = [1.0, 2.0, 2.0]  # -s_gold
    got = {name: superglue.cloze_loss_terms(scores, gold, name).tolist() for name in superglue.CLOZE_LOSSES}
    assert got["cross_entropy"] == pytest.approx(want_ce, abs=1e-6)
    assert got["hinge"] == pytest.approx(want_hinge, abs=1e-6)
    assert got["generative"] == pytest.approx(want_generative, abs=1e-6)
    assert got["mix"] == pytest.approx([c + g for c, g in zip(want_ce, want_generative, strict=True)], abs=1e-6)
    # the original's hinge, written as it is: (1 + s - s_gold) clamped at 0, summed over all choices, minus 1
    assert superglue.cloze_loss_terms(scores, gold, "hinge", margin=2.0).tolist() == pytest.approx(
        [0.0, 1.5, 2.5 + 1.8], abs=1e-6
    )
    with pytest.raises(ValueError, match="not one of"):
        superglue.cloze_loss_terms(scores, gold, "squared")


def _wsc(guid, text, referent, index, pronoun_index, candidates):
    meta = {"span1_text": referent, "span2_text": text.split()[pronoun_index], "span1_index": index,
            "span2_index": pronoun_index, "candidates": candidates}  # fmt: skip
    return ClozeExample(guid, text, None, "True", meta)


@pytest.mark.parametrize("loss", superglue.CLOZE_LOSSES)
def test_cloze_loss_on_a_model_is_the_formula_over_the_scorers_scores(loss):
    """ClozeLoss's total (one training pass, rows side by side) = the loss formula over the scores that
    ``score_inputs`` computes (KV cache, one continuation at a time): multi-token with a length penalty (WSC's
    choices: the referent, then its negatives) and single-token (RTE's verbalizers, log-probabilities)."""
    model, tok = tiny_model(max_sequence_length=64), WordTokenizer()
    wsc = [
        _wsc("train-0", "Anna told Sue that she won the big prize", "Anna", 0, 4, ["Sue", "the big prize"]),
        _wsc("train-1", "The dog chased the cat because it was hungry", "The dog", 0, 6, ["the cat"]),
    ]
    rte = [ClozeExample("train-2", "a b c d", "a b", "entailment"),
           ClozeExample("train-3", "e f", "g", "not_entailment")]  # fmt: skip
    for task, examples, penalty in (("wsc", wsc, 1.0), ("rte", rte, 0.0)):
        items = superglue.build_inputs(tok, task, examples, seq_length=48)
        scored = superglue.score_inputs(model, tok, items, length_penalty=penalty)
        width = max(len(s.scores) for s in scored)
        scores = torch.tensor([s.scores + [INF] * (width - len(s.scores)) for s in scored])
        gold = torch.tensor([item.label for item in items])
        want = float(superglue.cloze_loss_terms(scores, gold, loss).sum())
        batch = superglue.collate_cloze(items, tok.pad_token_id, tok.sop_token_id)
        with torch.no_grad():
            got = superglue.ClozeLoss(loss, length_penalty=penalty)(model, batch)
        assert float(got.total) == pytest.approx(want, abs=1e-4), task
        assert int(got.count) == len(examples)
    assert [item.label for item in superglue.build_inputs(tok, "wsc", wsc, seq_length=48)] == [0, 0]


def test_wsc_predictions_are_true_when_the_referent_outscores_every_negative():
    model, tok = tiny_model(max_sequence_length=64), WordTokenizer()
    examples = [
        _wsc("dev-0", "Anna told Sue that she won the big prize", "Anna", 0, 4, ["Sue", "the big prize"]),
        _wsc("dev-1", "The dog chased the cat because it was hungry", "The dog", 0, 6, ["the cat"]),
        _wsc("dev-2", "Tom met Bob and he smiled", "Tom", 0, 4, []),  # no negatives: always True, as the original
    ]
    examples[1].label = "False"
    items = superglue.build_inputs(tok, "wsc", examples, seq_length=48)
    winners = [s.prediction for s in superglue.score_inputs(model, tok, items)]
    result = superglue.evaluate_superglue(model, tok, "wsc", examples, seq_length=48)
    assert result.predictions == [1 if w == 0 else 0 for w in winners] and result.predictions[2] == 1
    right = sum(p == superglue.LABELS["wsc"].index(e.label) for p, e in zip(result.predictions, examples, strict=True))
    assert result.metrics["accuracy"] == pytest.approx(100 * right / 3)


def test_the_wsc_dev_loss_scores_true_referents_against_their_negatives_with_or_without_negatives():
    """A WSC dev label says True/False, not which choice is right: the dev loss keeps the true referents, as choice
    0 against their negatives (none: a one-choice loss of 0, not an index out of range)."""
    model, tok = tiny_model(max_sequence_length=64), WordTokenizer()
    examples = [
        _wsc("dev-0", "Anna told Sue that she won the big prize", "Anna", 0, 4, ["Sue", "the big prize"]),
        _wsc("dev-1", "The dog chased the cat because it was hungry", "The cat", 3, 6, ["The dog"]),
        _wsc("dev-2", "Tom met Bob and he smiled", "Tom", 0, 4, []),
    ]
    examples[1].label = "False"
    items = superglue.build_inputs(tok, "wsc", examples, seq_length=48)
    assert [item.label for item in items] == [1, 0, 1]  # the True/False index the metrics and the original use
    kept = superglue.loss_inputs("wsc", items)
    assert [(item.guid, item.label) for item in kept] == [("dev-0", 0), ("dev-2", 0)]
    batch = superglue.collate_cloze(kept, tok.pad_token_id, tok.sop_token_id)
    scored = superglue.score_inputs(model, tok, kept)
    with torch.no_grad():
        got = superglue.ClozeLoss("cross_entropy")(model, batch)
    want = float(superglue.cloze_loss_terms(torch.tensor([scored[0].scores]), torch.tensor([0])).sum())  # dev-2: 0
    assert float(got.total) == pytest.approx(want, abs=1e-4) and int(got.count) == 2
    rte = [ClozeExample("dev-3", "a b", "c", "entailment")]
    assert superglue.loss_inputs("rte", superglue.build_inputs(tok, "rte", rte, seq_length=48))[0].label == 0


@pytest.mark.parametrize(
    "text, referent, phrases, negatives",
    [
        ("The city councilmen refused the demonstrators a permit because they advocated violence.",
         "The demonstrators", ["The city councilmen", "the demonstrators", "a permit"],
         ["The city councilmen", "a permit"]),
        ("The sack of potatoes had been placed below the bag of flour , so it had to be moved first.",
         "The bag of flour", ["The sack", "potatoes", "the bag", "flour"], ["The sack", "potatoes"]),
        ("Sam Goodman 's biography of the Spartan general Xenophanes conveys a vivid sense of the difficulties he "
         "faced in his research.", "Goodman",
         ["Sam Goodman", "the Spartan general Xenophanes", "a vivid sense", "the difficulties", "his research"],
         ["the Spartan general Xenophanes", "a vivid sense", "the difficulties", "his research"]),
        ("Dan had to stop Bill from toying with the injured bird. He is very cruel.", "Bill",
         ["Dan", "Bill", "the injured bird"], ["Dan", "the injured bird"]),
        ("The boy continued to whip the pony , and eventually the pony threw him over.", "pony",
         ["The boy", "the pony", "the pony"], ["The boy"]),
    ],
)  # fmt: skip
def test_wsc_negatives_of_hand_checked_sentences(text, referent, phrases, negatives):
    assert noun_phrases(text) == phrases
    assert wsc_negatives(text, referent) == negatives  # less what contains the referent or lies in it, each once


def test_the_reader_extracts_negatives_only_where_the_file_has_none(tmp_path):
    records = [
        {"text": "Dan had to stop Bill from toying with the injured bird.", "idx": 0, "label": True,
         "target": {"span1_text": "Bill", "span1_index": 4, "span2_text": "bird.", "span2_index": 10}},
        {"text": "Dan had to stop Bill from toying with the injured bird.", "idx": 1, "label": False,
         "target": {"span1_text": "Dan", "span1_index": 0, "span2_text": "bird.", "span2_index": 10}},
        {"text": "Tom met Bob and he smiled.", "idx": 2, "label": True, "candidates": [{"text": "a hat"}],
         "target": {"span1_text": "Tom", "span1_index": 0, "span2_text": "he", "span2_index": 4}},
    ]  # fmt: skip
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    train = {e.idx: e.meta.get("candidates") for e in superglue.read_examples("wsc", path, "train", wsc_negative=True)}
    assert train == {0: ["Dan", "the injured bird"], 2: ["a hat"]}  # training keeps the true referents only
    dev = {e.idx: e.meta.get("candidates") for e in superglue.read_examples("wsc", path, "dev", wsc_negative=True)}
    assert dev == {0: ["Dan", "the injured bird"], 1: ["Bill", "the injured bird"], 2: ["a hat"]}
    plain = {e.idx: e.meta.get("candidates") for e in superglue.read_examples("wsc", path, "dev")}
    assert plain == {0: None, 1: None, 2: ["a hat"]}

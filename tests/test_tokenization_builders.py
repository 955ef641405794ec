"""The generation and multiple-choice input builders: exact tensors on a hand-checked toy vocabulary, errors, and
their agreement with each other through a tiny GLM."""

from __future__ import annotations

import pytest
import torch

from torchglm import GLMConfig, GLMForConditionalGeneration, GLMForMultipleChoice
from torchglm.tokenization import GLMTokenizer

# ids: [PAD] 0 (also eos), [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4, a 5, b 6, c 7, x 8, y 9, z 10, ##s 11;
# appended: <|startofpiece|> 12, <|endofpiece|> 13, [gMASK] 14, [sMASK] 15.
TOY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c", "x", "y", "z", "##s"]
TEXTS = ["a [MASK] b [MASK]", "c [gMASK]"]  # -> [2 5 4 6 4 0] and [2 7 14 0] + 2 padding


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("toy") / "vocab.txt"
    path.write_text("\n".join(TOY_VOCAB) + "\n")
    return GLMTokenizer.from_bert_vocab(path)


def grid(*rows: str) -> torch.Tensor:
    """A 0/1 matrix written one row per string, e.g. grid("110", "111")."""
    return torch.tensor([[int(c) for c in row] for row in rows])


def test_toy_vocabulary(tok):
    assert (tok.sop_token_id, tok.eop_token_id, tok.gmask_token_id, tok.smask_token_id) == (12, 13, 14, 15)
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    assert batch["input_ids"].tolist() == [[2, 5, 4, 6, 4, 0], [2, 7, 14, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]


def test_generation_inputs(tok):
    """The released layout: <|startofpiece|> appended, generated tokens at the first blank's position."""
    out = tok.build_inputs_for_generation(tok(TEXTS, padding=True, return_tensors="pt"), max_gen_length=3)
    assert set(out) == {"input_ids", "position_ids", "generation_attention_mask"}
    assert out["input_ids"].tolist() == [[2, 5, 4, 6, 4, 0, 12], [2, 7, 14, 0, 0, 0, 12]]
    # padding (the second context's last two columns) sits at position (0, 0) and is never attended
    assert out["position_ids"].tolist() == [
        [[0, 1, 2, 3, 4, 5, 2, 2, 2], [0, 0, 0, 0, 0, 0, 1, 2, 3]],
        [[0, 1, 2, 3, 0, 0, 2, 2, 2], [0, 0, 0, 0, 0, 0, 1, 2, 3]],
    ]
    first = grid(*["111111000"] * 6, "111111100", "111111110", "111111111")
    second = grid(*["111100000"] * 6, "111100100", "111100110", "111100111")
    assert torch.equal(out["generation_attention_mask"], torch.stack([first, second])[:, None])


def test_generation_inputs_with_targets_for_several_blanks(tok):
    """Targets per blank become successive part-B blocks; labels sit on the positions that predict them."""
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    out = tok.build_inputs_for_generation(batch, max_gen_length=16, targets=[["x y", "z"], "x"])
    assert set(out) == {"input_ids", "position_ids", "attention_mask", "labels"}
    assert out["input_ids"].tolist() == [[2, 5, 4, 6, 4, 0, 12, 8, 9, 12, 10], [2, 7, 14, 0, 0, 0, 12, 8, 0, 0, 0]]
    assert out["labels"].tolist() == [[-100] * 6 + [8, 9, 13, 10, 13], [-100] * 6 + [8, 13, -100, -100, -100]]
    assert out["position_ids"].tolist() == [
        [[0, 1, 2, 3, 4, 5, 2, 2, 2, 4, 4], [0, 0, 0, 0, 0, 0, 1, 2, 3, 1, 2]],
        [[0, 1, 2, 3, 0, 0, 2, 2, 0, 0, 0], [0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0]],
    ]
    part_b = ["10000", "11000", "11100", "11110", "11111"]
    first = grid(*["11111100000"] * 6, *["111111" + r for r in part_b])
    # padding rows see part A only; padding keys are seen by nobody
    second = grid(*["11110000000"] * 6, "11110010000", "11110011000", *["11110000000"] * 3)
    assert torch.equal(out["attention_mask"], torch.stack([first, second])[:, None])


def test_generation_targets_cut_and_padded_to_max_gen_length(tok):
    batch = tok(["c [MASK]"], return_tensors="pt")  # [2 7 4 0]
    cut = tok.build_inputs_for_generation(batch, max_gen_length=2, targets="x y z")
    assert cut["input_ids"].tolist() == [[2, 7, 4, 0, 12, 8]] and cut["labels"].tolist() == [[-100] * 4 + [8, 9]]
    padded = tok.build_inputs_for_generation(batch, max_gen_length=4, targets="x", padding=True)
    assert padded["input_ids"].tolist() == [[2, 7, 4, 0, 12, 8, 0, 0]]
    assert padded["labels"].tolist() == [[-100] * 4 + [8, 13, -100, -100]]
    assert padded["position_ids"].tolist() == [[[0, 1, 2, 3, 2, 2, 0, 0], [0, 0, 0, 0, 1, 2, 0, 0]]]


def test_left_padding_keeps_positions(tok):
    left = tok(TEXTS, padding=True, padding_side="left", return_tensors="pt")
    assert left["input_ids"].tolist()[1] == [0, 0, 2, 7, 14, 0]
    out = tok.build_inputs_for_generation(left, max_gen_length=2)
    assert out["position_ids"][1].tolist() == [[0, 0, 0, 1, 2, 3, 2, 2], [0, 0, 0, 0, 0, 0, 1, 2]]


def test_multiple_choice_inputs(tok):
    """Each choice is its own block(s) seeing only the context; a list choice fills the blanks in order."""
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    out = tok.build_inputs_for_multiple_choice(batch, [["x", ["y z", "x"]], ["y z"]])
    assert out["input_ids"].tolist() == [[2, 5, 4, 6, 4, 0, 12, 12, 9, 12], [2, 7, 14, 0, 0, 0, 12, 9, 0, 0]]
    assert out["position_ids"].tolist() == [
        [[0, 1, 2, 3, 4, 5, 2, 2, 2, 4], [0, 0, 0, 0, 0, 0, 1, 1, 2, 1]],
        [[0, 1, 2, 3, 0, 0, 2, 2, 0, 0], [0, 0, 0, 0, 0, 0, 1, 2, 0, 0]],
    ]
    first = grid(*["1111110000"] * 6, "1111111000", "1111110100", "1111110110", "1111110111")
    second = grid(*["1111000000"] * 6, "1111001000", "1111001100", "1111000000", "1111000000")
    assert torch.equal(out["attention_mask"], torch.stack([first, second])[:, None])
    assert out["choice_ids"].tolist() == [[[8, -100, -100], [9, 10, 8]], [[9, 10, -100], [-100, -100, -100]]]
    assert out["choice_indices"].tolist() == [[[6, 0, 0], [7, 8, 9]], [[6, 7, 0], [0, 0, 0]]]
    lists = tok(["c [gMASK]"])  # unpadded python lists work too, and a flat choice list for a batch of one
    flat = tok.build_inputs_for_multiple_choice(lists, ["y z"], max_length=8)
    assert flat["input_ids"].tolist() == [[2, 7, 14, 0, 12, 9, 0, 0]]


def test_builder_errors(tok):
    batch = tok(["a b", "c [MASK]"], padding=True, return_tensors="pt")
    with pytest.raises(ValueError, match=r"sample 0 has no blank \(\[MASK\] \[sMASK\] \[gMASK\]\)"):
        tok.build_inputs_for_generation(batch)
    one = tok(["c [MASK]"], return_tensors="pt")
    with pytest.raises(ValueError, match="sample 0: 2 target texts for 1 blank"):
        tok.build_inputs_for_generation(one, targets=[["x", "y"]])
    with pytest.raises(ValueError, match="2 targets for a batch of 1"):
        tok.build_inputs_for_generation(one, targets=["x", "y"])
    with pytest.raises(ValueError, match="empty fill"):
        tok.build_inputs_for_multiple_choice(one, [["x", " "]])
    with pytest.raises(ValueError, match="over max_length=5"):
        tok.build_inputs_for_multiple_choice(one, [["x y"]], max_length=5)


# ---------------------------------------------------------------------------------------------------------------
# Through a tiny GLM: the builders' layouts must give each token the same view of its context.


@pytest.fixture(scope="module")
def models(tok):
    config = GLMConfig(
        vocab_size=tok.num_tokens,
        hidden_size=32,
        num_layers=2,
        num_attention_heads=4,
        max_sequence_length=64,
        embedding_dropout_prob=0.0,
        attention_dropout_prob=0.0,
        output_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    lm = GLMForConditionalGeneration(config).eval()
    scorer = GLMForMultipleChoice(config).eval()
    scorer.glm.load_state_dict(lm.glm.state_dict())
    return lm, scorer


def test_choices_do_not_see_each_other(tok, models):
    _, scorer = models
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    choices = [["x", ["y z", "x"], "a b c"], ["y z", "z"]]
    with torch.no_grad():
        together = scorer(**tok.build_inputs_for_multiple_choice(batch, choices)).logits
        for b, row in enumerate(choices):
            for c, choice in enumerate(row):
                alone = {k: v[b : b + 1] for k, v in batch.items()}
                score = scorer(**tok.build_inputs_for_multiple_choice(alone, [[choice]])).logits
                torch.testing.assert_close(together[b, c], score[0, 0], atol=1e-5, rtol=1e-5)


def test_teacher_forcing_matches_choice_scores_and_padding_side(tok, models):
    """The log-likelihood of a target under teacher forcing (without its <|endofpiece|>) is the choice score of
    the same text; left- and right-padded batches give the same logits on real tokens."""
    lm, scorer = models
    targets = ["x y", "y z x"]
    with torch.no_grad():
        for side in ("right", "left"):
            batch = tok(TEXTS, padding=True, padding_side=side, return_tensors="pt")
            forced = tok.build_inputs_for_generation(batch, max_gen_length=8, targets=targets)
            labels = forced.pop("labels")
            logp = lm(**forced).logits.log_softmax(-1)
            keep = (labels >= 0) & (labels != tok.eop_token_id)
            nll = (logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0] * keep).sum(-1)
            scores = scorer(**tok.build_inputs_for_multiple_choice(batch, [[t] for t in targets])).logits[:, 0]
            torch.testing.assert_close(nll, scores, atol=1e-5, rtol=1e-5)
            if side == "right":
                right = nll
        torch.testing.assert_close(nll, right, atol=1e-5, rtol=1e-5)

"""Seq2seq tasks on hand-made examples: each layout, the training block, padding, label smoothing, ROUGE,
decoding settings, batching, and the readers' errors."""

from __future__ import annotations

import json

import pytest
import torch

from torchglm.errors import InputError
from torchglm.generation import GenerationOptions, fill_ids
from torchglm.tasks import seq2seq
from torchglm.tasks.seq2seq import Seq2SeqExample, get_task

from .helpers import CLS, EOP, EOS, MASK, PAD, SMASK, SOP, WordTokenizer, tiny_model


def ids(tokenizer, text):
    return tokenizer.encode(text)


def test_summary_layout_cuts_the_source_from_the_right():
    tok = WordTokenizer()
    task = get_task("xsum", src_seq_length=8, tgt_seq_length=4)
    example = Seq2SeqExample("a b c d e f g h i", "x y z w v", "0")
    source = seq2seq.source_input(tok, example, task)
    assert source.part_a == [CLS, SMASK, *ids(tok, "Content:"), *ids(tok, "a b c d e")]
    assert source.mask_position == 1
    sample = seq2seq.training_sample(tok, example, task)
    (block,) = sample.blocks
    target = ids(tok, "x y z w")  # (" x y z w v" + eop) cut to 4: the eop is lost, as in the original
    assert block.input_ids == [SOP, *target[:3]] and block.labels == target
    assert block.position == [1] * 4 and block.block_position == [1, 2, 3, 4]
    short = seq2seq.training_sample(tok, Seq2SeqExample("a", "x y", "1"), task).blocks[0]
    assert short.labels == [*ids(tok, "x y"), EOP] and short.input_ids == [SOP, *ids(tok, "x y")]


def test_a_tokenizer_without_task_masks_uses_mask():
    tok = WordTokenizer(task_masks=False)
    source = seq2seq.source_input(tok, Seq2SeqExample("a b", "x", "0"), get_task("xsum"))
    assert source.part_a[:2] == [CLS, MASK]


def test_question_layout_keeps_the_answer_in_view():
    tok = WordTokenizer()
    task = get_task("squad_generation", src_seq_length=12)
    context = "w1 w2 w3 w4 w5 w6 w7 the answer w8 w9 w10 w11"
    example = Seq2SeqExample(context, "what is it ?", "0", answer="the answer")
    source = seq2seq.source_input(tok, example, task)
    answer = ids(tok, "Answer: the answer")
    room = 12 - len(answer) - 2  # [CLS] and the mask
    kept = ids(tok, context + " Question:")
    end = kept.index(ids(tok, "answer")[0]) + 1
    assert source.part_a == [CLS, *kept[end - room : end], SMASK, *answer]
    assert len(source.part_a) == 12 and source.mask_position == room + 1
    short = seq2seq.source_input(tok, Seq2SeqExample("w1 the answer", "q", "1", answer="the answer"), task)
    assert short.part_a == [CLS, *ids(tok, "w1 the answer Question:"), SMASK, *answer]


def test_pairs_layout_cuts_the_source_from_the_left():
    tok = WordTokenizer()
    task = get_task("custom", src_seq_length=6)
    source = seq2seq.source_input(tok, Seq2SeqExample("a b c d e f", "x", "0"), task)
    assert source.part_a == [CLS, *ids(tok, "d e f"), SMASK, EOS]
    assert source.mask_position == 4


def test_batches_pad_without_attending_padding():
    tok = WordTokenizer()
    task = get_task("xsum", src_seq_length=16, tgt_seq_length=6)
    samples = [
        seq2seq.training_sample(tok, Seq2SeqExample("a b c d e f g", "x y z", "0"), task),
        seq2seq.training_sample(tok, Seq2SeqExample("a", "x", "1"), task),
    ]
    batch = seq2seq.collate(samples, PAD)
    mask = batch["attention_mask"][:, 0]  # [B, L, L]: True = may attend
    short_a = len(samples[1].part_a)
    width = max(len(s.part_a) for s in samples)
    padding = [c for c in range(width) if c >= short_a]  # the short source's padding (B starts aligned)
    assert padding and not mask[1][:, padding].any()  # nobody sees it
    block_pad = (batch["input_ids"][1] == PAD) & (torch.arange(batch["input_ids"].shape[1]) >= width)
    assert not mask[1][:, block_pad].any()
    assert (batch["labels"][1][block_pad] == -100).all()
    # the labels are the target block's and nothing else
    assert batch["labels"][1][batch["labels"][1] != -100].tolist() == samples[1].blocks[0].labels


def test_label_smoothing_matches_the_formula():
    model = tiny_model().train()
    torch.manual_seed(0)
    tok = WordTokenizer()
    task = get_task("xsum", src_seq_length=10, tgt_seq_length=5)
    batch = seq2seq.collate(
        [
            seq2seq.training_sample(tok, Seq2SeqExample("a b c", "x y", "0"), task),
            seq2seq.training_sample(tok, Seq2SeqExample("a b c d e", "x y z w", "1"), task),
        ],
        PAD,
    )
    model.eval()
    sums = seq2seq.LabelSmoothedLoss(0.1)(model, batch)
    logits = model(batch["input_ids"], batch["position_ids"], attention_mask=batch["attention_mask"]).logits
    log_probs = logits.float().log_softmax(-1)
    expected, count = 0.0, 0
    for b in range(2):
        for column, label in enumerate(batch["labels"][b].tolist()):
            if label != -100:
                row = log_probs[b, column]
                expected += 0.9 * -float(row[label].detach()) + 0.1 * -float(row.mean().detach())
                count += 1
    assert int(sums.count) == count
    assert float(sums.total.detach()) == pytest.approx(expected, rel=1e-5)
    plain = seq2seq.LabelSmoothedLoss(0.0)(model, batch)
    labelled = [(b, c, t) for b in range(2) for c, t in enumerate(batch["labels"][b].tolist()) if t != -100]
    nll = -sum(float(log_probs[b, c, t].detach()) for b, c, t in labelled)
    assert float(plain.total.detach()) == pytest.approx(nll, rel=1e-5)


def test_rouge_equals_rouge_score_on_the_same_strings():
    from rouge_score import rouge_scorer

    hyps = ["The cat sat on the mat. It was happy.", "Police arrested two men in London on Friday."]
    refs = ["A cat was sitting on a mat. The cat was happy!", "Two men were arrested by police in London."]
    got = seq2seq.rouge(hyps, refs)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    newline = [("The cat sat on the mat.\nIt was happy.", "A cat was sitting on a mat.\nThe cat was happy!")]
    newline.append((hyps[1], refs[1]))
    for name in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        want = sum(scorer.score(r, h)[name].fmeasure for h, r in newline) / 2 * 100
        assert got[name] == pytest.approx(want)
    assert seq2seq.split_sentences("Hello there. How are you? Fine!") == "Hello there.\nHow are you?\nFine!"
    split = seq2seq.split_sentences("It costs 3.5 dollars. Mr. smith agreed.")
    assert split == "It costs 3.5 dollars.\nMr. smith agreed."


def test_remove_duplicate_sentences():
    text = "He was arrested in London today. Today he was arrested in London today. Rain fell."
    # the second sentence has 6 of its 7 distinct words in the first: over 0.7, dropped; not over 0.9, kept
    assert seq2seq.remove_duplicate_sentences(text, 0.7) == "He was arrested in London today.\nRain fell."
    assert seq2seq.remove_duplicate_sentences(text, 0.9).count("\n") == 2
    assert seq2seq.lead_sentence("First one here. Second one.") == "First one here."


def _inputs(tok, task, texts):
    return [seq2seq.source_input(tok, Seq2SeqExample(t, "", str(i)), task) for i, t in enumerate(texts)]


TEXTS = ["a b c d e f g h", "i j", "k l m n o", "p q r s t u v w x y z a b", "c d e"]


@pytest.mark.parametrize("scorer", ["glm", "transformers"])
@pytest.mark.parametrize("beams", [1, 3])
def test_batched_decoding_equals_one_by_one(scorer, beams):
    model, tok = tiny_model(), WordTokenizer()
    task = get_task("xsum", src_seq_length=24, tgt_seq_length=10)
    options = task.generation_options(num_beams=beams, beam_scorer=scorer, min_new_tokens=2)
    inputs = _inputs(tok, task, TEXTS)
    together = seq2seq.generate(model, tok, inputs, options, batch_size=5)
    for i, item in enumerate(inputs):
        [alone] = seq2seq.generate(model, tok, [item], options, batch_size=1)
        assert alone.token_ids == together[i].token_ids
        assert alone.score == pytest.approx(together[i].score, abs=1e-5)


@pytest.mark.parametrize("scorer", ["glm", "transformers"])
def test_this_path_is_the_generation_beam_search(scorer):
    model, tok = tiny_model(), WordTokenizer()
    task = get_task("xsum", src_seq_length=24, tgt_seq_length=8)
    options = task.generation_options(num_beams=3, beam_scorer=scorer)
    inputs = _inputs(tok, task, TEXTS)
    ours = seq2seq.generate(model, tok, inputs, options, batch_size=2)
    fills = fill_ids(
        model, [i.part_a for i in inputs], blank_ids=[SMASK], sop_id=SOP, stop_ids=[EOP], pad_id=PAD, options=options
    )
    for got, [blank] in zip(ours, fills, strict=True):
        assert got.token_ids == blank.token_ids and got.score == pytest.approx(blank.score, abs=1e-6)


def _trigrams(tokens):
    return [tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)]


def test_decoding_settings_are_applied():
    model, tok = tiny_model(), WordTokenizer()
    task = get_task("xsum", src_seq_length=24, tgt_seq_length=12)
    inputs = _inputs(tok, task, TEXTS)
    # a model that prefers eop everywhere: the minimum length still holds
    plain_logits = model.output_logits

    def eop_first(hidden):
        logits = plain_logits(hidden).clone()
        logits[..., EOP] += 20.0
        return logits

    model.output_logits = eop_first
    free = seq2seq.generate(model, tok, inputs, GenerationOptions(max_new_tokens=12, num_beams=2, beam_scorer="glm"))
    assert any(len(g.token_ids) < 4 for g in free)  # without a minimum some stop early
    bounded = seq2seq.generate(model, tok, inputs, task.generation_options(num_beams=2, min_new_tokens=4))
    assert all(len(g.token_ids) >= 4 for g in bounded)
    model = tiny_model(seed=3)
    for options in (task.generation_options(num_beams=1), task.generation_options(num_beams=4)):
        for g in seq2seq.generate(model, tok, inputs, options):
            assert len(g.token_ids) <= 12
            grams = _trigrams(g.token_ids)
            assert len(grams) == len(set(grams))  # no_repeat_ngram_size 3 (xsum's default)
    repeats = seq2seq.generate(model, tok, inputs, task.generation_options(num_beams=1, no_repeat_ngram_size=0))
    assert any(len(set(_trigrams(g.token_ids))) < len(_trigrams(g.token_ids)) for g in repeats)


def test_task_options_follow_the_original_defaults():
    xsum = get_task("xsum").generation_options()
    assert (xsum.num_beams, xsum.length_penalty, xsum.min_new_tokens, xsum.max_new_tokens) == (6, 1.0, 10, 60)
    cnn = get_task("cnn_dm").generation_options()
    assert (cnn.num_beams, cnn.length_penalty, cnn.min_new_tokens, cnn.max_new_tokens) == (5, 0.7, 55, 160)
    giga = get_task("gigaword").generation_options()
    assert (giga.num_beams, giga.length_penalty, giga.max_new_tokens, giga.no_repeat_ngram_size) == (5, 0.6, 32, 3)
    with pytest.raises(InputError, match="not one of"):
        get_task("xsumm")


# ---- readers ---------------------------------------------------------------------------------------------------


def test_line_files_and_their_errors(tmp_path):
    (tmp_path / "test.source").write_text("doc one\n  doc two  \n")
    (tmp_path / "test.target").write_text("sum one\nsum two\n")
    examples = seq2seq.read_split(tmp_path, get_task("cnn_dm"), "test")
    assert [(e.source, e.target) for e in examples] == [("doc one", "sum one"), ("doc two", "sum two")]
    (tmp_path / "test.target").write_text("sum one\n")
    with pytest.raises(InputError, match=r"test.source has 2 lines but .*test.target has 1"):
        seq2seq.read_split(tmp_path, get_task("cnn_dm"), "test")
    (tmp_path / "test.source").write_text("doc one\n \ndoc three\n")
    (tmp_path / "test.target").write_text("sum one\nsum two\nsum three\n")
    with pytest.raises(InputError, match=r"test.source, line 2: empty document"):
        seq2seq.read_split(tmp_path, get_task("cnn_dm"), "test")
    with pytest.raises(InputError, match="neither dev.jsonl nor dev.source"):
        seq2seq.read_split(tmp_path, get_task("cnn_dm"), "dev")
    (tmp_path / "docs.txt").write_text("one\ntwo\n")
    assert [e.source for e in seq2seq.read_split(tmp_path / "docs.txt", get_task("xsum"), need_target=False)] == [
        "one",
        "two",
    ]
    with pytest.raises(InputError, match="holds no references"):
        seq2seq.read_split(tmp_path / "docs.txt", get_task("xsum"))


def test_jsonl_fields_and_their_errors(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"document": "Line one.\n\n Line two. ", "summary": "S.", "id": "7"}) + "\n")
    [example] = seq2seq.read_split(path, get_task("xsum"))
    assert (example.source, example.target, example.uid) == ("Line one. Line two.", "S.", "7")
    path.write_text(json.dumps({"document": "x"}) + "\n" + json.dumps({"text": "y", "summary": "z"}) + "\n")
    with pytest.raises(InputError, match=r'x.jsonl, line 1: field "summary" is missing'):
        seq2seq.read_split(path, get_task("xsum"))
    with pytest.raises(InputError, match=r'x.jsonl, line 2: field "document" is missing'):
        seq2seq.read_split(path, get_task("xsum"), need_target=False)
    squad = tmp_path / "q.jsonl"
    squad.write_text(json.dumps({"context": "c", "question": "q?", "answers": {"text": ["a"]}}) + "\n")
    assert seq2seq.read_split(squad, get_task("squad_generation"))[0].answer == "a"

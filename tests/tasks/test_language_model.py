"""LAMBADA and perplexity: the original evaluation's inputs and numbers (../shared/golden/lm-eval.json), the
WikiText detokenizer, brute force on a tiny model, batching, and bad input named."""

from __future__ import annotations

import json
import math

import pytest
import torch

from torchglm.errors import InputError
from torchglm.layout import Sample, build_batch
from torchglm.tasks import (
    PerplexityText,
    PromptIds,
    evaluate_lambada,
    evaluate_perplexity,
    final_blank_inputs,
    read_lambada,
    read_perplexity_text,
    score_final_blank,
    wikitext_detokenize,
    window_inputs,
)
from torchglm.tasks.language_model import (
    detokenize,
    detokenizer_for,
    lambada_example,
    perplexity_windows,
    split_last_word,
)
from torchglm.tasks.scoring import score_windows

from .helpers import CLS, EOS, GMASK, SOP, WordTokenizer, full_pass_log_probs, tiny_model

REL = 1e-4


@pytest.fixture(scope="module")
def golden(shared_dir):
    from torchglm.fill_cli import load

    model, tokenizer = load(str(shared_dir / "golden" / "glm-ref-fill"))
    cases = json.loads((shared_dir / "golden" / "lm-eval.json").read_text())
    lines = (shared_dir / "data" / "lambada" / "lambada_test.jsonl").read_text().splitlines()
    return model, tokenizer, cases, [json.loads(line)["text"] for line in lines]


def wikitext_head(shared_dir, lines=40):
    raw = (shared_dir / "data" / "wikitext" / "wikitext-103" / "wiki.test.tokens").read_text(encoding="utf-8")
    return "".join(raw.splitlines(keepends=True)[:lines])


# ---- the original's numbers --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["bidirectional", "unidirectional"])
def test_lambada_inputs_equal_the_originals(golden, mode):
    model, tokenizer, cases, texts = golden
    ids = PromptIds.from_tokenizer(tokenizer)
    for case in cases[f"lambada_{mode}"]["examples"]:
        example = lambada_example(tokenizer, texts[case["index"]])
        part_a, block = final_blank_inputs(
            example.context_ids, example.answer_ids, ids, unidirectional=mode == "unidirectional"
        )
        batch = build_batch([Sample(part_a, [block])], pad_id=ids.pad)
        assert batch["input_ids"][0].tolist() == case["input_ids"]
        assert batch["position_ids"][0].tolist() == case["position_ids"]
        assert int(batch["sep"][0]) == case["sep"]
        labels = batch["labels"][0]
        assert (labels != -100).long().tolist() == case["loss_mask"]
        assert torch.where(labels == -100, 0, labels).tolist() == [
            t if m else 0 for t, m in zip(case["target_ids"], case["loss_mask"], strict=True)
        ]


@pytest.mark.parametrize("mode", ["bidirectional", "unidirectional"])
def test_lambada_nll_and_correctness_equal_the_originals(golden, mode):
    model, tokenizer, cases, texts = golden
    expected = cases[f"lambada_{mode}"]
    examples = [lambada_example(tokenizer, texts[c["index"]]) for c in expected["examples"]]
    result = evaluate_lambada(model, tokenizer, examples, seq_length=128, unidirectional=mode == "unidirectional",
                              batch_size=6)  # fmt: skip
    for row, case in zip(result.examples, expected["examples"], strict=True):
        assert row["nll"] == pytest.approx(case["answer_nll"], rel=REL)
        assert row["tokens"] == case["answer_tokens"] and row["correct"] == case["correct"]
    assert result.accuracy == pytest.approx(expected["accuracy"])


def test_wikitext_detokenized_text_equals_the_originals(golden, shared_dir):
    expected = golden[2]["wikitext_detokenized_text"]
    assert wikitext_detokenize(wikitext_head(shared_dir).rstrip("\n")) == expected


@pytest.mark.parametrize("mode", ["bidirectional", "unidirectional"])
def test_wikitext_windows_totals_and_perplexities_equal_the_originals(golden, shared_dir, mode, tmp_path):
    model, tokenizer, cases, _ = golden
    expected = cases[f"wikitext_{mode}"]
    path = tmp_path / "head.tokens"
    path.write_text(wikitext_head(shared_dir), encoding="utf-8")
    text = read_perplexity_text(path)
    result = evaluate_perplexity(
        model, tokenizer, text, seq_length=expected["seq_length"], overlap=expected["overlapping_eval"],
        unidirectional=mode == "unidirectional",
    )  # fmt: skip
    assert [w["tokens"] for w in result.windows] == [w["tokens"] for w in expected["windows"]]
    assert [w["nll"] for w in result.windows] == pytest.approx([w["nll"] for w in expected["windows"]], rel=REL)
    assert result.num_tokens == expected["num_tokenized_tokens"] and result.num_words == expected["num_original_tokens"]
    assert result.scored_tokens == expected["scored_tokens"]
    assert result.total_nll == pytest.approx(expected["total_nll"], rel=REL)
    assert result.ppl == pytest.approx(expected["ppl"], rel=1e-3)  # exp() of a 1e-5 relative difference in 31k
    assert result.adjusted_ppl == pytest.approx(expected["adjusted_ppl"], rel=1e-3)
    assert math.log(result.ppl) == pytest.approx(result.total_nll / (result.num_tokens - 1), rel=1e-12)


# ---- the detokenizer ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tokenized, text",
    [  # lines as WikiText writes them (a space before each line end), and the text they were made from
        (" \n = Robert Boulter = \n", "\n= Robert Boulter =\n"),
        (" \n = = Career = = \n", "\n== Career ==\n"),
        (" \n = = = 2000 – 2005 = = = \n", "\n=== 2000 – 2005 ===\n"),
        (
            " He had a guest @-@ starring role , and 1 @,@ 000 or 2 @.@ 5 . \n",
            " He had a guest-starring role, and 1,000 or 2.5.\n",
        ),
        (' He said " hello there " ( and left ) ; then : no ! \n', ' He said "hello there" (and left); then: no!\n'),
        (" John 's car and the players ' union . \n", " John's car and the players' union.\n"),
        (" It was 20 ° C ? Yes , [ 1 ] and { x } . \n", " It was 20°C? Yes, [1] and {x}.\n"),
    ],
)
def test_the_detokenizer_inverts_wikitext_tokenization_on_known_lines(tokenized, text):
    assert wikitext_detokenize(tokenized) == text


def test_the_ptb_detokenizer_and_the_choice_by_file_name(tmp_path):
    assert detokenize("it does n't cost $ 1 million , he said \n the firm 's # 1 rival", "ptb") == (
        "it doesn't cost $1 million , he said\nthe firm's #1 rival"
    )
    assert [detokenizer_for(n) for n in ["wiki.test.tokens", "wikitext-2.txt", "ptb.test.txt", "book.txt"]] == [
        "wikitext", "wikitext", "ptb", None,
    ]  # fmt: skip
    (tmp_path / "ptb.valid.txt").write_text(" a does n't b \n", encoding="utf-8")
    assert read_perplexity_text(tmp_path / "ptb.valid.txt").text == " a doesn't b\n"
    assert read_perplexity_text(tmp_path / "ptb.valid.txt", detokenize_as=None).text == " a does n't b \n"


def test_wikitext_words_are_counted_as_the_original_counts_them(tmp_path):
    (tmp_path / "a.tokens").write_text(" = T = \n \n Hello , world . \n", encoding="utf-8")
    (tmp_path / "a.txt").write_text(" = T = \n \n Hello , world . \n", encoding="utf-8")
    tokens_file = read_perplexity_text(tmp_path / "a.tokens")
    assert tokens_file.text == " = T =\n\nHello, world.\n"
    # split(" ") of the stripped raw text: = T = \n \n Hello , world .
    assert tokens_file.num_words == 9
    plain = read_perplexity_text(tmp_path / "a.txt")
    assert plain.text == " = T = \n \n Hello , world . \n" and plain.num_words == 7


# ---- brute force on a tiny model ---------------------------------------------------------------------------


@pytest.mark.parametrize("unidirectional", [False, True])
def test_lambada_equals_full_forward_passes_and_batching_changes_nothing(unidirectional):
    model, tokenizer = tiny_model(), WordTokenizer()
    texts = ["the cat sat on the mat", "a b c d e f g h i j k l m n o p", "one two", "x y z w v u t s r q p o n"]
    examples = [lambada_example(tokenizer, t) for t in texts]
    one = evaluate_lambada(model, tokenizer, examples, seq_length=64, unidirectional=unidirectional, batch_size=1)
    many = evaluate_lambada(model, tokenizer, examples, seq_length=64, unidirectional=unidirectional, batch_size=3)
    for text, a, b in zip(texts, one.examples, many.examples, strict=True):
        words = [tokenizer.encode(w)[0] for w in text.split()]
        context, answer = words[:-1], words[-1]
        head, rest = (context, []) if not unidirectional else (context[:1], context[1:])
        part_a = [CLS, *head, GMASK, EOS]
        ids = part_a + [SOP, *rest]
        text_pos = list(range(len(part_a))) + [len(part_a) - 2] * (1 + len(rest))
        block_pos = [0] * len(part_a) + list(range(1, 2 + len(rest)))
        [log_prob], greedy = full_pass_log_probs(model, ids, text_pos, block_pos, len(part_a), [(len(ids) - 1, answer)])
        assert a["nll"] == pytest.approx(-log_prob, abs=1e-5) and a["correct"] == greedy
        assert b["nll"] == pytest.approx(a["nll"], abs=1e-5) and b["correct"] == a["correct"]


@pytest.mark.parametrize("unidirectional", [False, True])
def test_perplexity_equals_the_sum_of_full_forward_passes_for_texts_shorter_and_longer_than_a_window(unidirectional):
    model, tokenizer = tiny_model(), WordTokenizer()
    ids = PromptIds.from_tokenizer(tokenizer)
    for n in (2, 9, 30, 61):
        tokens = [(7 * i) % 79 + 1 for i in range(n)]
        result = evaluate_perplexity(model, tokenizer, PerplexityText("unused", n), tokens=tokens, seq_length=16,
                                     overlap=5, unidirectional=unidirectional, batch_size=2)  # fmt: skip
        total = 0.0
        for span in perplexity_windows(n, 16, 5):
            part_a, block = window_inputs(tokens, span, ids, unidirectional=unidirectional)
            full = part_a + block.input_ids
            text_pos = list(range(len(part_a))) + block.position
            block_pos = [0] * len(part_a) + block.block_position
            targets = [(len(part_a) + k, t) for k, t in enumerate(block.labels) if t != -100]
            values, _ = full_pass_log_probs(model, full, text_pos, block_pos, len(part_a), targets)
            total -= sum(values)
        assert result.total_nll == pytest.approx(total, rel=1e-5)
        assert result.scored_tokens == n - 1
        assert result.ppl == pytest.approx(math.exp(total / (n - 1)), rel=1e-5)


# ---- bad input ---------------------------------------------------------------------------------------------


def test_bad_lambada_files_are_named_with_line_and_field(tmp_path):
    tokenizer = WordTokenizer()
    path = tmp_path / "lambada.jsonl"
    for content, message in [
        ('{"text": "a b c"}\n{"text": "   "}\n', r"lambada.jsonl, line 2: field \"text\": the text has no last word"),
        ('{"text": "a b c"}\n{"passage": "x"}\n', r'line 2: field "text" is missing'),
        ('{"text": "a b c"}\n\n{"text": 5}\n', r'line 3: field "text" is not a string'),
        ('{"text": "a b c"\n', r"line 1: not JSON"),
        ("", r"the file is empty"),
    ]:
        path.write_text(content, encoding="utf-8")
        with pytest.raises(InputError, match=message):
            read_lambada(path, tokenizer)
    path.write_bytes(b'{"text": "ok"}\n{"text": "\xff\xfe"}\n')
    with pytest.raises(InputError, match=r"line 2: not UTF-8"):
        read_lambada(path, tokenizer)
    with pytest.raises(InputError, match=r"cannot read"):
        read_lambada(tmp_path / "missing.jsonl", tokenizer)
    with pytest.raises(ValueError, match="no last word"):
        split_last_word(" \n ")


def test_limits_are_named():
    model, tokenizer = tiny_model(max_sequence_length=64), WordTokenizer()
    example = lambada_example(tokenizer, "a b c")
    with pytest.raises(InputError, match=r"--seq-length 65 is above the model's positions \(max_sequence_length=64\)"):
        evaluate_lambada(model, tokenizer, [example], seq_length=65)
    with pytest.raises(InputError, match=r"--overlap 63: must be between 1 and seq_length - 2 = 62"):
        evaluate_perplexity(model, tokenizer, "a b c d", overlap=63)
    with pytest.raises(InputError, match=r"1 token\(s\); perplexity needs at least 2"):
        evaluate_perplexity(model, tokenizer, "a", overlap=8)
    with pytest.raises(InputError, match="--batch-size 0"):
        evaluate_lambada(model, tokenizer, [example], batch_size=0)


def test_empty_and_non_utf8_text_files_are_named(tmp_path):
    (tmp_path / "empty.txt").write_text(" \n\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"empty.txt: the file is empty"):
        read_perplexity_text(tmp_path / "empty.txt")
    (tmp_path / "bad.txt").write_bytes(b"fine\nfine\nbad \xc3\x28 here\n")
    with pytest.raises(InputError, match=r"bad.txt, line 3: not UTF-8"):
        read_perplexity_text(tmp_path / "bad.txt")


def test_the_causal_layout_reaches_lambada_and_perplexity():
    """``causal=True`` is passed down to the causal scoring layout (itself checked against a causal forward pass in
    test_scoring.py): the same numbers as scoring directly, and the layout named in the results."""
    model, tokenizer = tiny_model(), WordTokenizer()
    ids = PromptIds.from_tokenizer(tokenizer)
    examples = [lambada_example(tokenizer, t) for t in ["the cat sat on the mat", "one two three four"]]
    result = evaluate_lambada(model, tokenizer, examples, seq_length=64, causal=True)
    direct = score_final_blank(model, ids, [e.context_ids for e in examples], [[e.answer_ids] for e in examples],
                               seq_length=64, causal=True)  # fmt: skip
    assert [r["nll"] for r in result.examples] == pytest.approx([-s.log_prob for [s] in direct], abs=1e-6)
    assert result.settings["layout"] == "causal" and "(causal)" in result.summary()
    assert result.settings["mask_id"] is None  # no blank token is read in this layout
    tokens = [(7 * i) % 79 + 1 for i in range(30)]
    ppl = evaluate_perplexity(model, tokenizer, PerplexityText("unused", 30), tokens=tokens, seq_length=16,
                              overlap=5, causal=True)  # fmt: skip
    spans = perplexity_windows(30, 16, 5)
    expected = -sum(s.log_prob for s in score_windows(model, ids, tokens, spans, causal=True))
    assert ppl.total_nll == pytest.approx(expected, rel=1e-6) and ppl.scored_tokens == 29
    assert ppl.settings["mask_id"] is None
    with pytest.raises(InputError, match="choose one layout"):
        evaluate_lambada(model, tokenizer, examples, unidirectional=True, causal=True)

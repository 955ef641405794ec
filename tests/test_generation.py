"""Blank filling and generation: the original's fills, the cached search against full forward passes, beam
search against brute force, batching, sampling, processors, transformers' generate and the model-card usages."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from torchglm import GLMConfig, GLMForConditionalGeneration, GLMForMultipleChoice
from torchglm.generation import GenerationOptions, fill, fill_ids

VOCAB, SOP, EOP, EOS, PAD = 97, 90, 91, 0, 0
BLANKS = [92, 93, 94]  # [MASK], [sMASK], [gMASK] of the tiny vocabulary
IDS = dict(blank_ids=BLANKS, sop_id=SOP, stop_ids=[EOP, EOS], pad_id=PAD)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads, and on a busy machine thread hand-offs cost more than the maths."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(vocab_size=VOCAB, max_sequence_length=64, seed=0, **overrides):
    torch.manual_seed(seed)
    config = GLMConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_layers=2,
        num_attention_heads=4,
        max_sequence_length=max_sequence_length,
        embedding_dropout_prob=0.0,
        attention_dropout_prob=0.0,
        output_dropout_prob=0.0,
        **overrides,
    )
    return GLMForConditionalGeneration(config).eval()


def random_contexts(seed=1):
    """Contexts of different lengths with one to three blanks, [CLS]-like first token and eos-like last."""
    g = torch.Generator().manual_seed(seed)
    contexts = []
    for length, blanks in [(12, [3, 7]), (5, [2]), (17, [1, 9, 15]), (9, [8])]:
        ids = torch.randint(1, 80, (length,), generator=g).tolist()
        for k, i in enumerate(blanks):
            ids[i] = BLANKS[k % 3]
        contexts.append(ids)
    return contexts


@torch.no_grad()
def next_token_log_probs(model, context, blocks, blank_positions):
    """Full forward pass, no cache: context (bidirectional, sep = its length) then the blocks one after another,
    each at (its blank position, 1..n). Returns the log-probabilities after the last token."""
    ids, positions, block_positions = list(context), list(range(len(context))), [0] * len(context)
    for block, position in zip(blocks, blank_positions, strict=True):
        ids += block
        positions += [position] * len(block)
        block_positions += list(range(1, len(block) + 1))
    position_ids = torch.tensor([positions, block_positions])[None]
    logits = model(torch.tensor([ids]), position_ids, len(context), use_cache=False).logits
    return logits[0, -1].log_softmax(-1)


def reference_greedy(model, context, max_new_tokens, stop_ids=(EOP, EOS)):
    """Fill every blank by argmax over full forward passes; a later blank sees the earlier blocks (sop + fill,
    minus a fill's last token when it was cut at the limit)."""
    positions = [i for i, t in enumerate(context) if t in BLANKS]
    blocks, fills = [], []
    for index in range(len(positions)):
        block, fill_tokens = [SOP], []
        while True:
            token = int(next_token_log_probs(model, context, [*blocks, block], positions[: index + 1]).argmax())
            if token in stop_ids:
                break
            fill_tokens.append(token)
            if len(fill_tokens) == max_new_tokens:
                break
            block.append(token)
        blocks.append(block)
        fills.append(fill_tokens)
    return fills


def token_lists(results):
    return [[blank.token_ids for blank in blanks] for blanks in results]


# ---------------------------------------------------------------------------------------------------------------
# The original's fills (../shared/golden/glm-ref-fill)


@pytest.fixture(scope="module")
def golden(shared_dir):
    folder = shared_dir / "golden" / "glm-ref-fill"
    cases = json.loads((folder / "fill_cases.json").read_text())
    model = GLMForConditionalGeneration.from_pretrained(folder).eval()
    return folder, model, cases


def golden_ids(tokenizer_free=True):
    # The BERT-vocabulary command ids of the golden model: [MASK] 103, sop 30522, eop 30523, [gMASK] 30524,
    # [sMASK] 30525, eos = pad = 0.
    return dict(blank_ids=[103, 30525, 30524], sop_id=30522, stop_ids=[30523, 0], pad_id=0)


def test_golden_fills_by_ids_one_by_one_and_batched(golden):
    _, model, cases = golden
    limit = cases["max_new_tokens_per_blank"]
    contexts = [case["context_ids"] for case in cases["cases"]]
    expected = [case["fills"] for case in cases["cases"]]
    for context, fills in zip(contexts, expected, strict=True):
        result = fill_ids(model, [context], max_new_tokens=limit, **golden_ids())[0]
        assert [blank.token_ids for blank in result] == fills
    batched = fill_ids(model, contexts, max_new_tokens=limit, **golden_ids())
    assert token_lists(batched) == expected
    for result, case in zip(batched, cases["cases"], strict=True):
        assert [blank.position for blank in result] == case["mask_positions"]


def test_golden_fills_by_text(golden):
    folder, model, cases = golden
    tokenization = pytest.importorskip("torchglm.tokenization")
    tokenizer = tokenization.GLMTokenizer.from_pretrained(folder)
    texts = [case["text"] for case in cases["cases"]]
    results = fill(model, tokenizer, texts, max_new_tokens=cases["max_new_tokens_per_blank"])
    for result, case in zip(results, cases["cases"], strict=True):
        assert result.context_ids == case["context_ids"]
        assert [blank.token_ids for blank in result.blanks] == case["fills"]
        for blank in result.blanks:
            assert result.filled[blank.start : blank.end] == blank.text == tokenizer.decode(blank.token_ids).strip()
    first = results[1]  # "Tsinghua University is located in [MASK]."
    assert first.filled == f"Tsinghua University is located in {first.blanks[0].text}."
    continued = results[3]  # "Once upon a time": no blank, continued
    assert continued.filled == f"Once upon a time {continued.blanks[0].text}"
    assert continued.blanks[0].mask == "[gMASK]"


# ---------------------------------------------------------------------------------------------------------------
# Cached search against full forward passes, batching, beams


def test_greedy_equals_argmax_of_full_forward_passes_for_every_blank():
    model = tiny_model()
    for context in random_contexts():
        result = fill_ids(model, [context], max_new_tokens=6, **IDS)[0]
        assert [blank.token_ids for blank in result] == reference_greedy(model, context, 6)
        assert [blank.position for blank in result] == [i for i, t in enumerate(context) if t in BLANKS]


def test_later_blanks_see_earlier_fills():
    """The second blank's first token comes from a pass that includes the first block; without it, it differs."""
    model = tiny_model()
    context = random_contexts()[0]
    first, second = fill_ids(model, [context], max_new_tokens=5, **IDS)[0]
    positions = [i for i, t in enumerate(context) if t in BLANKS]
    earlier = [SOP, *first.token_ids[: len(first.token_ids) - (not first.stopped)]]
    seen = next_token_log_probs(model, context, [earlier, [SOP]], positions)
    unseen = next_token_log_probs(model, context, [[SOP]], positions[1:])
    assert not torch.allclose(seen, unseen, atol=1e-3)
    first_token = int(seen.argmax())
    assert first_token == second.token_ids[0] if second.token_ids else first_token in (EOP, EOS)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_batched_equals_one_by_one(num_beams):
    model = tiny_model()
    contexts = random_contexts()
    batched = fill_ids(model, contexts, max_new_tokens=5, num_beams=num_beams, **IDS)
    single = [fill_ids(model, [c], max_new_tokens=5, num_beams=num_beams, **IDS)[0] for c in contexts]
    assert token_lists(batched) == token_lists(single)
    for a, b in zip(batched, single, strict=True):
        assert [x.score for x in a] == pytest.approx([x.score for x in b], abs=1e-4)


def test_beam_search_with_one_beam_equals_greedy():
    model = tiny_model()
    contexts = random_contexts()
    greedy = fill_ids(model, contexts, max_new_tokens=6, **IDS)
    beam = fill_ids(model, contexts, max_new_tokens=6, num_beams=1, length_penalty=0.0, **IDS)
    assert token_lists(beam) == token_lists(greedy)
    # length_penalty=0: a beam's score is its summed log-probability, as greedy reports
    assert [b.score for r in beam for b in r] == pytest.approx([b.score for r in greedy for b in r], abs=1e-4)


def brute_force(model, context, position, sop, limit, stop, length_penalty):
    """Every fill of the blank at ``position`` up to ``limit`` tokens, scored by full forward passes, best first."""
    vocab, scored = model.config.vocab_size, []
    for n in range(limit):
        for prefix in itertools.product([t for t in range(vocab) if t != stop], repeat=n):
            log_probs = next_token_log_probs(model, context, [[sop, *prefix]], [position])
            base = sum(
                float(next_token_log_probs(model, context, [[sop, *prefix[:i]]], [position])[prefix[i]])
                for i in range(n)
            )
            for token in range(vocab):
                if token != stop and n + 1 < limit:
                    continue  # still running: scored when it ends
                score = (base + float(log_probs[token])) / (n + 1) ** length_penalty
                scored.append((score, list(prefix) if token == stop else [*prefix, token]))
    return sorted(scored, key=lambda item: -item[0])


@pytest.mark.parametrize("length_penalty, early_stopping", [(1.0, "never"), (0.0, False), (2.0, "never")])
def test_beam_search_scores_equal_brute_force_on_a_tiny_vocabulary(length_penalty, early_stopping):
    vocab, stop = 6, 5
    model = tiny_model(vocab_size=vocab, seed=3)
    context = [0, 1, 3, 2, 1]  # 3 is the blank
    ids = dict(blank_ids=[3], sop_id=4, stop_ids=[stop], pad_id=0)
    expected = brute_force(model, context, 2, 4, 3, stop, length_penalty)
    # 36 beams hold every running prefix (5 ** 2 < 36): the search is exhaustive, its best fill the best of all
    exhaustive = fill_ids(
        model, [context], max_new_tokens=3, num_beams=36, length_penalty=length_penalty,
        early_stopping=early_stopping, **ids,
    )[0][0]  # fmt: skip
    assert exhaustive.token_ids == expected[0][1]
    assert exhaustive.score == pytest.approx(expected[0][0], abs=1e-5)
    # a narrow beam returns a real fill with its exact score, never better than the best
    narrow = fill_ids(model, [context], max_new_tokens=3, num_beams=2, length_penalty=length_penalty, **ids)[0][0]
    scores = {tuple(tokens): score for score, tokens in expected}
    assert narrow.score == pytest.approx(scores[tuple(narrow.token_ids)], abs=1e-5)
    assert narrow.score <= expected[0][0] + 1e-6


def test_beam_search_finds_at_least_greedys_score_and_respects_no_repeat_ngram():
    model = tiny_model()
    contexts = random_contexts()
    greedy = fill_ids(model, contexts, max_new_tokens=6, length_penalty=0.0, num_beams=1, **IDS)
    beam = fill_ids(model, contexts, max_new_tokens=6, length_penalty=0.0, num_beams=4, early_stopping="never", **IDS)
    for g, b in zip(greedy, beam, strict=True):
        assert b[0].score >= g[0].score - 1e-5  # the first blank starts from the same cache
    no_repeat = fill_ids(model, contexts, max_new_tokens=8, num_beams=3, no_repeat_ngram_size=1, **IDS)
    for blanks in no_repeat:
        for blank in blanks:
            assert len(set(blank.token_ids)) == len(blank.token_ids)


# ---------------------------------------------------------------------------------------------------------------
# Sampling and processors


def test_sampling_is_reproducible_with_a_seed_and_top_p_works_for_batches():
    model = tiny_model()
    contexts = random_contexts()
    options = dict(do_sample=True, top_p=0.8, top_k=20, temperature=1.3, max_new_tokens=6, **IDS)
    first = fill_ids(model, contexts, seed=7, **options)
    assert token_lists(fill_ids(model, contexts, seed=7, **options)) == token_lists(first)
    others = [token_lists(fill_ids(model, contexts, seed=s, **options)) for s in range(8, 12)]
    assert any(o != token_lists(first) for o in others)
    # top_k=1 leaves one token to sample: greedy
    assert token_lists(fill_ids(model, contexts, do_sample=True, top_k=1, seed=0, max_new_tokens=6, **IDS)) == (
        token_lists(fill_ids(model, contexts, max_new_tokens=6, **IDS))
    )


def test_processors_min_length_banned_ids_and_streaming():
    model = tiny_model()
    contexts = random_contexts()
    for blanks in fill_ids(model, contexts, min_new_tokens=4, max_new_tokens=6, **IDS):
        assert all(len(blank.token_ids) >= 4 for blank in blanks)
    greedy = fill_ids(model, contexts, max_new_tokens=6, **IDS)
    banned = sorted({t for blanks in greedy for blank in blanks for t in blank.token_ids})
    for blanks in fill_ids(model, contexts, max_new_tokens=6, banned_ids=banned, repetition_penalty=1.5, **IDS):
        assert not {t for blank in blanks for t in blank.token_ids} & set(banned)
    seen = []
    streamed = fill_ids(model, contexts, max_new_tokens=6, on_token=lambda *event: seen.append(event), **IDS)
    for sample, blanks in enumerate(streamed):
        for k, blank in enumerate(blanks):
            assert [t for s, b, t in seen if (s, b) == (sample, k)] == blank.token_ids


# ---------------------------------------------------------------------------------------------------------------
# Bad input


def test_bad_options_and_contexts_are_named():
    model = tiny_model()
    context = random_contexts()[0]
    with pytest.raises(ValueError, match="num_beams must be an integer >= 1"):
        fill_ids(model, [context], num_beams=0, **IDS)
    with pytest.raises(ValueError, match="top_p must be in"):
        GenerationOptions(top_p=0.0)
    with pytest.raises(ValueError, match="sampling with num_beams > 1"):
        GenerationOptions(do_sample=True, num_beams=2)
    with pytest.raises(ValueError, match="min_new_tokens"):
        GenerationOptions(min_new_tokens=5, max_new_tokens=4)
    with pytest.raises(TypeError, match=r"unknown generation option\(s\) \['beams'\]"):
        fill_ids(model, [context], beams=2, **IDS)
    with pytest.raises(ValueError, match="context 1 is empty"):
        fill_ids(model, [context, []], **IDS)
    with pytest.raises(ValueError, match="context 0 has no blank"):
        fill_ids(model, [[5, 6, 7]], **IDS)
    with pytest.raises(ValueError, match="context 0 has 65 tokens"):
        fill_ids(model, [[92] * 65], **IDS)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        fill_ids(model, [[92, 97]], **IDS)
    with pytest.raises(ValueError, match="max_new_tokens=65"):
        fill_ids(model, [context], max_new_tokens=65, **IDS)


# ---------------------------------------------------------------------------------------------------------------
# Text API and the released model-card usages (need the tokenizers)


@pytest.fixture(scope="module")
def tokenizers(shared_dir):
    tokenization = pytest.importorskip("torchglm.tokenization")
    vocab = shared_dir / "data" / "vocab"
    return {
        "bert": (tokenization.GLMTokenizer.from_bert_vocab(vocab / "bert-uncased-vocab.txt"), 30592),
        "gpt2": (
            tokenization.GLMTokenizer.from_gpt2_vocab(vocab / "gpt2-vocab.json", vocab / "gpt2-merges.txt"),
            50304,
        ),
    }


def test_bad_texts_are_named(golden):
    folder, model, _ = golden
    tokenizer = pytest.importorskip("torchglm.tokenization").GLMTokenizer.from_pretrained(folder)
    with pytest.raises(ValueError, match="text 1 is empty"):
        fill(model, tokenizer, ["a [MASK] b", "  "])
    for spelling in ("[MASK2]", "[mask]", "[GMASK]"):
        with pytest.raises(ValueError, match=rf"text 0: unknown blank '\{spelling[:-1]}\]'"):
            fill(model, tokenizer, [f"a {spelling} b"])
    long_text = "the cat sat on the mat " * 30 + "[MASK]."
    with pytest.raises(ValueError, match=r"text 0 takes 184 tokens .* stop at 128 \(truncate=True"):
        fill(model, tokenizer, long_text)
    truncated = fill(model, tokenizer, long_text, truncate=True, max_new_tokens=3)
    assert len(truncated.context_ids) == 128 and truncated.context_ids[0] == tokenizer.cls_token_id
    assert truncated.filled.startswith("the cat sat")  # the text keeps every word; only the model saw fewer
    with pytest.raises(ValueError, match="would drop a blank"):
        fill(model, tokenizer, "[MASK] " + long_text, truncate=True)
    with pytest.raises(ValueError, match="num_beams must be an integer >= 1"):
        fill(model, tokenizer, "a [MASK] b", num_beams=0)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_model_card_usages(tokenizers, family):
    tokenizer, vocab_size = tokenizers[family]
    model = tiny_model(vocab_size=vocab_size, max_sequence_length=512)
    texts = ["Tsinghua University is located in [MASK].", "One minus one equals zero, is it correct? Answer: [MASK]"]

    # teacher forcing: loss and logits
    inputs = tokenizer(texts, return_tensors="pt", padding=True)
    inputs = tokenizer.build_inputs_for_generation(inputs, targets=["Beijing", "No"], max_gen_length=8, padding=False)
    out = model(**inputs)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.logits.shape == (*inputs["input_ids"].shape, vocab_size)

    # generate through transformers' GenerationMixin, as the card does; it agrees with fill_ids' first blank
    inputs = tokenizer(texts, return_tensors="pt", padding=True)
    length = inputs["input_ids"].shape[1]
    inputs = tokenizer.build_inputs_for_generation(inputs, max_gen_length=512)
    outputs = model.generate(**inputs, max_length=512, eos_token_id=tokenizer.eop_token_id)
    assert outputs.shape[0] == 2 and outputs.shape[1] <= 512
    assert isinstance(tokenizer.decode(outputs[0].tolist()), str)
    padded = tokenizer(texts, return_tensors="pt", padding=True)
    contexts = [
        ids[mask.bool()].tolist() for ids, mask in zip(padded["input_ids"], padded["attention_mask"], strict=True)
    ]
    ours = fill_ids(
        model, contexts, blank_ids=tokenizer.mask_token_ids, sop_id=tokenizer.sop_token_id,
        stop_ids=[tokenizer.eop_token_id], pad_id=tokenizer.pad_token_id, max_new_tokens=512 - length - 1,
    )  # fmt: skip
    for row, blanks in zip(outputs[:, length + 1 :].tolist(), ours, strict=True):
        generated = row[: row.index(tokenizer.eop_token_id)] if tokenizer.eop_token_id in row else row
        assert generated == blanks[0].token_ids

    # multiple choice: one score per choice
    mc = GLMForMultipleChoice(model.config).eval()
    mc.load_state_dict(model.state_dict())
    inputs = tokenizer(texts, return_tensors="pt", padding=True)
    inputs = tokenizer.build_inputs_for_multiple_choice(inputs, [["Beijing", "Shanghai"], ["Yes", "No"]])
    with torch.no_grad():
        assert mc(**inputs).logits.shape == (2, 2)


def test_generate_beam_search_through_generation_mixin(tokenizers):
    tokenizer, vocab_size = tokenizers["bert"]
    model = tiny_model(vocab_size=vocab_size, max_sequence_length=64)
    inputs = tokenizer(["Tsinghua University is located in [MASK]."], return_tensors="pt")
    inputs = tokenizer.build_inputs_for_generation(inputs, max_gen_length=8)
    out = model.generate(**inputs, max_new_tokens=6, num_beams=3, eos_token_id=tokenizer.eop_token_id)
    assert out.shape[0] == 1
    with pytest.raises(ValueError, match="past the 19 that build_inputs_for_generation planned"):
        model.generate(**inputs, max_new_tokens=12, eos_token_id=-1, suppress_tokens=[tokenizer.eop_token_id])


def test_text_fill_with_gpt2_vocabulary_and_beams(tokenizers):
    tokenizer, vocab_size = tokenizers["gpt2"]
    model = tiny_model(vocab_size=vocab_size, max_sequence_length=64)
    texts = ["Tsinghua University is located in [MASK].", "The [MASK] sat on the [sMASK]", "Once upon a time"]
    results = fill(model, tokenizer, texts, max_new_tokens=4, num_beams=2, batch_size=2)
    for text, result in zip(texts, results, strict=True):
        assert result.text == text
        assert all(t < len(tokenizer) for blank in result.blanks for t in blank.token_ids)
        for blank in result.blanks:
            assert result.filled[blank.start : blank.end] == blank.text
    assert results[0].filled.startswith("Tsinghua University is located in ")
    assert results[0].filled.endswith(".")

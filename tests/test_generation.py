"""Blank filling and generation: the original's fills, the cached search against full forward passes, beam
search against brute force, batching, sampling, processors, transformers' generate and the model-card usages."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import torch.nn.functional as F

from torchglm import GLMConfig, GLMForConditionalGeneration, GLMForMultipleChoice
from torchglm.generation import GenerationOptions, fill, fill_ids, score
from torchglm.layout import Block, Sample, build_batch

VOCAB, SOP, EOP, EOS, PAD = 97, 90, 91, 0, 0
BLANKS = [92, 93, 94]  # [MASK], [sMASK], [gMASK] of the tiny vocabulary
IDS = dict(blank_ids=BLANKS, sop_id=SOP, stop_ids=[EOP, EOS], pad_id=PAD)


pytestmark = pytest.mark.usefixtures("one_thread")


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


@torch.no_grad()
def block_logits(model, context, input_ids, positions, block_positions):
    """Full forward pass, no cache: a context (bidirectional, sep = its length, positions (i, 0)) and one block
    written out token by token (its text and block positions given by hand). Returns the block's logits [n, V]."""
    n = len(context)
    ids = torch.tensor([[*context, *input_ids]])
    position_ids = torch.tensor([[*range(n), *positions], [0] * n + list(block_positions)])[None]
    return model(ids, position_ids, n, use_cache=False).logits[0, n:]


def reference_greedy(model, context, max_new_tokens, stop_ids=(EOP, EOS), min_new_tokens=0):
    """Fill every blank by argmax over full forward passes; a later blank sees the earlier blocks (sop + fill,
    minus a fill's last token when it was cut at the limit). The stop ids are banned for the first
    ``min_new_tokens`` tokens of each fill."""
    positions = [i for i, t in enumerate(context) if t in BLANKS]
    blocks, fills = [], []
    for index in range(len(positions)):
        block, fill_tokens = [SOP], []
        while True:
            log_probs = next_token_log_probs(model, context, [*blocks, block], positions[: index + 1])
            if len(fill_tokens) < min_new_tokens:
                log_probs[list(stop_ids)] = float("-inf")
            token = int(log_probs.argmax())
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
    """Every fill of the blank at ``position`` up to ``limit`` tokens, scored by full forward passes, best first:
    (score, tokens, ended at the stop token)."""
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
                scored.append((score, list(prefix) if token == stop else [*prefix, token], token == stop))
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
    scores = {tuple(tokens): score for score, tokens, _ in expected}
    assert narrow.score == pytest.approx(scores[tuple(narrow.token_ids)], abs=1e-5)
    assert narrow.score <= expected[0][0] + 1e-6


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_num_return_sequences_are_the_best_fills_of_brute_force_in_order(length_penalty):
    vocab, stop = 6, 5
    model = tiny_model(vocab_size=vocab, seed=3)
    contexts, blanks = [[0, 1, 3, 2, 1], [0, 3, 1, 2, 2, 1, 4]], [2, 1]  # 3 is the blank; two texts in one call
    ids = dict(blank_ids=[3], sop_id=4, stop_ids=[stop], pad_id=0)
    found = fill_ids(
        model, contexts, max_new_tokens=3, num_beams=36, num_return_sequences=4, length_penalty=length_penalty,
        early_stopping="never", **ids,
    )  # fmt: skip
    for context, blank, (result,) in zip(contexts, blanks, found, strict=True):
        expected = brute_force(model, context, blank, 4, 3, stop, length_penalty)[:4]
        assert [h.token_ids for h in result.hypotheses] == [tokens for _, tokens, _ in expected]
        assert [h.score for h in result.hypotheses] == pytest.approx([score for score, _, _ in expected], abs=1e-5)
        assert [h.stopped for h in result.hypotheses] == [stopped for _, _, stopped in expected]
        best = result.hypotheses[0]
        assert (result.token_ids, result.score, result.stopped) == (best.token_ids, best.score, best.stopped)
    with pytest.raises(ValueError, match=r"num_return_sequences \(5\) is over num_beams \(4\)"):
        fill_ids(model, contexts, num_beams=4, num_return_sequences=5, **ids)


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
# Scoring continuations against full forward passes


def reference_scores(model, context, input_ids, positions, block_positions, labels):
    """(log p(label) at each labelled column, every label is the argmax) from one full forward pass of the context
    and this block alone."""
    log_probs = block_logits(model, context, input_ids, positions, block_positions).log_softmax(-1)
    rows = [i for i, t in enumerate(labels) if t != -100]
    wanted = torch.tensor([labels[i] for i in rows])
    return log_probs[rows, wanted].tolist(), bool((log_probs[rows].argmax(-1) == wanted).all())


def scoring_cases(model):
    """Three contexts of different lengths (12, 5, 17 tokens; blanks at [3, 7], [2], [1, 9, 15]) and 2, 2 and 3
    continuations: each as a Block and written out by hand as (input_ids, positions, block_positions, labels)."""
    g = torch.Generator().manual_seed(5)

    def tokens(n):
        return torch.randint(1, 80, (n,), generator=g).tolist()

    contexts = random_contexts()[:3]
    a, d, f, x, p, gh, y = tokens(3), tokens(2), tokens(1), tokens(1), tokens(5), tokens(2), tokens(1)
    greedy = []  # the model's own argmax continuation at context 1's blank: its is_greedy holds
    for _ in range(4):
        greedy.append(int(next_token_log_probs(model, contexts[1], [[SOP, *greedy]], [2]).argmax()))
    partial = [-100, p[1], -100, p[3], p[4]]  # labels on some tokens only
    cases = [
        [
            (Block.span(SOP, a, position=3), ([SOP, a[0], a[1]], [3, 3, 3], [1, 2, 3], a)),
            (  # two blanks' spans as one block: the second sees the first
                Block.join([Block.span(SOP, d, position=3), Block.span(SOP, f, position=7)]),
                ([SOP, d[0], SOP], [3, 3, 7], [1, 2, 1], [*d, *f]),
            ),
        ],
        [
            (Block.span(SOP, greedy, position=2), ([SOP, *greedy[:3]], [2] * 4, [1, 2, 3, 4], greedy)),
            (Block.span(SOP, x, position=2), ([SOP], [2], [1], x)),
        ],
        [
            (Block([SOP, *p[:4]], position=9, labels=partial), ([SOP, *p[:4]], [9] * 5, [1, 2, 3, 4, 5], partial)),
            (Block.span(SOP, gh, position=15), ([SOP, gh[0]], [15, 15], [1, 2], gh)),
            (Block.span(SOP, y, position=1), ([SOP], [1], [1], y)),
        ],
    ]
    return contexts, cases


def test_score_equals_full_forward_log_probs_of_each_continuation_alone():
    model = tiny_model(initializer_range=0.3)  # peaked predictions: argmax agreement is not a coin toss
    contexts, cases = scoring_cases(model)
    continuations = [[block for block, _ in row] for row in cases]
    for batch_size in (16, 1):
        results = score(model, contexts, continuations, pad_id=PAD, batch_size=batch_size)
        assert [len(row) for row in results] == [2, 2, 3]
        flags = []
        for context, row, scored in zip(contexts, cases, results, strict=True):
            for (_, by_hand), result in zip(row, scored, strict=True):
                token_log_probs, is_greedy = reference_scores(model, context, *by_hand)
                assert result.num_tokens == len(token_log_probs)
                assert result.token_log_probs == pytest.approx(token_log_probs, abs=1e-5)
                assert result.log_prob == pytest.approx(sum(token_log_probs), abs=1e-5)
                assert result.is_greedy == is_greedy
                flags.append(is_greedy)
        assert flags[2] and not all(flags)  # the model's own continuation is greedy, the random ones are not
    assert [r.num_tokens for row in results for r in row] == [3, 3, 4, 1, 3, 2, 1]


def test_score_continuations_never_see_each_other():
    model = tiny_model(initializer_range=0.3)
    contexts, cases = scoring_cases(model)
    continuations = [[block for block, _ in row] for row in cases]
    before = score(model, contexts, continuations, pad_id=PAD)
    changed = [list(row) for row in continuations]
    changed[2][0] = Block.span(SOP, [7, 8, 9, 10, 11, 12, 13], position=9)  # other tokens, longer than any
    changed[0][1] = Block.span(SOP, [40], position=7)
    after = score(model, contexts, changed, pad_id=PAD)
    for i, row in enumerate(before):
        for j, result in enumerate(row):
            if (i, j) in ((2, 0), (0, 1)):
                assert after[i][j].token_log_probs != pytest.approx(result.token_log_probs, abs=1e-3)
                continue
            assert after[i][j].token_log_probs == pytest.approx(result.token_log_probs, abs=1e-5)
            assert after[i][j].is_greedy == result.is_greedy
    for i, row in enumerate(continuations):  # scored alone, each continuation gets what it gets beside the others
        for j, block in enumerate(row):
            [[alone]] = score(model, [contexts[i]], [[block]], pad_id=PAD)
            assert alone.token_log_probs == pytest.approx(before[i][j].token_log_probs, abs=1e-5)


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
    # the stop id: the second token greedy picks for context 1, so that greedy stops after one token there
    first, second = reference_greedy(model, contexts[1], 6)[0][:2]
    assert first != second
    stops = dict(IDS, stop_ids=[second])
    plain = fill_ids(model, contexts, max_new_tokens=6, **stops)
    assert (plain[1][0].token_ids, plain[1][0].stopped) == ([first], True)
    assert token_lists(plain) == [reference_greedy(model, c, 6, stop_ids=[second]) for c in contexts]
    forced = fill_ids(model, contexts, min_new_tokens=4, max_new_tokens=6, **stops)
    assert all(len(blank.token_ids) >= 4 for blanks in forced for blank in blanks)
    assert (len(forced[1][0].token_ids), forced[1][0].stopped) == (4, True)  # stops as soon as it may
    expected = [reference_greedy(model, c, 6, stop_ids=[second], min_new_tokens=4) for c in contexts]
    assert token_lists(forced) == expected
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


def real_contexts(tokenizer, padded):
    """The real tokens of each row of a padded tokenizer output and the position of each one's first blank."""
    contexts = [
        ids[mask.bool()].tolist() for ids, mask in zip(padded["input_ids"], padded["attention_mask"], strict=True)
    ]
    blank_ids = set(tokenizer.mask_token_ids)
    return contexts, [next(i for i, t in enumerate(c) if t in blank_ids) for c in contexts]


def rescored(model, context, blank, sop, generated, length_penalty):
    """Summed log-probability of ``generated`` (its end token included) / its length ** length_penalty, from one
    full forward pass of the context, sop and ``generated[:-1]`` at (blank, 1..n)."""
    n = len(generated)
    log_probs = block_logits(model, context, [sop, *generated[:-1]], [blank] * n, range(1, n + 1)).log_softmax(-1)
    return float(log_probs[torch.arange(n), torch.tensor(generated)].sum()) / n**length_penalty


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_model_card_usages(tokenizers, family):
    tokenizer, vocab_size = tokenizers[family]
    sop, eop = tokenizer.sop_token_id, tokenizer.eop_token_id
    model = tiny_model(vocab_size=vocab_size, max_sequence_length=512)
    texts = ["Tsinghua University is located in [MASK].", "One minus one equals zero, is it correct? Answer: [MASK]"]
    padded = tokenizer(texts, return_tensors="pt", padding=True)
    width = padded["input_ids"].shape[1]
    contexts, blanks = real_contexts(tokenizer, padded)

    # teacher forcing: part B is sop + target, labelled target + eop; -100 everywhere else
    targets = ["Beijing", "No"]
    inputs = tokenizer.build_inputs_for_generation(padded, targets=targets, max_gen_length=8, padding=False)
    target_ids = [tokenizer.encode(t, add_special_tokens=False) for t in targets]
    labels = torch.full_like(inputs["input_ids"], -100)
    for b, ids in enumerate(target_ids):
        labels[b, width : width + len(ids) + 1] = torch.tensor([*ids, eop])
    assert torch.equal(inputs["labels"], labels)
    with torch.no_grad():
        out = model(**inputs)
    flat = labels.flatten()
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits.flatten(0, 1), flat), atol=1e-5, rtol=0)
    alone_logits = []  # each sample alone, unpadded: the logits at its target positions
    for b, ids in enumerate(target_ids):
        n = len(ids) + 1
        assert inputs["input_ids"][b, width : width + n].tolist() == [sop, *ids]
        alone_logits.append(block_logits(model, contexts[b], [sop, *ids], [blanks[b]] * n, range(1, n + 1)))
        torch.testing.assert_close(out.logits[b, width : width + n], alone_logits[-1], atol=1e-5, rtol=0)
    alone_loss = F.cross_entropy(torch.cat(alone_logits), torch.tensor([t for ids in target_ids for t in [*ids, eop]]))
    torch.testing.assert_close(out.loss, alone_loss, atol=1e-5, rtol=0)

    # generate through transformers' GenerationMixin, as the card does: the prompt comes back as given, then
    # fill_ids' fill of the first blank
    inputs = tokenizer.build_inputs_for_generation(padded, max_gen_length=512)
    outputs = model.generate(**inputs, max_length=512, eos_token_id=eop)
    assert torch.equal(outputs[:, : width + 1], inputs["input_ids"])
    ours = fill_ids(
        model, contexts, blank_ids=tokenizer.mask_token_ids, sop_id=sop, stop_ids=[eop],
        pad_id=tokenizer.pad_token_id, max_new_tokens=512 - width - 1,
    )  # fmt: skip
    for row, blanks_filled in zip(outputs[:, width + 1 :].tolist(), ours, strict=True):
        generated = row[: row.index(eop)] if eop in row else row
        assert generated == blanks_filled[0].token_ids

    # multiple choice: each (sample, choice) score is the summed log-probability of the choice's tokens in a full
    # forward pass of the real context + sop + choice[:-1]
    mc = GLMForMultipleChoice(model.config).eval()
    mc.load_state_dict(model.state_dict())
    choices = [["Beijing", "the city of Shanghai"], ["Yes", "no, it is not"]]
    inputs = tokenizer.build_inputs_for_multiple_choice(padded, choices)
    with torch.no_grad():
        logits = mc(**inputs).logits
    assert logits.shape == (2, 2)
    for b, row in enumerate(choices):
        for c, choice in enumerate(row):
            ids = tokenizer.encode(choice, add_special_tokens=False)
            n = len(ids)
            log_probs = block_logits(model, contexts[b], [sop, *ids[:-1]], [blanks[b]] * n, range(1, n + 1))
            expected = log_probs.log_softmax(-1)[torch.arange(n), torch.tensor(ids)].sum()
            assert float(logits[b, c]) == pytest.approx(float(expected), abs=1e-5)


def model_whose_beams_end(tokenizer, vocab_size, contexts, blanks):
    """A tiny model whose eop is nearly as likely as the tokens it repeats (its eop embedding 0.9 times the sum of
    those of each context's first greedy token), so that beams end on eop at different steps."""
    model = tiny_model(vocab_size=vocab_size, max_sequence_length=64)
    sop = tokenizer.sop_token_id
    firsts = [int(block_logits(model, c, [sop], [b], [1])[0].argmax()) for c, b in zip(contexts, blanks, strict=True)]
    with torch.no_grad():
        embeddings = model.glm.word_embeddings.weight
        embeddings[tokenizer.eop_token_id] = 0.9 * embeddings[firsts].sum(0)
    return model


def test_generate_beam_search_through_generation_mixin(tokenizers):
    tokenizer, vocab_size = tokenizers["bert"]
    sop, eop = tokenizer.sop_token_id, tokenizer.eop_token_id
    padded = tokenizer(["Tsinghua University is located in [MASK]."], return_tensors="pt")
    width = padded["input_ids"].shape[1]
    contexts, blanks = real_contexts(tokenizer, padded)
    model = model_whose_beams_end(tokenizer, vocab_size, contexts, blanks)
    inputs = tokenizer.build_inputs_for_generation(padded, max_gen_length=8)
    out = model.generate(
        **inputs, max_new_tokens=6, num_beams=3, eos_token_id=eop, output_scores=True, return_dict_in_generate=True
    )
    assert torch.equal(out.sequences[:, : width + 1], inputs["input_ids"])
    [[ours]] = fill_ids(
        model, contexts, blank_ids=tokenizer.mask_token_ids, sop_id=sop, stop_ids=[eop], num_beams=3,
        max_new_tokens=6,
    )  # fmt: skip
    row = out.sequences[0, width + 1 :].tolist()
    generated = row[: row.index(eop) + 1] if eop in row else row
    assert generated == ours.token_ids + [eop] * ours.stopped
    expected = rescored(model, contexts[0], blanks[0], sop, generated, 1.0)
    assert float(out.sequences_scores[0]) == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert ours.score == pytest.approx(expected, rel=1e-5, abs=1e-5)
    with pytest.raises(ValueError, match="past the 19 that build_inputs_for_generation planned"):
        model.generate(**inputs, max_new_tokens=12, eos_token_id=-1, suppress_tokens=[eop])


@pytest.mark.parametrize(
    "length_penalty, early_stopping", [(1.0, False), (0.0, False), (3.0, "never"), (1.0, True), (-1.0, "never")]
)
def test_generate_beam_search_equals_fill_ids(tokenizers, length_penalty, early_stopping):
    """transformers' beam search (the model-card path) and ours follow the same rules: length = generated tokens
    with the end token, every beam ends at max_new_tokens, the same early-stopping tests; all 3 beams of 2 texts
    (one padded) agree in tokens and scores, and both equal full-forward rescorings."""
    tokenizer, vocab_size = tokenizers["bert"]
    sop, eop = tokenizer.sop_token_id, tokenizer.eop_token_id
    texts = ["Tsinghua University is located in [MASK].", "One minus one equals zero, is it correct? Answer: [MASK]"]
    padded = tokenizer(texts, return_tensors="pt", padding=True)
    width = padded["input_ids"].shape[1]
    contexts, blanks = real_contexts(tokenizer, padded)
    model = model_whose_beams_end(tokenizer, vocab_size, contexts, blanks)
    options = dict(num_beams=3, num_return_sequences=3, max_new_tokens=6, length_penalty=length_penalty)
    inputs = tokenizer.build_inputs_for_generation(padded, max_gen_length=8)
    out = model.generate(
        **inputs, **options, early_stopping=early_stopping, eos_token_id=eop, pad_token_id=tokenizer.pad_token_id,
        output_scores=True, return_dict_in_generate=True,
    )  # fmt: skip
    ours = fill_ids(
        model, contexts, blank_ids=tokenizer.mask_token_ids, sop_id=sop, stop_ids=[eop],
        pad_id=tokenizer.pad_token_id, early_stopping=early_stopping, **options,
    )  # fmt: skip
    sequences, scores = out.sequences.view(2, 3, -1), out.sequences_scores.view(2, 3)
    stopped = []
    for b, (result,) in enumerate(ours):
        assert len(result.hypotheses) == 3
        assert result.token_ids == result.hypotheses[0].token_ids
        for j, hypothesis in enumerate(result.hypotheses):
            assert sequences[b, j, : width + 1].tolist() == inputs["input_ids"][b].tolist()
            row = sequences[b, j, width + 1 :].tolist()
            generated = row[: row.index(eop) + 1] if eop in row else row
            assert generated == hypothesis.token_ids + [eop] * hypothesis.stopped
            expected = rescored(model, contexts[b], blanks[b], sop, generated, length_penalty)
            assert float(scores[b, j]) == pytest.approx(expected, rel=1e-5, abs=1e-5)
            assert hypothesis.score == pytest.approx(expected, rel=1e-5, abs=1e-5)
            stopped.append(hypothesis.stopped)
    assert any(stopped)  # beams end on eop: the end-token rules are compared, not only the max_new_tokens ones
    if length_penalty > 0 and early_stopping is not True:  # (True ends at the first 3 fills, all on eop here)
        assert not all(stopped)  # and others are cut at max_new_tokens


@pytest.mark.parametrize("length_penalty, early_stopping", [(1.0, False), (3.0, "never"), (0.0, True)])
def test_generate_beam_search_with_two_stop_ids_equals_fill_ids(length_penalty, early_stopping):
    """With two stop ids transformers keeps 3 * num_beams candidates a step, so that num_beams of them never end;
    a model whose two stop tokens are both among every beam's best (vocabulary 8, stops 5 and 6, embedding of 6 =
    1.01 x that of 5) tells 3 * num_beams from 2 * num_beams (seed 22 differs at 2 * num_beams)."""
    context, blank, sop, stops = [0, 1, 3, 2, 1], 2, 4, [5, 6]
    planned = build_batch([Sample(context, [Block([sop] + [0] * 5, blank)])], pad_id=0, explicit_mask=True)
    inputs = dict(
        input_ids=planned["input_ids"][:, : len(context) + 1],
        position_ids=planned["position_ids"],
        generation_attention_mask=planned["attention_mask"].long(),
    )
    options = dict(num_beams=3, num_return_sequences=3, max_new_tokens=4, length_penalty=length_penalty)
    for seed in range(20, 26):
        model = tiny_model(vocab_size=8, seed=seed, initializer_range=0.3)
        with torch.no_grad():
            model.glm.word_embeddings.weight[6] = 1.01 * model.glm.word_embeddings.weight[5]
        out = model.generate(
            **inputs, **options, early_stopping=early_stopping, eos_token_id=stops, pad_token_id=0,
            output_scores=True, return_dict_in_generate=True,
        )  # fmt: skip
        [[ours]] = fill_ids(
            model, [context], blank_ids=[3], sop_id=sop, stop_ids=stops, pad_id=0, early_stopping=early_stopping,
            **options,
        )  # fmt: skip
        theirs = []
        for row in out.sequences[:, len(context) + 1 :].tolist():
            ends = [i for i, t in enumerate(row) if t in stops]
            theirs.append(row[: ends[0]] if ends else row)
        assert [h.token_ids for h in ours.hypotheses] == theirs, f"seed {seed}"
        assert [h.score for h in ours.hypotheses] == pytest.approx(out.sequences_scores.tolist(), abs=1e-5)


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

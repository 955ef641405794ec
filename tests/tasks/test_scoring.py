"""The shared zero-shot layouts: windows score every token exactly once; inputs as written out by hand; scores
equal full forward passes; batching changes nothing."""

from __future__ import annotations

import math
import random

import pytest

from torchglm.errors import InputError
from torchglm.tasks.scoring import (
    PromptIds,
    final_blank_inputs,
    fit_context,
    score_final_blank,
    score_windows,
    window_inputs,
    window_spans,
)

from .helpers import CLS, EOS, GMASK, PAD, SOP, WordTokenizer, full_pass_log_probs, tiny_model

IDS = PromptIds(cls=CLS, mask=GMASK, eos=EOS, sop=SOP, pad=PAD)


@pytest.mark.parametrize("score_first", [False, True])
def test_every_token_is_scored_exactly_once_for_any_length_window_and_overlap(score_first):
    for n in list(range(0, 40)) + [97, 128, 500]:
        for window in (2, 3, 5, 8, 16, 127):
            for stride in sorted({1, 2, 3, window // 2, window - 1} - {0}):
                if stride >= window:
                    continue
                spans = window_spans(n, window, stride, score_first=score_first)
                counts = [0] * n
                for s in spans:
                    assert 0 <= s.start < s.first_scored + (1 if score_first else 0) and s.end <= n
                    assert s.end - s.start <= window and s.first_scored - s.start <= window - stride
                    for i in range(s.first_scored, s.end):
                        counts[i] += 1
                first = 0 if score_first else 1
                assert counts[first:] == [1] * (n - first) and counts[:first] == [0] * min(first, n)
                if not score_first and n >= 2:  # the original's window count
                    assert len(spans) == 1 + math.ceil(max(n - window, 0) / stride)


def test_windows_after_the_first_see_window_minus_overlap_tokens():
    spans = window_spans(1648, 127, 32)
    assert [(s.start, s.end, s.first_scored) for s in spans[:3]] == [(0, 127, 1), (32, 159, 127), (64, 191, 159)]
    assert spans[-1] == type(spans[-1])(1536, 1648, 1631) and len(spans) == 49


def test_window_inputs_as_written_by_hand():
    tokens = list(range(1, 30))
    spans = window_spans(len(tokens), 10, 4)
    part_a, block = window_inputs(tokens, spans[0], IDS)  # [CLS] t0 [M] | [sop] t1..t8 -> t1..t9
    assert part_a == [CLS, 1, GMASK] and block.input_ids == [SOP, *range(2, 10)]
    assert (
        block.labels == list(range(2, 11)) and block.position == [2] * 9 and block.block_position == list(range(1, 10))
    )
    part_a, block = window_inputs(tokens, spans[1], IDS)  # window t4..t13, scores t10..t13
    assert part_a == [CLS, 5, 6, 7, 8, 9, 10, GMASK] and block.input_ids == [SOP, 11, 12, 13]
    assert block.labels == [11, 12, 13, 14] and block.position == [7] * 4
    part_a, block = window_inputs(tokens, spans[1], IDS, unidirectional=True)  # [CLS] t4 [M] | sop t5..t12
    assert part_a == [CLS, 5, GMASK] and block.input_ids == [SOP, *range(6, 14)]
    assert block.labels == [-100] * 5 + [11, 12, 13, 14] and block.position == [2] * 9


def test_final_blank_inputs_as_written_by_hand_and_contexts_cut_from_the_left():
    part_a, block = final_blank_inputs([5, 6, 7], [8, 9], IDS)
    assert part_a == [CLS, 5, 6, 7, GMASK, EOS] and block.input_ids == [SOP, 8] and block.labels == [8, 9]
    assert block.position == [4, 4] and block.block_position == [1, 2]
    part_a, block = final_blank_inputs([5, 6, 7], [8, 9], IDS, unidirectional=True)
    assert part_a == [CLS, 5, GMASK, EOS] and block.input_ids == [SOP, 6, 7, 8] and block.labels == [-100, -100, 8, 9]
    assert block.position == [2] * 4 and block.block_position == [1, 2, 3, 4]
    # [CLS] + 11 context + [M] eos + [sop] + answer[:-1] (1) = 16 tokens
    assert fit_context(list(range(20)), 2, 16) == list(range(9, 20))
    assert fit_context([1, 2], 2, 16) == [1, 2]
    for unidirectional in (False, True):  # a cut example fills the sequence exactly, keeping the last tokens
        kept = fit_context(list(range(1, 40)), 3, 24)
        part_a, block = final_blank_inputs(kept, [7, 8, 9], IDS, unidirectional=unidirectional)
        assert kept == list(range(22, 40)) and len(part_a) + len(block) == 24  # 18 + [CLS] [M] eos + 3
    with pytest.raises(InputError, match="does not fit"):
        fit_context([1], 20, 16)


def _random_lists(rng, count, low, high):
    return [[rng.randrange(1, 80) for _ in range(rng.randrange(low, high))] for _ in range(count)]


@pytest.mark.parametrize("unidirectional", [False, True])
def test_final_blank_scores_equal_full_forward_passes_and_batching_changes_nothing(unidirectional):
    model, rng = tiny_model(), random.Random(3)
    contexts = _random_lists(rng, 5, 1, 20)
    answers = [_random_lists(rng, rng.randrange(1, 4), 1, 5) for _ in contexts]
    one_by_one = score_final_blank(model, IDS, contexts, answers, seq_length=64, unidirectional=unidirectional,
                                   batch_size=1)  # fmt: skip
    batched = score_final_blank(model, IDS, contexts, answers, seq_length=64, unidirectional=unidirectional,
                                batch_size=4)  # fmt: skip
    for context, choices, singles, together in zip(contexts, answers, one_by_one, batched, strict=True):
        for answer, single, joint in zip(choices, singles, together, strict=True):
            # The whole sequence, by hand: [CLS] context [M] eos | [sop] answer[:-1]  (or c0 in part A)
            head, rest = (context, []) if not unidirectional else (context[:1], context[1:])
            part_a = [CLS, *head, GMASK, EOS]
            fed = [SOP, *rest, *answer][:-1]
            ids = part_a + fed
            mask_at = len(part_a) - 2
            text = list(range(len(part_a))) + [mask_at] * len(fed)
            block = [0] * len(part_a) + list(range(1, len(fed) + 1))
            targets = [(len(part_a) + len(rest) + k, t) for k, t in enumerate(answer)]
            expected, greedy = full_pass_log_probs(model, ids, text, block, len(part_a), targets)
            assert single.token_log_probs == pytest.approx(expected, abs=1e-5)
            assert single.is_greedy == greedy and single.num_tokens == len(answer)
            assert joint.log_prob == pytest.approx(single.log_prob, abs=1e-5) and joint.is_greedy == single.is_greedy


@pytest.mark.parametrize("unidirectional", [False, True])
def test_window_scores_equal_full_forward_passes(unidirectional):
    model, rng = tiny_model(), random.Random(4)
    tokens = [rng.randrange(1, 80) for _ in range(41)]
    spans = window_spans(len(tokens), 12, 5)
    scores = score_windows(model, IDS, tokens, spans, unidirectional=unidirectional, batch_size=3)
    total = 0.0
    for span, got in zip(spans, scores, strict=True):
        window = tokens[span.start : span.end]
        seen = span.first_scored - span.start
        head = window[:seen] if not unidirectional or seen == 1 else window[:1]
        part_a = [CLS, *head, GMASK]
        fed = [SOP, *window[len(head) : -1]]
        ids = part_a + fed
        text = list(range(len(part_a))) + [len(part_a) - 1] * len(fed)
        block = [0] * len(part_a) + list(range(1, len(fed) + 1))
        targets = [(len(part_a) + i - len(head), window[i]) for i in range(seen, len(window))]
        expected, _ = full_pass_log_probs(model, ids, text, block, len(part_a), targets)
        assert got.token_log_probs == pytest.approx(expected, abs=1e-5)
        total += got.log_prob
    assert sum(s.num_tokens for s in scores) == len(tokens) - 1


def test_prompt_ids_follow_the_tokenizers_task_masks():
    assert PromptIds.from_tokenizer(WordTokenizer()).mask == GMASK
    assert PromptIds.from_tokenizer(WordTokenizer(task_masks=False)).mask == WordTokenizer.mask_token_id
    with pytest.raises(InputError, match="no \\[gMASK\\]"):
        PromptIds.from_tokenizer(WordTokenizer(task_masks=False), "gMASK")


# ---- the causal layout (models pretrained with the clm objective) ------------------------------------------------


def _causal_lm_log_probs(model, tokens):
    """log p(tokens[j + 1] | [CLS] tokens[:j + 1]) for every j, from one forward pass of ``[CLS] tokens`` with
    ``sep = 0`` (no bidirectional part at all), positions 0.. and block positions 0: the clm pretraining layout."""
    ids = [CLS, *tokens]
    n = len(ids)
    values, _ = full_pass_log_probs(model, ids, list(range(n)), [0] * n, 0, [(j, ids[j + 1]) for j in range(n - 1)])
    return values  # values[j] = log p(ids[j + 1]); ids[1] = tokens[0] is predicted by [CLS]


def test_causal_final_blank_scores_equal_a_causal_lm_forward_pass_and_batching_changes_nothing():
    model, rng = tiny_model(), random.Random(5)
    contexts = _random_lists(rng, 5, 1, 20)
    answers = [_random_lists(rng, rng.randrange(1, 4), 1, 5) for _ in contexts]
    one_by_one = score_final_blank(model, IDS, contexts, answers, seq_length=64, causal=True, batch_size=1)
    batched = score_final_blank(model, IDS, contexts, answers, seq_length=64, causal=True, batch_size=4)
    for context, choices, singles, together in zip(contexts, answers, one_by_one, batched, strict=True):
        for answer, single, joint in zip(choices, singles, together, strict=True):
            every = _causal_lm_log_probs(model, context + answer)
            assert single.token_log_probs == pytest.approx(every[len(context) :], abs=1e-5)
            assert single.num_tokens == len(answer)
            assert joint.log_prob == pytest.approx(single.log_prob, abs=1e-5) and joint.is_greedy == single.is_greedy


def test_causal_windows_equal_causal_lm_forward_passes_and_score_every_token_once():
    model, rng = tiny_model(), random.Random(6)
    tokens = [rng.randrange(1, 80) for _ in range(41)]
    spans = window_spans(len(tokens), 12, 5)
    scores = score_windows(model, IDS, tokens, spans, causal=True, batch_size=3)
    for span, got in zip(spans, scores, strict=True):
        every = _causal_lm_log_probs(model, tokens[span.start : span.end])
        assert got.token_log_probs == pytest.approx(every[span.first_scored - span.start :], abs=1e-5)
    assert sum(s.num_tokens for s in scores) == len(tokens) - 1
    with pytest.raises(InputError, match="first token"):
        score_windows(model, IDS, tokens, window_spans(len(tokens), 12, 5, score_first=True), causal=True)


def test_causal_inputs_as_written_by_hand():
    part_a, block = final_blank_inputs([11, 12, 13], [21, 22], IDS, causal=True)
    assert part_a == [CLS]
    assert block.input_ids == [11, 12, 13, 21] and block.labels == [-100, -100, 21, 22]
    assert block.position == [1, 2, 3, 4] and block.block_position == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="context token"):
        final_blank_inputs([], [21], IDS, causal=True)
    with pytest.raises(InputError, match="leaves no context token in --seq-length 8"):
        score_final_blank(tiny_model(), IDS, [[11, 12]], [[[21, 22, 23, 24, 25]]], seq_length=8, causal=True)

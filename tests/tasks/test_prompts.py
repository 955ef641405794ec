"""P-tuning: prompt slots where the original's patterns put None, the encoder's vectors in place of exactly the slot
embeddings (cached scoring included), a frozen backbone, and the trainable-only save."""

from __future__ import annotations

import json

import pytest
import torch

from torchglm.errors import InputError
from torchglm.layout import Block
from torchglm.tasks import prompts, superglue
from torchglm.tasks.prompts import PromptEncoder, PromptLayout
from torchglm.tasks.superglue import ClozeExample

from .helpers import CLS, EOS, MASK, SOP, VOCAB, WordTokenizer, tiny_model

PLACEHOLDER = VOCAB - 1  # WordTokenizer has 96 ids: 96 is the spare row of the tiny model's 97


@pytest.fixture(scope="module")
def bert(shared_dir):
    from torchglm import GLMTokenizer

    return GLMTokenizer.from_bert_vocab(shared_dir / "data" / "vocab" / "bert-uncased-vocab.txt")


def marked(tokenizer, ids, placeholder):
    """The ids as text with each placeholder written P."""
    words, run = [], []
    for token in [*ids, placeholder]:
        if token == placeholder:
            if run:
                words.append(tokenizer.decode(run))
            words, run = [*words, "P"], []
        else:
            run.append(token)
    return " ".join(words[:-1])


def test_slot_sizes_split_the_tokens_as_the_original():
    # ceil(n / slots) per slot, in order, until they run out
    assert prompts.slot_sizes(3, 3) == [1, 1, 1]
    assert prompts.slot_sizes(4, 3) == [2, 2, 0]
    assert prompts.slot_sizes(5, 3) == [2, 2, 1]
    assert prompts.slot_sizes(7, 3) == [3, 3, 1]
    assert prompts.slot_sizes(1, 3) == [1, 0, 0]


def test_prompt_slots_sit_where_the_original_patterns_put_none(bert):
    """The original's patterns with continuous prompts (tasks/superglue/pvp.py), written out by hand; P = one
    prompt token (3 tokens over 3 slots)."""
    p = len(bert)
    layout = PromptLayout(3, p)
    rte = ClozeExample("dev-0", "The cat sat on the mat.", "A cat sat.", "entailment")
    cases = [
        # RTE 0: [None, '"', hyp, '" ?'], [None, MASK, ',', None, ' "', premise, '"']
        ("rte", rte, 0, 'P " a cat sat "? P [MASK], P " the cat sat on the mat. "'),
        # RTE 4: [None, premise, None, ' question:', hyp, ' True or False?', None, ' answer:', MASK]
        ("rte", rte, 4, "P the cat sat on the mat. P question : a cat sat. true or false? P answer : [MASK]"),
        # BoolQ 4: ['Based on the following passage', None, question, '?', None, MASK, '.', None, passage]
        ("boolq", ClozeExample("dev-1", "Paris is in France.", "is paris in france", "true"), 4,
         "based on the following passage P is paris in france? P [MASK]. P paris is in france."),
        # WiC 1: [s1, None, s2, None, ' Does w have the same meaning in both sentences?', None, MASK]
        ("wic", ClozeExample("dev-2", "He runs.", "It runs.", "true", {"word": "runs"}), 1,
         "he runs. P it runs. P does runs have the same meaning in both sentences? P [MASK]"),
        # MultiRC 3: [None, passage, None, question, '- [', MASK, ']', None, answer]
        ("multirc", ClozeExample("dev-3", "Sky is blue.", "what color", 1,
                                 {"passage_idx": 0, "question_idx": 0, "answer_idx": 0, "answer": "blue"}), 3,
         "P sky is blue P what color - [ [MASK] ] P blue"),
    ]  # fmt: skip
    for task, example, pattern, want in cases:
        item = superglue.cloze_input(bert, task, example, pattern, prompt=layout)
        assert item.part_a[0] == bert.cls_token_id and item.part_a[-1] == bert.eos_token_id
        assert marked(bert, item.part_a[1:-1], p) == want, (task, pattern)
        assert item.part_a.count(p) == 3
    # COPA 0 (multi-token: every choice's part A): [None, '"', c1, '" or "', c2, '"?', None, premise, joiner, None,
    # MASK, '.']
    copa = ClozeExample("dev-4", "The man fell.", None, 1, {"choice1": "He slipped.", "choice2": "He laughed.",
                                                          "question": "cause"})  # fmt: skip
    item = superglue.cloze_input(bert, "copa", copa, 0, prompt=PromptLayout(5, p))  # 5 tokens: 2, 2, 1
    for part_a in item.choice_part_a:
        want = 'P P " he slipped " or " he laughed "? P P the man fell because P [MASK].'
        assert marked(bert, part_a[1:-1], p) == want


def test_every_pattern_with_slots_is_the_plain_pattern_plus_placeholders(shared_dir, bert):
    """For the first training examples of every task and every pattern: the prompt layout holds exactly the
    tokens asked for, and without them it is the plain layout, token for token."""
    p = len(bert)
    for task in prompts.SLOTS:  # SuperGLUE's eight
        assert sorted(prompts.SLOTS[task]) == list(range(superglue.PATTERNS[task]))
        examples = superglue.read_examples(task, superglue.task_file(shared_dir / "data" / "superglue", task, "train"),
                                           "train")[:3]  # fmt: skip
        for pattern in range(superglue.PATTERNS[task]):
            for example in examples:
                plain = superglue.cloze_input(bert, task, example, pattern, seq_length=2048)
                if task == "record":
                    with pytest.raises(InputError, match="no prompt slots"):
                        superglue.cloze_input(bert, task, example, pattern, 2048, PromptLayout(3, p))
                    continue
                assert sum(map(len, prompts.SLOTS[task][pattern])) == 3  # the original's three Nones
                for n in (1, 3, 4):
                    item = superglue.cloze_input(bert, task, example, pattern, 2048, PromptLayout(n, p))
                    for got, want in zip(item.choice_part_a or [item.part_a], plain.choice_part_a or [plain.part_a],
                                         strict=True):  # fmt: skip
                        assert got.count(p) == n
                        assert [t for t in got if t != p] == want, (task, pattern, n)


def rte_inputs(layout):
    tok = WordTokenizer()
    examples = [ClozeExample(f"train-{i}", f"premise {i} is long here", f"hypothesis {i}",
                             "entailment" if i % 2 else "not_entailment") for i in range(4)]  # fmt: skip
    return superglue.build_inputs(tok, "rte", examples, 0, 32, layout)


def test_the_encoder_replaces_exactly_the_slot_embeddings():
    model = tiny_model()
    encoder = PromptEncoder(3, 32, "lstm")
    prompts.attach_prompt(model, encoder, PLACEHOLDER)
    ids = torch.tensor([[CLS, PLACEHOLDER, 5, 6, PLACEHOLDER, MASK, 7, PLACEHOLDER, EOS, SOP],
                        [CLS, 5, 6, 8, 9, MASK, 7, 3, EOS, SOP]])  # fmt: skip
    positions = torch.tensor([[list(range(9)) + [5], [0] * 9 + [1]]] * 2)
    sep = torch.tensor([9, 9])
    with torch.no_grad():
        got = model(ids, positions, attention_mask=sep).logits
        # by hand: the word embeddings, the encoder's vectors written at the slots, fed as inputs_embeds
        embeds = model.glm.word_embeddings.weight[ids].clone()
        embeds[0, [1, 4, 7]] = encoder()
        hidden = model.glm(None, positions, sep, inputs_embeds=embeds).last_hidden_state
        want = model.output_logits(hidden)
        plain = tiny_model()(ids[1:], positions[1:], attention_mask=sep[1:]).logits  # no placeholder: untouched
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(got[1:], plain, rtol=0, atol=0)
    assert not torch.allclose(got[0], tiny_model()(ids[:1], positions[:1], attention_mask=sep[:1]).logits[0])
    # the encoder's vectors take gradients; a row with only some of the slots is refused
    model.train()
    model(ids, positions, attention_mask=sep).logits[0, -1].sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())
    with pytest.raises(ValueError, match="none or all 3"):
        model(ids[:, :5], positions[..., :5], attention_mask=torch.tensor([5, 5]))


def test_cached_scoring_sees_the_prompts_as_a_full_pass_does():
    """``evaluate_superglue`` (contexts in the KV cache) on a model with an encoder: the same log-probabilities as
    one full pass with the slot embeddings written by hand."""
    from torchglm.generation.score import score

    model = tiny_model()
    encoder = PromptEncoder(3, 32, "mlp")
    prompts.attach_prompt(model, encoder, PLACEHOLDER)
    item = rte_inputs(prompts.prompt_layout(model))[0]
    assert prompts.prompt_layout(model) == PromptLayout(3, PLACEHOLDER)
    [found] = score(model, [item.part_a], [[Block([SOP], item.mask_position, 1, [v]) for v in item.verbalizer_ids]])
    ids = torch.tensor([[*item.part_a, SOP]])
    n = len(item.part_a)
    positions = torch.tensor([[[*range(n), item.mask_position], [0] * n + [1]]])
    with torch.no_grad():
        embeds = model.glm.word_embeddings.weight[ids].clone()
        embeds[ids == PLACEHOLDER] = encoder()
        hidden = model.glm(None, positions, torch.tensor([n]), inputs_embeds=embeds).last_hidden_state
        log_probs = model.output_logits(hidden[0, -1]).float().log_softmax(-1)
    for result, verbalizer in zip(found, item.verbalizer_ids, strict=True):
        assert result.log_prob == pytest.approx(float(log_probs[verbalizer]), abs=1e-5)


def test_a_frozen_backbone_trains_only_the_encoder_and_the_prefix_layers():
    from torchglm.train.config import OptimConfig
    from torchglm.train.optim import build_optimizer, param_groups

    model = tiny_model().train()
    prompts.attach_prompt(model, PromptEncoder(3, 32, "lstm"), PLACEHOLDER)
    prompts.freeze_backbone(model, tune_prefix_layers=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = {n for g in param_groups(model, 0.1) for n in g["names"]}
    assert names and all(n.startswith(("prompt_encoder.", "glm.transformer.layers.0.")) for n in names)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-2, weight_decay=0.1))
    items = rte_inputs(prompts.prompt_layout(model))
    loss = superglue.ClozeLoss()
    for _ in range(3):
        batch = superglue.collate_cloze(items, 0, SOP)
        loss(model, batch).total.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = model.state_dict()
    moved = {k for k in after if not torch.equal(after[k], before[k])}
    encoder_names = {k for k in after if k.startswith("prompt_encoder.")}
    assert encoder_names and encoder_names <= moved
    assert any(k.startswith("glm.transformer.layers.0.") for k in moved)
    assert all(k.startswith(("prompt_encoder.", "glm.transformer.layers.0.")) for k in moved)  # nothing else moved
    with pytest.raises(InputError, match="has 2 layers"):
        prompts.freeze_backbone(model, tune_prefix_layers=3)


def test_saved_trainable_tensors_reload_onto_the_base_model(tmp_path):
    model = tiny_model()
    prompts.attach_prompt(model, PromptEncoder(4, 32, "lstm"), PLACEHOLDER)
    prompts.freeze_backbone(model, tune_prefix_layers=1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))  # as if trained
    prompts.save_trainable(model, tmp_path, base_model="BASE", settings={"pattern_id": 0})
    from safetensors.torch import load_file

    saved = load_file(tmp_path / prompts.TRAINABLE_FILE)
    assert set(saved) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert {k.split(".")[0] for k in saved} == {"prompt_encoder", "glm"}
    assert all(k.startswith(("prompt_encoder.", "glm.transformer.layers.0.")) for k in saved)
    info = json.loads((tmp_path / prompts.TRAINABLE_INFO).read_text())
    assert info["base_model"] == "BASE" and info["prompt_encoder"] == {"kind": "lstm", "num_tokens": 4,
                                                                       "placeholder_id": PLACEHOLDER}  # fmt: skip
    again = prompts.load_trainable(tiny_model(), tmp_path)
    ids = torch.tensor([[CLS, PLACEHOLDER, PLACEHOLDER, 5, PLACEHOLDER, MASK, PLACEHOLDER, EOS]])
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits, rtol=0, atol=0)
    (tmp_path / prompts.TRAINABLE_INFO).write_text('{"base_model": "BASE", "prompt_encoder": null}')
    with pytest.raises(InputError, match="prompt_encoder.embeddings.weight is not a parameter"):
        prompts.load_trainable(tiny_model(), tmp_path)
    (tmp_path / prompts.TRAINABLE_INFO).write_text('{"base_model": "BASE", "prompt_encoder": {"kind": "lstm"}}')
    with pytest.raises(InputError, match='field "prompt_encoder.num_tokens" is missing or not a int'):
        prompts.load_trainable(tiny_model(), tmp_path)


def test_prompt_init_mixes_a_word_with_a_verbalizer():
    """--prompt-init: every embedding is r * word + (1 - r) * task token, r in [0, 1], a word among the first
    5000 (here the whole table) and a task token among those given; found by brute force over the pairs."""
    table = torch.randn(VOCAB, 32, dtype=torch.float64)
    encoder = PromptEncoder(6, 32, "none").double()
    task_tokens = [11, 17]
    encoder.init_from_words(table, task_tokens, torch.Generator().manual_seed(3))
    for row in encoder.embeddings.weight.detach():
        best = None
        for word in range(VOCAB):
            for token in set(task_tokens) - {word}:
                direction = table[word] - table[token]  # row = token + r * (word - token)
                r = float((row - table[token]) @ direction / (direction @ direction))
                residual = float((table[token] + r * direction - row).norm())
                if best is None or residual < best[0]:
                    best = (residual, r)
        assert best[0] < 1e-9 and -1e-9 <= best[1] <= 1 + 1e-9

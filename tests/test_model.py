"""The model against the original implementation's outputs, and its own invariants on tiny random models."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import torchglm.model as model_module
import torchglm.ops.dropout as dropout_ops
import torchglm.ops.half as half_ops
from torchglm import (
    GLMConfig,
    GLMForConditionalGeneration,
    GLMForMultipleChoice,
    GLMForSequenceClassification,
    GLMModel,
)

TOLERANCE = 1e-4


def tiny_config(**overrides) -> GLMConfig:
    values = dict(
        vocab_size=97,
        hidden_size=32,
        num_layers=2,
        num_attention_heads=4,
        max_sequence_length=64,
        embedding_dropout_prob=0.0,
        attention_dropout_prob=0.0,
        output_dropout_prob=0.0,
    )
    return GLMConfig(**{**values, **overrides})


def tiny_model(cls=GLMForConditionalGeneration, **overrides):
    torch.manual_seed(0)
    return cls(tiny_config(**overrides)).eval()


# ---------------------------------------------------------------------------------------------------------------
# Parity with the original GLM code


@pytest.fixture(scope="module")
def reference(shared_dir):
    folder = shared_dir / "golden" / "glm-ref-tiny"
    model = GLMForConditionalGeneration.from_pretrained(folder).eval()
    return model, load_file(folder / "cases.safetensors")


GOLDEN_CASES = [("sep", "sep_sep"), ("scalar", "scalar_sep"), ("mask", "mask_attention_mask")]


@pytest.mark.parametrize("case, mask_key", GOLDEN_CASES)
def test_logits_match_original(reference, case, mask_key):
    model, cases = reference
    prefix = "sep" if case == "scalar" else case
    with torch.no_grad():
        logits = model(cases[f"{prefix}_input_ids"], cases[f"{prefix}_position_ids"], cases[mask_key]).logits
    torch.testing.assert_close(logits, cases[f"{case}_logits"], atol=TOLERANCE, rtol=0)


def test_cached_decoding_matches_original_mems(reference):
    model, cases = reference
    context, steps = cases["inc_context_ids"], cases["inc_step_ids"]
    with torch.no_grad():
        out = model(context, cases["inc_context_position_ids"], attention_mask=context.shape[1], use_cache=True)
        torch.testing.assert_close(out.logits, cases["inc_context_logits"], atol=TOLERANCE, rtol=0)
        cache, step_logits = out.cache, []
        for step in range(steps.shape[1]):
            position = torch.tensor([context.shape[1] - 1, step + 1]).view(1, 2, 1).expand(len(steps), 2, 1)
            out = model(steps[:, step : step + 1], position, cache=cache, use_cache=True)
            cache = out.cache
            step_logits.append(out.logits)
    torch.testing.assert_close(torch.cat(step_logits, 1), cases["inc_step_logits"], atol=TOLERANCE, rtol=0)


def test_reference_checkpoint_loads_with_and_without_prefix(reference, tmp_path):
    model, cases = reference
    prefixed = {k: v.half() for k, v in model.state_dict().items()}  # "glm."-prefixed keys, fp16
    assert all(k.startswith("glm.") for k in prefixed)
    torch.save(prefixed, tmp_path / "pytorch_model.bin")
    model.config.save_pretrained(tmp_path)
    trunk = GLMModel.from_pretrained(tmp_path, dtype=torch.float32)
    torch.testing.assert_close(trunk.word_embeddings.weight, model.glm.word_embeddings.weight.half().float())
    head = GLMForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = head(cases["sep_input_ids"], cases["sep_position_ids"], cases["sep_sep"]).logits
    torch.testing.assert_close(logits, cases["sep_logits"], atol=0.05, rtol=0)  # fp16 weights


# ---------------------------------------------------------------------------------------------------------------
# Architecture invariants


def reference_attention_forward(model: GLMForConditionalGeneration, input_ids, position_ids, mask):
    """A direct transcription of the original maths (float masks, -10000 fill) for cross-checking."""
    glm, cfg = model.glm, model.config
    h = glm.word_embeddings(input_ids) + glm.transformer.position_embeddings(position_ids[:, 0])
    h = h + glm.transformer.block_position_embeddings(position_ids[:, 1])
    heads, dim = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    for layer in glm.transformer.layers:
        x = layer.input_layernorm(h)
        q, k, v = layer.attention.query_key_value(x).chunk(3, dim=-1)
        q, k, v = (t.view(*t.shape[:2], heads, dim).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(dim)
        scores = scores * mask - 10000.0 * (1.0 - mask)
        context = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)
        h = h + layer.attention.dense(context)
        x = layer.post_attention_layernorm(h)
        h = h + layer.mlp.dense_4h_to_h(F.gelu(layer.mlp.dense_h_to_4h(x), approximate="tanh"))
    return F.linear(glm.transformer.final_layernorm(h), glm.word_embeddings.weight)


def sep_mask(sep: torch.Tensor, length: int) -> torch.Tensor:
    causal = torch.ones(length, length).tril()
    visible = (torch.arange(length)[None, :] < sep[:, None]).float()[:, None, :]
    return torch.maximum(causal[None], visible)[:, None]  # [B, 1, L, L]


def random_inputs(batch=3, length=20, vocab=97, max_position=64):
    ids = torch.randint(0, vocab, (batch, length))
    positions = torch.randint(0, max_position + 1, (batch, 2, length))
    return ids, positions


def test_sep_forms_equal_explicit_masks_and_reference_maths():
    model = tiny_model()
    ids, positions = random_inputs()
    sep = torch.tensor([5, 20, 0])
    with torch.no_grad():
        by_sep = model(ids, positions, sep).logits
        by_mask = model(ids, positions, sep_mask(sep, 20)).logits
        by_maths = reference_attention_forward(model, ids, positions, sep_mask(sep, 20))
        by_scalar = model(ids, positions, 7).logits
        by_scalar_mask = model(ids, positions, sep_mask(torch.full((3,), 7), 20)).logits
    torch.testing.assert_close(by_sep, by_mask, atol=1e-5, rtol=0)
    torch.testing.assert_close(by_sep, by_maths, atol=1e-5, rtol=0)
    torch.testing.assert_close(by_scalar, by_scalar_mask, atol=1e-5, rtol=0)


def test_query_that_sees_nothing_averages_all_keys_like_the_original():
    model = tiny_model()
    ids, positions = random_inputs(batch=2, length=10)
    mask = sep_mask(torch.tensor([4, 6]), 10)
    mask[:, :, 8:] = 0  # padding queries that may attend to no key
    with torch.no_grad():
        logits = model(ids, positions, mask).logits
        expected = reference_attention_forward(model, ids, positions, mask)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_batched_forward_equals_one_by_one():
    model = tiny_model()
    ids, positions = random_inputs()
    sep = torch.tensor([3, 11, 17])
    with torch.no_grad():
        batched = model(ids, positions, sep).logits
        single = torch.cat([model(ids[i : i + 1], positions[i : i + 1], sep[i : i + 1]).logits for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


def test_full_sequence_logits_equal_cached_steps_for_32_tokens():
    model = tiny_model()
    context_length, new = 10, 32
    ids = torch.randint(0, 97, (2, context_length + new))
    positions = torch.cat(
        [
            torch.stack([torch.arange(context_length), torch.zeros(context_length, dtype=torch.long)]),
            torch.stack([torch.full((new,), context_length - 1), torch.arange(1, new + 1)]),
        ],
        dim=1,
    ).expand(2, 2, -1)
    with torch.no_grad():
        full = model(ids, positions, context_length).logits
        out = model(ids[:, :context_length], positions[..., :context_length], context_length, use_cache=True)
        steps = [out.logits]
        for i in range(context_length, context_length + new):
            out = model(ids[:, i : i + 1], positions[..., i : i + 1], cache=out.cache, use_cache=True)
            steps.append(out.logits)
    assert out.cache.get_seq_length() == context_length + new
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)


def test_cache_takes_several_tokens_and_the_deprecated_name():
    model = tiny_model()
    ids, positions = random_inputs(batch=2, length=16)
    sep = torch.tensor([6, 9])
    with torch.no_grad():
        full = model(ids, positions, sep).logits
        first = model(ids[:, :9], positions[..., :9], sep, use_cache=True)
        # new tokens with an explicit mask over cached + new keys, through the deprecated argument name
        rest = model(ids[:, 9:], positions[..., 9:], sep_mask(sep, 16)[:, :, 9:], past_key_values=first.cache)
    torch.testing.assert_close(torch.cat([first.logits, rest.logits], 1), full, atol=1e-5, rtol=0)


def test_one_dimensional_positions_without_block_table():
    model = tiny_model(block_position_encoding=False)
    assert not hasattr(model.glm.transformer, "block_position_embeddings")
    ids, positions = random_inputs(batch=2, length=8)
    with torch.no_grad():
        flat = model(ids, positions[:, 0], 3).logits
        stacked = model(ids, positions, 3).logits  # the block row is ignored
    torch.testing.assert_close(flat, stacked)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_follows_fp32(dtype):
    model = tiny_model()
    ids, positions = random_inputs()
    with torch.no_grad():
        low = model.to(dtype)(ids, positions, 5).logits
        reference = model.float()(ids, positions, 5).logits  # the same (rounded) weights in fp32
        ignoring_sep = model(ids, positions, 0).logits
    assert low.dtype == dtype
    error = float((low.float() - reference).abs().max())
    # activations rounded to the dtype at every layer: a few units of its epsilon on logits of size ~0.5 ...
    assert error < (2e-2 if dtype == torch.bfloat16 else 3e-3)
    # ... far below what a wrong mask changes (the original measured ~0.08 at this size)
    assert error < float((ignoring_sep - reference).abs().max()) / 4


@pytest.fixture
def cpu_without_half_gemm(monkeypatch):
    """Force the fp32-product path of half precision, whatever this CPU supports."""
    monkeypatch.setattr(half_ops, "cpu_lacks_gemm", lambda dtype: True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_products_through_fp32_round_once(cpu_without_half_gemm, dtype):
    torch.manual_seed(0)
    x, weight, bias = torch.randn(3, 5, 48).to(dtype), torch.randn(24, 48).to(dtype), torch.randn(24).to(dtype)
    # Reference: exact products and sums in float64 of the half-precision operands, rounded once.
    exact = (x.double() @ weight.double().T + bias.double()).to(dtype)
    out = model_module.linear(x, weight, bias)
    assert out.dtype == dtype
    ulp = torch.finfo(dtype).eps * exact.double().abs().clamp_min(1.0)
    assert ((out.double() - exact.double()).abs() <= ulp).all()
    # Under autocast, fp32 operands are rounded as autocast rounds them and the result has autocast's dtype.
    with torch.autocast("cpu", dtype=dtype):
        auto = model_module.linear(x.float(), weight.float(), bias.float())
        attended = model_module.attention(*(torch.randn(2, 4, 6, 8) for _ in range(3)), None, True, 0.0)
    assert auto.dtype == dtype and attended.dtype == dtype
    torch.testing.assert_close(auto, out, atol=0, rtol=0)


def test_half_precision_training_step_through_fp32_products(monkeypatch):
    """The fp32-product path gives the native half-precision loss and gradients (to half-precision noise)."""
    reference = tiny_model()
    ids, positions = random_inputs()
    losses, grads = [], []
    for lacks_gemm in (False, True):  # torch's own bf16 kernels, then the fp32-product path
        monkeypatch.setattr(half_ops, "cpu_lacks_gemm", lambda dtype, lacks=lacks_gemm: lacks)
        model = tiny_model().to(torch.bfloat16)
        model.load_state_dict(reference.state_dict())
        loss = model(ids, positions, 5, labels=ids).loss
        loss.backward()
        assert model.glm.word_embeddings.weight.grad.dtype == torch.bfloat16
        losses.append(loss.float())
        grads.append(model.glm.word_embeddings.weight.grad.float())
    torch.testing.assert_close(losses[1], losses[0], atol=0.02, rtol=0.01)
    assert (grads[1] - grads[0]).abs().max() < 0.02 * grads[0].abs().max()


# ---------------------------------------------------------------------------------------------------------------
# Dropout on CPU (a 16-bit keep mask; attention a few heads at a time, probabilities recomputed backward)


def test_dropout_zeroes_about_p_and_scales_the_rest():
    x = torch.randn(400, 500, requires_grad=True)
    y = model_module.Dropout(0.25).train()(x)
    kept = y != 0
    assert abs((~kept).float().mean().item() - 0.25) < 4 * math.sqrt(0.25 * 0.75 / x.numel())
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.75)
    assert torch.equal(model_module.Dropout(0.25).eval()(x), x)


def _dropout_attention(query, key, value, mask, p, seed=1):
    torch.manual_seed(seed)
    return dropout_ops.DropoutAttention.apply(query, key, value, mask, p)


@pytest.mark.parametrize("mask_batch", [None, 1, 2])
def test_dropout_attention_gradients_match_finite_differences(mask_batch):
    """Backward regenerates the forward's keep masks: float64 gradcheck through dropout at p = 0.3."""
    torch.manual_seed(0)
    query, key, value = (torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = None
    if mask_batch:
        mask = torch.rand(mask_batch, 1, 5, 5) > 0.4
        mask[..., 0] = True  # every query sees a key
    assert torch.autograd.gradcheck(lambda q, k, v: _dropout_attention(q, k, v, mask, 0.3), (query, key, value))


def test_dropout_attention_drops_probabilities_and_rescales():
    """With one-hot values the output is the dropped probability matrix itself."""
    torch.manual_seed(0)
    length, p = 64, 0.25
    query, key = (torch.randn(2, 4, length, 16) for _ in range(2))
    value = torch.eye(length).expand(2, 4, length, length).contiguous()
    mask = torch.ones(length, length, dtype=torch.bool).tril_()[None, None]
    probs = torch.softmax((query @ key.transpose(-1, -2) / 4).masked_fill(~mask, float("-inf")), dim=-1)
    out = _dropout_attention(query, key, value, mask, p)
    kept = out != 0
    dropped = (~kept & mask).sum().item() / (mask.sum().item() * 8)
    assert abs(dropped - p) < 4 * math.sqrt(p * (1 - p) / (mask.sum().item() * 8))
    assert not kept[~mask.expand_as(kept)].any()
    torch.testing.assert_close(out[kept], probs[kept] / (1 - p))
    assert not torch.equal(out, _dropout_attention(query, key, value, mask, p, seed=2))


@pytest.mark.parametrize("mask_kind", ["none", "causal", "sep"])
def test_dropout_attention_without_drops_equals_sdpa(mask_kind):
    torch.manual_seed(0)
    query, key, value = (torch.randn(2, 4, 9, 8, requires_grad=True) for _ in range(3))
    mask = torch.arange(9)[None, :] < torch.tensor([[3], [6]]) if mask_kind == "sep" else None
    if mask is not None:
        mask = (mask[:, None, :] | torch.ones(9, 9, dtype=torch.bool).tril())[:, None]
    is_causal = mask_kind == "causal"
    outs = [
        model_module.attention(query, key, value, mask, is_causal, dropout)  # 1e-9 rounds to dropping nothing
        for dropout in (0.0, 1e-9)
    ]
    grads = [torch.autograd.grad((out * out).sum(), (query, key, value)) for out in outs]
    torch.testing.assert_close(outs[1], outs[0])
    for ours, sdpa in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(ours, sdpa)


def test_gradient_checkpointing_replays_the_same_dropout():
    ids, positions = random_inputs(batch=2, length=12)
    results = []
    for checkpointing in (False, True):
        model = tiny_model(attention_dropout_prob=0.2, output_dropout_prob=0.2, embedding_dropout_prob=0.2).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        torch.manual_seed(3)
        loss = model(ids, positions, torch.tensor([4, 7]), labels=ids, use_cache=False).loss
        loss.backward()
        results.append((loss.detach(), model.glm.transformer.layers[0].attention.query_key_value.weight.grad))
    torch.testing.assert_close(results[1], results[0])


def test_decoding_head_copy_equals_the_tied_product_and_follows_weight_changes():
    model = tiny_model()
    hidden = torch.randn(1, 1, 32)
    weight = model.glm.word_embeddings.weight
    with torch.no_grad():
        torch.testing.assert_close(model.output_logits(hidden), hidden @ weight.T)
        weight.mul_(2.0)  # an in-place update (an optimizer step, load_state_dict) must not leave a stale copy
        torch.testing.assert_close(model.output_logits(hidden), hidden @ weight.T)
    assert model.output_logits(hidden).requires_grad  # with gradients: the tied product itself


def test_loss_is_unshifted_cross_entropy_ignoring_minus_100():
    model = tiny_model()
    ids, positions = random_inputs(batch=2, length=8)
    labels = torch.full_like(ids, -100)
    labels[:, 5:] = ids[:, 5:].roll(1, dims=1)
    out = model(ids, positions, 5, labels=labels)
    expected = F.cross_entropy(out.logits[:, 5:].reshape(-1, 97), labels[:, 5:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)


def test_gradient_checkpointing_keeps_the_mask():
    ids, positions = random_inputs(batch=2, length=12)
    labels = ids.roll(1, dims=1)
    sep = torch.tensor([4, 7])
    grads = []
    for checkpointing in (False, True):
        model = tiny_model().train()
        if checkpointing:
            model.activation_checkpointing_enable()
        loss = model(ids, positions, sep, labels=labels, use_cache=False).loss
        loss.backward()
        grads.append((loss.detach(), model.glm.transformer.layers[0].attention.query_key_value.weight.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


def test_initialisation_follows_the_original():
    config = tiny_config(hidden_size=256, num_attention_heads=4, num_layers=8, vocab_size=2000)
    model = GLMForConditionalGeneration(config)
    block = model.glm.transformer.layers[3]
    assert abs(block.attention.query_key_value.weight.std().item() - 0.02) < 0.002
    scaled = 0.02 / math.sqrt(2 * 8)
    assert abs(block.attention.dense.weight.std().item() - scaled) < 0.1 * scaled
    assert abs(block.mlp.dense_4h_to_h.weight.std().item() - scaled) < 0.1 * scaled
    assert abs(model.glm.word_embeddings.weight.std().item() - 0.02) < 0.002
    assert torch.equal(block.input_layernorm.weight, torch.ones(256))
    assert torch.equal(block.attention.dense.bias, torch.zeros(256))
    assert model.glm.transformer.position_embeddings.weight.shape[0] == config.max_sequence_length + 1


# ---------------------------------------------------------------------------------------------------------------
# Heads


def brute_force_choice_score(model, context, position_ids, sep, choice_tokens):
    """Score one choice by running context + sop + choice[:-1] as its own sequence."""
    ids = torch.cat([context, torch.tensor([1]), choice_tokens[:-1]])[None]
    n = len(choice_tokens)
    positions = torch.cat([position_ids, torch.stack([torch.full((n,), sep - 1), torch.arange(1, n + 1)])], dim=1)[None]
    log_probs = model(ids, positions, sep).logits.log_softmax(-1)[0, sep:]
    return log_probs[torch.arange(n), choice_tokens].sum()


def test_multiple_choice_packed_equals_one_sequence_per_choice():
    lm = tiny_model()
    mc = GLMForMultipleChoice(lm.config).eval()
    mc.load_state_dict(lm.state_dict())
    context = torch.randint(2, 97, (6,))
    context_positions = torch.stack([torch.arange(6), torch.zeros(6, dtype=torch.long)])
    choices = [torch.tensor([5, 9, 11]), torch.tensor([7])]
    # packed: context once, then each choice as its own part-B block (released layout)
    tokens, pos, block, indices = [context], [torch.arange(6)], [torch.zeros(6, dtype=torch.long)], []
    blocks = [torch.ones(6, 6)]
    start = 6
    for choice in choices:
        tokens.append(torch.cat([torch.tensor([1]), choice[:-1]]))
        pos.append(torch.full((len(choice),), 5))
        block.append(torch.arange(1, len(choice) + 1))
        indices.append(torch.arange(start, start + len(choice)))
        blocks.append(torch.ones(len(choice), len(choice)).tril())
        start += len(choice)
    mask = torch.block_diag(*blocks)
    mask[6:, :6] = 1
    with torch.no_grad():
        out = mc(
            torch.cat(tokens)[None],
            torch.stack([torch.cat(pos), torch.cat(block)])[None],
            mask[None, None],
            choice_ids=[choices],
            choice_indices=[indices],
            labels=torch.tensor([1]),
        )
        expected = torch.stack([brute_force_choice_score(lm, context, context_positions, 6, c) for c in choices])
    torch.testing.assert_close(out.logits[0], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss, F.cross_entropy(expected[None], torch.tensor([1])), atol=1e-5, rtol=0)

    # one sequence per choice with target_ids/logit_mask (the original SuperGLUE layout), length-normalised
    length = 9
    ids = torch.zeros(1, 2, length, dtype=torch.long)
    positions = torch.zeros(1, 2, 2, length, dtype=torch.long)
    targets = torch.zeros(1, 2, length, dtype=torch.long)
    logit_mask = torch.zeros(1, 2, length)
    for j, choice in enumerate(choices):
        n = len(choice)
        ids[0, j, : 7 + n - 1] = torch.cat([context, torch.tensor([1]), choice[:-1]])
        positions[0, j, 0, : 6 + n] = torch.cat([torch.arange(6), torch.full((n,), 5)])
        positions[0, j, 1, 6 : 6 + n] = torch.arange(1, n + 1)
        targets[0, j, 6 : 6 + n] = choice
        logit_mask[0, j, 6 : 6 + n] = 1
    with torch.no_grad():
        per_choice = mc(
            ids, positions, torch.tensor([[6, 6]]), target_ids=targets, logit_mask=logit_mask, length_penalty=1.0
        ).logits
    torch.testing.assert_close(per_choice[0], expected / torch.tensor([3.0, 1.0]), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "pool_token, index", [("cls", lambda sep: 0), ("start", lambda sep: sep), ("pad", lambda sep: sep - 1)]
)
def test_sequence_classification_pools_the_original_token(pool_token, index):
    model = tiny_model(GLMForSequenceClassification, pool_token=pool_token, num_labels=3)
    ids, positions = random_inputs(batch=2, length=10)
    sep = torch.tensor([4, 8])
    with torch.no_grad():
        out = model(ids, positions, sep, labels=torch.tensor([0, 2]))
        hidden = model.glm(ids, positions, sep).last_hidden_state
        pooled = torch.stack([hidden[i, index(int(sep[i]))] for i in range(2)])
        expected = model.out_proj(torch.tanh(model.dense(pooled)))
    torch.testing.assert_close(out.logits, expected)
    torch.testing.assert_close(out.loss, F.cross_entropy(expected, torch.tensor([0, 2])))
    # the sep= keyword pools the same token
    torch.testing.assert_close(model(ids, positions, sep=sep).logits, expected)


# ---------------------------------------------------------------------------------------------------------------
# Saving, loading, Auto classes


def test_save_pretrained_writes_safetensors_and_auto_classes_load_it(tmp_path):
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForMultipleChoice,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
    )

    model = tiny_model()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not (tmp_path / "pytorch_model.bin").exists()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "torchglm"
    ids, positions = random_inputs(batch=1, length=6)
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is GLMForConditionalGeneration
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, positions, 3).logits, model(ids, positions, 3).logits)
    assert type(AutoModel.from_pretrained(tmp_path)) is GLMModel
    assert type(AutoModelForMultipleChoice.from_pretrained(tmp_path)) is GLMForMultipleChoice
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path)  # a new head: allowed
    assert type(classifier) is GLMForSequenceClassification
    torch.testing.assert_close(classifier.glm.word_embeddings.weight, model.glm.word_embeddings.weight)


# ---------------------------------------------------------------------------------------------------------------
# Bad input


def test_position_ids_past_the_table_are_named():
    model = tiny_model()
    ids, positions = random_inputs(batch=1, length=4)
    positions[0, 0, 2] = 65
    with pytest.raises(ValueError, match=r"position id 65 is outside the table \[0, 64\]"):
        model(ids, positions, 2)
    positions[0, 0, 2], positions[0, 1, 1] = 0, 70
    with pytest.raises(ValueError, match=r"block position id 70 is outside the table \[0, 64\]"):
        model(ids, positions, 2)


def test_bad_sep_and_shapes_are_named():
    model = tiny_model()
    ids, positions = random_inputs(batch=2, length=5)
    with pytest.raises(ValueError, match=r"sep = 6 is outside \[0, 5\]"):
        model(ids, positions, torch.tensor([2, 6]))
    with pytest.raises(ValueError, match=r"sep = -1 is outside"):
        model(ids, positions, -1)
    with pytest.raises(ValueError, match="one per sample"):
        model(ids, positions, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"expected \[2, 2, 5\]"):
        model(ids, positions[..., :4], 2)
    with pytest.raises(ValueError, match=r"expected \[2, 1, 5, 5\]"):
        model(ids, positions, torch.ones(2, 1, 5, 4))
    with pytest.raises(ValueError, match=r"input_ids 97 is outside the table \[0, 96\]"):
        model(torch.full((2, 5), 97), positions, 2)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("pool_token", "mean", "pool_token must be one of"),
        ("hidden_size", 30, "not a multiple of num_attention_heads"),
        ("relative_encoding", True, "relative_encoding=True"),
        ("attention_dropout_prob", 1.5, "attention_dropout_prob must be in"),
    ],
)
def test_bad_config_values_are_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**{field: value})


def test_presets_match_the_original_sizes():
    large = GLMConfig.from_preset("10b")
    assert (large.num_layers, large.hidden_size, large.num_attention_heads) == (48, 4096, 64)
    assert GLMConfig.from_preset("base").intermediate_size == 4 * 768
    with pytest.raises(ValueError, match="unknown GLM preset 'huge'"):
        GLMConfig.from_preset("huge")
    with pytest.raises(ValueError, match=r"unknown GLMConfig field\(s\) \['width'\]"):
        GLMConfig.from_preset("tiny", width=3)


def test_folders_without_weights_or_with_wrong_keys_fail_clearly(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="has no weights"):
        GLMForConditionalGeneration.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        GLMForConditionalGeneration.from_pretrained(tmp_path / "missing")
    state = tiny_model().state_dict()
    state["glm.transformer.extra.weight"] = torch.zeros(2)
    del state["glm.transformer.final_layernorm.bias"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"missing keys \['glm.transformer.final_layernorm.bias'\]") as error:
        GLMForConditionalGeneration.from_pretrained(tmp_path)
    assert "glm.transformer.extra.weight" in str(error.value)


# ---------------------------------------------------------------------------------------------------------------
# The sep= and predict_at= keywords


def hand_mask(sep: list[int], length: int) -> torch.Tensor:
    """``[B, 1, L, L]`` written out query by query: key k visible to query q when k < sep or k <= q."""
    mask = torch.zeros(len(sep), 1, length, length, dtype=torch.long)
    for b, s in enumerate(sep):
        for q in range(length):
            for k in range(length):
                mask[b, 0, q, k] = int(k < s or k <= q)
    return mask


def test_sep_keyword_equals_attention_mask_as_sep_and_a_hand_built_mask():
    model = tiny_model()
    ids, positions = random_inputs(batch=3, length=9)
    with torch.no_grad():
        for sep in (torch.tensor([2, 9, 0]), 4):
            by_keyword = model(ids, positions, sep=sep).logits
            by_mask_argument = model(ids, positions, attention_mask=sep).logits
            values = sep.tolist() if torch.is_tensor(sep) else [sep] * 3
            by_hand = model(ids, positions, hand_mask(values, 9)).logits
            torch.testing.assert_close(by_keyword, by_mask_argument, atol=0, rtol=0)
            torch.testing.assert_close(by_keyword, by_hand, atol=1e-5, rtol=0)
        # the GLMModel trunk takes it too
        trunk = model.glm(ids, positions, sep=torch.tensor([2, 9, 0])).last_hidden_state
        torch.testing.assert_close(trunk, model.glm(ids, positions, hand_mask([2, 9, 0], 9)).last_hidden_state)
    with pytest.raises(ValueError, match="give sep or attention_mask, not both"):
        model(ids, positions, attention_mask=3, sep=3)
    with pytest.raises(ValueError, match="give sep or attention_mask, not both"):
        model(ids, positions, hand_mask([3, 3, 3], 9), sep=3)


def test_predict_at_gives_the_full_logits_at_those_positions_and_their_loss():
    model = tiny_model()
    ids, positions = random_inputs(batch=2, length=10)
    sep = torch.tensor([4, 6])
    labels = torch.randint(0, 97, (2, 10))
    labels[0, :4], labels[1, :6], labels[1, 8] = -100, -100, -100
    with torch.no_grad():
        full = model(ids, positions, sep=sep).logits
    for predict_at in (labels != -100, torch.rand(2, 10, generator=torch.Generator().manual_seed(1)) < 0.5):
        with torch.no_grad():
            out = model(ids, positions, sep=sep, labels=labels, predict_at=predict_at)
        rows, columns = predict_at.nonzero(as_tuple=True)  # row-major: the flattened order
        assert out.logits.shape == (int(predict_at.sum()), 97)
        torch.testing.assert_close(out.logits, full[rows, columns], atol=1e-5, rtol=0)
        wanted = labels[rows, columns]
        expected = F.cross_entropy(full[rows, columns][wanted != -100], wanted[wanted != -100])
        torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=0)
    # predicting at every labelled position: the loss of the whole batch
    with torch.no_grad():
        whole = model(ids, positions, sep=sep, labels=labels).loss
        at_labels = model(ids, positions, sep=sep, labels=labels, predict_at=labels != -100).loss
    expected = F.cross_entropy(full.flatten(0, 1), labels.flatten())
    torch.testing.assert_close(whole, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(at_labels, expected, atol=1e-5, rtol=0)


def test_multiple_choice_inputs_from_ids_score_each_choice_as_alone():
    """inputs_for_choices lays out contexts of different lengths with their choices (through torchglm.layout):
    every score equals the choice run alone after its context, and the cached core's score() agrees."""
    from torchglm.generation import score
    from torchglm.layout import Block

    lm = tiny_model()
    mc = GLMForMultipleChoice(lm.config).eval()
    mc.load_state_dict(lm.state_dict())
    generator = torch.Generator().manual_seed(5)
    contexts = [torch.randint(4, 97, (n,), generator=generator) for n in (7, 4)]
    for context in contexts:
        context[-1] = 3  # the blank, last: brute_force_choice_score's layout
    choices = [[[5, 9, 11], [7]], [[8, 8], [20, 30, 40, 50], [6]]]
    inputs = GLMForMultipleChoice.inputs_for_choices(
        [c.tolist() for c in contexts], choices, blank_ids=[3], sop_id=1, pad_id=0
    )
    with torch.no_grad():
        logits = mc(**inputs).logits
        for b, (context, row) in enumerate(zip(contexts, choices, strict=True)):
            n = len(context)
            positions = torch.stack([torch.arange(n), torch.zeros(n, dtype=torch.long)])
            for c, choice in enumerate(row):
                expected = brute_force_choice_score(lm, context, positions, n, torch.tensor(choice))
                torch.testing.assert_close(logits[b, c], expected, atol=1e-5, rtol=1e-5)
        assert logits[0, 2] == 0  # sample 0 has two choices: the third is padding, scored 0
    cached = score(lm, [c.tolist() for c in contexts], [[Block.span(1, ch, len(c) - 1) for ch in row]
                   for c, row in zip(contexts, choices, strict=True)])  # fmt: skip
    for b, row in enumerate(cached):
        assert [s.log_prob for s in row] == pytest.approx(logits[b, : len(row)].tolist(), abs=1e-5)

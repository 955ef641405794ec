"""AdamW parameter groups (no decay on LayerNorm and biases) and the learning-rate schedule at hand-computed steps."""

from __future__ import annotations

import math

import pytest
import torch

from torchglm import GLMConfig, GLMForConditionalGeneration
from torchglm.train.config import OptimConfig, ScheduleConfig
from torchglm.train.optim import build_optimizer, build_scheduler, lr_factor, param_groups


def test_param_groups_of_glm():
    model = GLMForConditionalGeneration(GLMConfig.from_preset("tiny", vocab_size=256))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(n.endswith(".weight") for n in decay["names"])
    assert not any("layernorm" in n for n in decay["names"])
    assert "glm.word_embeddings.weight" in decay["names"]  # embeddings decay, as in the original
    assert "glm.transformer.layers.0.attention.query_key_value.weight" in decay["names"]
    assert "glm.transformer.final_layernorm.weight" in no_decay["names"]
    assert "glm.transformer.layers.1.input_layernorm.bias" in no_decay["names"]
    assert "glm.transformer.layers.0.mlp.dense_h_to_4h.bias" in no_decay["names"]
    # every parameter exactly once (the tied output projection is the word embedding)
    named = dict(model.named_parameters())
    assert sorted(decay["names"] + no_decay["names"]) == sorted(named)
    layernorm_params = 2 * (2 * 2 + 1)  # two per LayerNorm, two per block + the final one
    linear_biases = 4 * 2
    assert len(no_decay["names"]) == layernorm_params + linear_biases


def test_optimizer_settings():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optimizer = build_optimizer(model, OptimConfig(lr=2e-4, betas=[0.9, 0.95], eps=1e-8, weight_decay=0.1))
    assert isinstance(optimizer, torch.optim.AdamW)
    groups = optimizer.param_groups
    assert [len(g["params"]) for g in groups] == [1, 3]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert groups[0]["betas"] == (0.9, 0.95) and groups[0]["eps"] == 1e-8 and groups[0]["lr"] == 2e-4


@pytest.mark.parametrize(
    "step, style, expected",
    [
        (1, "cosine", 0.01),  # warmup: step / 100
        (50, "cosine", 0.5),
        (100, "cosine", 1.0),  # peak at the end of the warmup
        (550, "cosine", 0.1 + 0.9 * 0.5),  # half-way through the decay: (1 + cos(pi/2)) / 2
        (325, "cosine", 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))),
        (1000, "cosine", 0.1),
        (5000, "cosine", 0.1),  # constant after decay_steps
        (550, "linear", 1 - 0.9 * 0.5),
        (1000, "linear", 0.1),
        (700, "constant", 1.0),
    ],
)
def test_lr_factor_at_hand_computed_steps(step, style, expected):
    assert lr_factor(step, 100, 1000, style, 0.1) == pytest.approx(expected, abs=1e-12)


def test_scheduler_drives_the_optimizer():
    """The k-th update uses the rate of step k: warmup 4 to 1e-3, cosine to 0.1 x at step 8."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1e-3)
    scheduler = build_scheduler(optimizer, ScheduleConfig(warmup_steps=4, decay_style="cosine", min_lr_ratio=0.1), 8)
    seen = []
    for _ in range(10):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [2.5e-4, 5e-4, 7.5e-4, 1e-3]
    expected += [1e-4 + 9e-4 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(1, 5)]
    expected += [1e-4, 1e-4]
    assert seen == pytest.approx(expected, rel=1e-12)
    state = scheduler.state_dict()
    assert state["last_epoch"] == 10


def test_no_warmup_starts_at_peak():
    assert lr_factor(1, 0, 10, "linear", 0.0) == pytest.approx(0.9)
    assert lr_factor(1, 0, 10, "constant", 0.0) == 1.0

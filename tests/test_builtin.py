"""The built-in glm-tiny-en: it loads by name, its tokenizer round-trips, greedy fills are deterministic and
made of known tokens, and it models WikiText-103 test text far better than the same architecture untrained."""

from __future__ import annotations

import pytest
import torch

from torchglm import GLMForConditionalGeneration, GLMTokenizer
from torchglm.builtin import BUILTIN_MODELS, DEFAULT_MODEL
from torchglm.generation import fill
from torchglm.tasks import evaluate_perplexity, read_perplexity_text

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def builtin():
    if not (BUILTIN_MODELS[DEFAULT_MODEL] / "config.json").is_file():
        pytest.skip(f"{BUILTIN_MODELS[DEFAULT_MODEL]} holds no model in this checkout")
    model = GLMForConditionalGeneration.from_pretrained(DEFAULT_MODEL).eval()
    return model, GLMTokenizer.from_pretrained(DEFAULT_MODEL)


def test_it_loads_by_name_in_float32_and_is_small(builtin):
    model, tokenizer = builtin
    assert next(model.parameters()).dtype == torch.float32
    assert model.config.vocab_size >= tokenizer.num_tokens
    on_disk = sum(f.stat().st_size for f in BUILTIN_MODELS[DEFAULT_MODEL].iterdir())
    assert on_disk <= 25 * 2**20


def test_the_tokenizer_round_trips(builtin):
    _, tokenizer = builtin
    for text in ["Tsinghua University is located in Beijing.", "It was the best of times, it was the worst…",
                 "Numbers 1,024 and 3.14; quotes \"here\" and 'there'; naïve café"]:  # fmt: skip
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_greedy_fills_are_deterministic_and_made_of_known_tokens(builtin):
    model, tokenizer = builtin
    texts = ["The king said that [MASK] would come to the castle.", "She opened the door. [sMASK] Then she left.",
             "It was a dark and stormy night [gMASK]"]  # fmt: skip
    first = fill(model, tokenizer, texts, max_new_tokens=12)
    again = fill(model, tokenizer, texts, max_new_tokens=12)
    for a, b in zip(first, again, strict=True):
        assert [blank.token_ids for blank in a.blanks] == [blank.token_ids for blank in b.blanks]
        for blank in a.blanks:
            assert blank.token_ids and all(0 <= t < tokenizer.num_tokens for t in blank.token_ids)
            assert "\ufffd" not in blank.text  # byte-level BPE: no unknown token, no broken character


def test_it_models_wikitext_far_better_than_untrained_weights(builtin, shared_dir, tmp_path):
    model, tokenizer = builtin
    raw = (shared_dir / "data" / "wikitext" / "wikitext-103" / "wiki.test.tokens").read_text(encoding="utf-8")
    path = tmp_path / "slice.tokens"
    path.write_text("".join(raw.splitlines(keepends=True)[:60]), encoding="utf-8")
    text = read_perplexity_text(path)
    trained = evaluate_perplexity(model, tokenizer, text, seq_length=256, overlap=128)
    torch.manual_seed(0)
    untrained = GLMForConditionalGeneration(model.config).eval()
    random = evaluate_perplexity(untrained, tokenizer, text, seq_length=256, overlap=128)
    assert random.ppl > 0.5 * model.config.vocab_size  # an untrained model is close to uniform
    assert trained.ppl < random.ppl / 10


def test_the_cli_prints_the_models_size_and_load_time(builtin, capsys):
    from torchglm.cli import main

    assert main(["fill", "The sea is [MASK]."]) == 0
    model, _ = builtin
    parameters = sum(p.numel() for p in model.parameters())
    on_disk = (BUILTIN_MODELS[DEFAULT_MODEL] / "model.safetensors").stat().st_size
    line = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("model glm-tiny-en:"))
    assert f"{parameters / 1e6:.2f}M parameters, {on_disk / 1e6:.1f} MB on disk, loaded in " in line

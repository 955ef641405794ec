"""``AutoTokenizer.from_pretrained`` on folders torchglm saved: the original ids, as ``GLMTokenizer`` gives them."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

import torchglm  # noqa: F401  registers the GLM tokenizer classes with AutoTokenizer
from torchglm import GLMConfig
from torchglm.tokenization import GLMTokenizer, train_tokenizer

FAMILIES = ["bert-large-uncased", "gpt2", "roberta", "chinese-sp-fix", "chinese-sp"]
ATTRIBUTES = {
    "pad": "pad_token_id",
    "eos": "eos_token_id",
    "ENC": "cls_token_id",
    "sep": "sep_token_id",
    "MASK": "mask_token_id",
    "unk": "unk_token_id",
    "sop": "sop_token_id",
    "eop": "eop_token_id",
    "gMASK": "gmask_token_id",
    "sMASK": "smask_token_id",
}


@pytest.fixture(scope="module")
def golden(shared_dir):
    return json.loads((shared_dir / "golden" / "tokenizers.json").read_text())


def build(family: str, vocab_dir):
    """The family as the original framework was configured for it (tests/test_tokenization.py does the same)."""
    if family == "bert-large-uncased":
        return GLMTokenizer.from_bert_vocab(vocab_dir / "bert-uncased-vocab.txt")
    if family in ("gpt2", "roberta"):
        return getattr(GLMTokenizer, f"from_{family}_vocab")(
            vocab_dir / f"{family}-vocab.json", vocab_dir / f"{family}-merges.txt"
        )
    return GLMTokenizer.from_sentencepiece(vocab_dir / "cog-pretrain.model", legacy_gmask=family == "chinese-sp")


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_tokenizer_reads_a_saved_folder_of_each_family(shared_dir, golden, family, tmp_path):
    build(family, shared_dir / "data" / "vocab").save_pretrained(tmp_path)
    auto = AutoTokenizer.from_pretrained(tmp_path)
    direct = GLMTokenizer.from_pretrained(tmp_path)
    assert isinstance(auto, GLMTokenizer) and type(auto) is type(direct)
    expected = golden[family]
    for name, attribute in ATTRIBUTES.items():
        assert getattr(auto, attribute) == expected["command_tokens"].get(name), name
    assert len(auto) == expected["num_tokens"]
    texts = [case["text"] for case in expected["cases"]]
    for text, case in zip(texts, expected["cases"], strict=True):
        assert auto.encode(text, add_special_tokens=False) == case["ids"], text
    assert auto(texts, padding=True)["input_ids"] == direct(texts, padding=True)["input_ids"]


def test_auto_tokenizer_reads_a_model_folder_and_a_config_without_class(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 50 + "a blank [MASK] here\n")
    folder = tmp_path / "model"
    trained = train_tokenizer([str(corpus)], kind="bpe", vocab_size=300, save_directory=str(folder))
    GLMConfig(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=len(trained)).save_pretrained(folder)
    text = "the lazy fox [MASK] over [gMASK]"
    expected = trained.encode(text)
    assert expected[-2] == trained.gmask_token_id  # the command tokens are there to compare
    assert AutoTokenizer.from_pretrained(folder).encode(text) == expected
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    del config["tokenizer_class"]  # then the model config's registered tokenizer reads the folder
    config_file.write_text(json.dumps(config))
    auto = AutoTokenizer.from_pretrained(folder)
    assert isinstance(auto, GLMTokenizer) and auto.encode(text) == expected


def test_auto_tokenizer_reads_a_released_folder_as_glm_tokenizer_does(shared_dir):
    folder = shared_dir / "golden" / "glm-ref-fill"
    cases = json.loads((folder / "fill_cases.json").read_text())["cases"]
    auto = AutoTokenizer.from_pretrained(folder)
    assert isinstance(auto, GLMTokenizer)
    for case in cases:  # the original generator's context: [CLS] text (+ eos unless it ends with [gMASK])
        ids = auto.encode(case["text"], add_special_tokens=False)
        assert ids == case["context_ids"][1 : 1 + len(ids)], case["text"]
        assert auto.encode(case["text"]) == GLMTokenizer.from_pretrained(folder).encode(case["text"])

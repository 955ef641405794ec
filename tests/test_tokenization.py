"""The four GLM tokenizer families against the original framework: golden ids, an independent re-statement of
the original ``EncodeAsIds`` rule on corpus lines and odd texts, round trips, the transformers API, loading,
saving, training and bad input."""

from __future__ import annotations

import json
import pickle
import random
import unicodedata
from functools import cache

import pytest
import regex
import torch
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.models.bert.tokenization_bert_legacy import BasicTokenizer, WordpieceTokenizer

from torchglm.tokenization import GLMChineseTokenizer, GLMTokenizer, GLMTokenizerFast, train_tokenizer
from torchglm.tokenization.loading import read_vocab_json, read_vocab_txt

FAMILIES = ["bert-large-uncased", "gpt2", "roberta", "chinese-sp-fix", "chinese-sp"]


@pytest.fixture(scope="module")
def vocab_dir(shared_dir):
    return shared_dir / "data" / "vocab"


@pytest.fixture(scope="module")
def tokenizers(vocab_dir):
    """One tokenizer per golden family, built the way the original framework was configured for it."""
    return {
        "bert-large-uncased": GLMTokenizer.from_bert_vocab(vocab_dir / "bert-uncased-vocab.txt"),
        "gpt2": GLMTokenizer.from_gpt2_vocab(vocab_dir / "gpt2-vocab.json", vocab_dir / "gpt2-merges.txt"),
        "roberta": GLMTokenizer.from_roberta_vocab(vocab_dir / "roberta-vocab.json", vocab_dir / "roberta-merges.txt"),
        "chinese-sp-fix": GLMTokenizer.from_sentencepiece(vocab_dir / "cog-pretrain.model"),
        "chinese-sp": GLMTokenizer.from_sentencepiece(vocab_dir / "cog-pretrain.model", legacy_gmask=True),
    }


@pytest.fixture(scope="module")
def golden(shared_dir):
    return json.loads((shared_dir / "golden" / "tokenizers.json").read_text())


# ---------------------------------------------------------------------------------------------------------------
# Golden ids of the original framework

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


@pytest.mark.parametrize("family", FAMILIES)
def test_command_token_ids_and_vocab_size(tokenizers, golden, family):
    tok, expected = tokenizers[family], golden[family]
    for name, attribute in ATTRIBUTES.items():
        assert getattr(tok, attribute) == expected["command_tokens"].get(name), name
    assert tok.num_tokens == len(tok) == expected["num_tokens"]
    masks = [expected["command_tokens"].get(name) for name in ("MASK", "sMASK", "gMASK")]
    assert tok.mask_token_ids == [m for m in masks if m is not None]


@pytest.mark.parametrize("family", FAMILIES)
def test_encode_matches_original_ids(tokenizers, golden, family):
    tok = tokenizers[family]
    for case in golden[family]["cases"]:
        assert tok.encode(case["text"], add_special_tokens=False) == case["ids"], case["text"]
        assert tok(case["text"], add_special_tokens=False)["input_ids"] == case["ids"]
    texts = [case["text"] for case in golden[family]["cases"]]
    assert tok(texts, add_special_tokens=False)["input_ids"] == [case["ids"] for case in golden[family]["cases"]]


def test_num_command_tokens_as_counted_by_the_original(tokenizers):
    counts = {family: tok.num_command_tokens for family, tok in tokenizers.items()}
    assert counts == {"bert-large-uncased": 10, "gpt2": 10, "roberta": 8, "chinese-sp-fix": 10, "chinese-sp": 10}


def test_released_bert_folder_reproduces_lm_eval_and_fill_inputs(shared_dir):
    """glm-ref-fill is a released-format folder; the original's LAMBADA contexts and answers, its WikiText token
    count and its interactive-generation contexts were all built with that tokenizer."""
    folder = shared_dir / "golden" / "glm-ref-fill"
    tok = GLMTokenizer.from_pretrained(folder)
    assert isinstance(tok, GLMTokenizerFast) and tok.glm_kind == "bert" and tok.num_tokens == 30526
    lm_eval = json.loads((shared_dir / "golden" / "lm-eval.json").read_text())
    wikitext = lm_eval["wikitext_detokenized_text"]
    assert (
        len(tok.encode(wikitext, add_special_tokens=False)) == lm_eval["wikitext_bidirectional"]["num_tokenized_tokens"]
    )
    lines = (shared_dir / "data" / "lambada" / "lambada_test.jsonl").read_text().splitlines()
    for example in lm_eval["lambada_bidirectional"]["examples"]:
        text = json.loads(lines[example["index"]])["text"]
        last = text.split()[-1]
        ids = example["input_ids"]
        context = tok.encode(text[: text.rfind(last)].strip(), add_special_tokens=False)
        assert ids[1 : ids.index(tok.gmask_token_id)] == context[len(context) - ids.index(tok.gmask_token_id) + 1 :]
        answer = [t for t, m in zip(example["target_ids"], example["loss_mask"], strict=True) if m]
        assert tok.encode(" " + last, add_special_tokens=False) == answer
    fill = json.loads((folder / "fill_cases.json").read_text())
    for case in fill["cases"]:
        text = case["text"]
        if not any(m in text for m in ("[MASK]", "[sMASK]", "[gMASK]")):
            text += " [gMASK]"
        ids = tok(text)["input_ids"]
        expected = ids[:-1] if text.endswith("[gMASK]") else ids  # the generator drops eos after a final [gMASK]
        assert case["context_ids"] == expected, case["text"]


# ---------------------------------------------------------------------------------------------------------------
# An independent statement of the original EncodeAsIds: split on each command string in turn (stripping the text
# to the left of an lstrip token), then the family's plain Python text tokenizer on every piece.


def reference_split(tok, text: str) -> list:
    if not text.strip():
        return []
    strings = {t.token for t in tok.command_tokens}
    pieces = [text]
    for command in tok.command_tokens:
        out = []
        for piece in pieces:
            if piece in strings:
                out.append(piece)
                continue
            parts = piece.split(command.token)
            for i, part in enumerate(parts):
                if command.lstrip and i < len(parts) - 1:
                    part = part.rstrip()
                if part:
                    out.append(part)
                if i < len(parts) - 1:
                    out.append(command.token)
        pieces = out
    return pieces


@cache
def python_text_encoder(family: str, vocab_dir):
    """The text tokenizers the original wrapped, in plain Python (transformers' legacy BERT classes; GPT-2 BPE
    written out; SentencePiece itself)."""
    if family.startswith("bert"):
        vocab = read_vocab_txt(vocab_dir / "bert-uncased-vocab.txt")
        basic = BasicTokenizer(do_lower_case=True, never_split=[])
        wordpiece = WordpieceTokenizer(vocab, "[UNK]", 100)
        return lambda text: [vocab[p] for w in basic.tokenize(text) for p in wordpiece.tokenize(w)]
    if family in ("gpt2", "roberta"):
        vocab = read_vocab_json(vocab_dir / f"{family}-vocab.json")
        lines = (vocab_dir / f"{family}-merges.txt").read_text(encoding="utf-8").split("\n")[1:]
        ranks = {tuple(line.split()): i for i, line in enumerate(lines) if line}
        byte_map = bytes_to_unicode()
        pattern = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")

        @cache
        def bpe(word: str) -> tuple[str, ...]:
            parts = list(word)
            while len(parts) > 1:
                pairs = [(ranks.get(p, float("inf")), i) for i, p in enumerate(zip(parts, parts[1:], strict=False))]
                rank, _ = min(pairs)
                if rank == float("inf"):
                    break
                pair, merged, i = min(pairs)[1], [], 0
                first, second = parts[pair], parts[pair + 1]
                while i < len(parts):  # merge every occurrence of the best pair, left to right
                    if i < len(parts) - 1 and parts[i] == first and parts[i + 1] == second:
                        merged.append(first + second)
                        i += 2
                    else:
                        merged.append(parts[i])
                        i += 1
                parts = merged
            return tuple(parts)

        def encode(text):
            words = ["".join(byte_map[b] for b in w.encode("utf-8")) for w in pattern.findall(text)]
            return [vocab[p] for w in words for p in bpe(w)]

        return encode
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(vocab_dir / "cog-pretrain.model"))
    return sp.encode


def reference_encode(tok, family: str, vocab_dir, text: str) -> list[int]:
    ids, strings = [], tok.layout.string_to_id
    for piece in reference_split(tok, text):
        ids += [strings[piece]] if piece in strings else python_text_encoder(family, vocab_dir)(piece)
    return ids


UNICODE_TEXTS = [
    "Crème brûlée à la carte, naïve façade, Ångström, İstanbul, straße, ǅ",
    "ΟΔΟΣ ΟΔΟΣ. Σ σ ς ΑΣ",
    "emoji 😀👍🏽 👨‍👩‍👧 ❤️ flags 🇨🇳🇺🇸",
    "清华大学位于北京。 北京 是中国的首都，Tsinghua is in 北京.",
    "日本語のテキスト、한국어 텍스트, ภาษาไทย, العربية, עברית, हिन्दी",
    "zero\u200bwidth\u200djoiner\ufeffbom \u0000nul \ufffd replacement \u0085 next-line \u2028 sep",
    "tabs\tand\nnewlines\r\nand  double  spaces  ",
    "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３ ｶﾀｶﾅ ①②③ ½ ﬁ ligature",
    "numbers 3.14159 1,000,000 10^6 $5 €10 #hash @at user@example.com http://x.org/a?b=c",
    "'s 're 've 'm 'll 'd isn't they've I'M",
    "x" * 120 + " " + "ab" * 60,
    "\U0002b820\U0002b827 \U00013437 \u08d3 \u0378 unassigned",
]
ODD_TEXTS = UNICODE_TEXTS + [
    "",
    "   ",
    "\n\t \u3000",
    "[MASK]",
    " [MASK] ",
    "in [MASK][MASK]  [MASK]. ",
    "a\u00a0[MASK]\u2003b",
    "a\x1c[MASK]\x1fb",
    "[mask] [Mask] [MASK ] [[MASK]]",
    "[sMASK] [gMASK] [dBLOCK] [CLS] x [SEP] y [UNK] z [PAD]",
    "<|endoftext|>text<|endoftext|> <|startofpiece|> <|endofpiece|>",
    "<s> </s> <mask> <unk> <pad>",
    "ΑΣ[MASK] ΟΔΟΣ [MASK]😀 清华[gMASK]北京 é\u200b[sMASK]",
]


def corpus_lines(shared_dir, n: int) -> list[str]:
    lines = []
    for path in sorted((shared_dir / "data" / "corpus" / "gutenberg").glob("*.txt"))[:6]:
        lines += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()][200:260]
    return lines[:n]


def chinese_lines(shared_dir, n: int) -> list[str]:
    lines = []
    for name in ("tnews/dev_few_all.json", "afqmc/dev.json", "cluewsc/dev_few_all.json"):
        for row in (shared_dir / "data" / "clue" / name).read_text(encoding="utf-8").splitlines()[:120]:
            record = json.loads(row)
            lines += [v for k, v in record.items() if k in ("sentence", "sentence1", "sentence2", "text") and v]
    return lines[:n]


def fuzz_texts(seed: int, n: int) -> list[str]:
    """Random mixtures of letters, CJK, emoji, marks, whitespace and (partial) command strings."""
    rng = random.Random(seed)
    atoms = list("aZ9 .,'-\t\n") + ["  ", "\u3000", "\x1c", "é", "Σ", "ß", "İ", "ﬁ", "\u0301", "😀", "👨‍👩‍👧", "清华"]
    atoms += ["\u200b", "\x00", "\U0002b827", "\u08d3", "[MASK]", "[sMASK]", "[gMASK]", "[CLS]", "[SEP]"]
    atoms += ["<|endoftext|>", "<|endofpiece|>", "[MAS", "K]", "<s>", "[PAD]", "[UNK]"]
    return ["".join(rng.choice(atoms) for _ in range(rng.randint(1, 14))) for _ in range(n)]


@pytest.mark.parametrize("family", FAMILIES)
def test_encode_follows_the_original_rule(tokenizers, shared_dir, vocab_dir, family):
    tok = tokenizers[family]
    texts = ODD_TEXTS + corpus_lines(shared_dir, 150) + chinese_lines(shared_dir, 40) + fuzz_texts(0, 150)
    for text in texts:
        assert tok.encode(text, add_special_tokens=False) == reference_encode(tok, family, vocab_dir, text), repr(text)
    batch = tok(texts, add_special_tokens=False)["input_ids"]
    assert batch == [tok.encode(t, add_special_tokens=False) for t in texts]


@pytest.mark.parametrize("family", ["bert-large-uncased", "gpt2", "roberta"])
def test_rust_path_agrees_with_python_path(tokenizers, family):
    """Texts the fast path keeps in Rust give the ids of the Python rule; the others are routed away from it."""
    tok = tokenizers[family]
    texts = ODD_TEXTS + fuzz_texts(1, 300)
    for text in texts:
        if not tok._needs_python(text):
            rust = tok.backend_tokenizer.encode(text, add_special_tokens=False).ids
            assert rust == tok._encode_text(text), repr(text)
    for i in range(0, len(texts), 3):  # the whole-batch check agrees with the per-text one
        batch = ["plain text", *texts[i : i + 3]]
        assert tok._plain_batch(batch) == (not any(map(tok._needs_python, batch))), batch


# ---------------------------------------------------------------------------------------------------------------
# Hand-checked command-token handling


@pytest.mark.parametrize(
    "family, text, expected",
    [
        ("gpt2", "in [MASK] now", [259, 50260, 783]),  # " " before [MASK] eaten, the one after kept
        ("gpt2", "in [CLS] now", [259, 220, 50259, 783]),  # [CLS] does not strip
        ("gpt2", "a  [gMASK]", [64, 50263]),
        ("gpt2", "[MASK][sMASK] [gMASK]", [50260, 50264, 50263]),
        ("gpt2", "x<|endoftext|>y", [87, 50256, 88]),
        ("gpt2", " \t\n ", []),
        ("roberta", "[sMASK]", [10975, 29, 32804, 530, 742]),  # no task masks: plain text
        ("roberta", "a <|endoftext|> [SEP]", [102, 1437, 2, 1437, 2]),  # both id 2; neither strips
        ("roberta", "<mask>", [41552, 43776, 15698]),  # fairseq's own names are not command strings
        ("bert-large-uncased", "The [mask] [MASK]", [1996, 1031, 7308, 1033, 103]),
        ("bert-large-uncased", "[PAD][UNK][SEP]", [0, 100, 102]),
        ("chinese-sp", "[gMASK]", [50007]),  # legacy layout: [gMASK] is eop's id
        ("chinese-sp", "<|endofpiece|>", [50007]),
        ("chinese-sp-fix", "清华[gMASK]", [2795, 43870, 50009]),
    ],
)
def test_command_tokens_typed_in_text(tokenizers, family, text, expected):
    assert tokenizers[family].encode(text, add_special_tokens=False) == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_special_tokens_wrap_as_cls_text_eos(tokenizers, family):
    tok = tokenizers[family]
    body = tok.encode("Hello [MASK]", add_special_tokens=False)
    assert tok.encode("Hello [MASK]") == [tok.cls_token_id, *body, tok.eos_token_id]
    assert tok("   ")["input_ids"] == [tok.cls_token_id, tok.eos_token_id]


def test_legacy_chinese_decodes_the_shared_id_as_gmask(tokenizers):
    legacy, fixed = tokenizers["chinese-sp"], tokenizers["chinese-sp-fix"]
    assert legacy.eop_token_id == legacy.gmask_token_id == 50007 and legacy.eop_token_id in legacy.mask_token_ids
    assert legacy.decode([50007]) == "[gMASK]" and fixed.decode([50007, 50009]) == "<|endofpiece|>[gMASK]"
    assert legacy.decode([50005, 60000, 50003]) == "[MASK]"  # the unused id and ids past the vocabulary vanish


# ---------------------------------------------------------------------------------------------------------------
# Round trips


def test_round_trip_bytelevel_is_exact(tokenizers, shared_dir):
    for family in ("gpt2", "roberta"):
        tok = tokenizers[family]
        for text in corpus_lines(shared_dir, 300) + chinese_lines(shared_dir, 50) + UNICODE_TEXTS:
            assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
        assert tok.decode(tok.encode("in [MASK] now", add_special_tokens=False)) == "in[MASK] now"


def test_round_trip_bert_up_to_normalisation(tokenizers, shared_dir):
    """Uncased BERT keeps the lowercased, accent-stripped words: equal once whitespace is ignored."""
    tok = tokenizers["bert-large-uncased"]
    checked = 0
    for text in corpus_lines(shared_dir, 300) + chinese_lines(shared_dir, 50) + UNICODE_TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        if tok.unk_token_id in ids:
            continue
        folded = unicodedata.normalize("NFD", text.lower())
        folded = "".join(c for c in folded if unicodedata.category(c)[0] != "C" and unicodedata.category(c) != "Mn")
        folded = "".join(folded.replace("\ufffd", "").split())
        assert "".join(tok.decode(ids).split()) == folded, text
        checked += 1
    assert checked > 300


def test_round_trip_chinese_up_to_normalisation(tokenizers, shared_dir):
    """cog-pretrain.model applies NFKC and collapses whitespace; command tokens come back without spaces."""
    tok = tokenizers["chinese-sp-fix"]
    checked = 0
    for text in chinese_lines(shared_dir, 300) + corpus_lines(shared_dir, 100):
        ids = tok.encode(text, add_special_tokens=False)
        if 0 in ids:  # SentencePiece's <unk>
            continue
        assert tok.decode(ids) == " ".join(unicodedata.normalize("NFKC", text).split()), text
        checked += 1
    assert checked > 300
    assert tok.decode(tok.encode("清华大学位于[MASK]。")) == "[CLS]清华大学位于[MASK]。<|endoftext|>"
    assert tok.decode(tok.encode("清华大学位于[MASK]。"), skip_special_tokens=True) == "清华大学位于。"


# ---------------------------------------------------------------------------------------------------------------
# transformers API


@pytest.mark.parametrize("family", ["bert-large-uncased", "roberta", "chinese-sp-fix"])
def test_batch_padding_truncation_and_tensors(tokenizers, family):
    tok = tokenizers[family]
    texts = ["Hello [MASK] world", "  ", "a <|endoftext|> b ΟΔΟΣ and more words here"]  # Rust and Python paths
    single = [tok.encode(t) for t in texts]
    batch = tok(texts, padding=True, return_tensors="pt")
    width = max(map(len, single))
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, width)
    for row, ids, mask in zip(batch["input_ids"].tolist(), single, batch["attention_mask"].tolist(), strict=True):
        assert row == ids + [tok.pad_token_id] * (width - len(ids))
        assert mask == [1] * len(ids) + [0] * (width - len(ids))
    cut = tok(texts, truncation=True, max_length=4)["input_ids"]
    assert [len(x) for x in cut] == [min(4, len(x)) for x in single]
    assert all(x[0] == tok.cls_token_id and x[-1] == tok.eos_token_id for x in cut)
    one = tok(texts[2], return_tensors="pt")
    assert one["input_ids"].tolist() == [single[2]] and one["input_ids"].dtype == torch.long
    assert tok.tokenize("Hello [MASK]")[-1] == "[MASK]"
    with pytest.raises(ValueError, match="single texts"):
        tok("a", "b")


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_and_pickle_round_trip(tokenizers, family, tmp_path):
    tok = tokenizers[family]
    text = "清华 Tsinghua [MASK] x [gMASK] <|endoftext|>"
    tok.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"].startswith("GLM") and config["glm_kind"] == tok.glm_kind
    for loaded in (GLMTokenizer.from_pretrained(tmp_path), pickle.loads(pickle.dumps(tok))):
        assert type(loaded) is type(tok)
        assert loaded.encode(text) == tok.encode(text)
        assert loaded.layout == tok.layout


def test_from_pretrained_dispatch(vocab_dir, tmp_path):
    """Released folders are recognised by tokenizer_config.json's class, else by their files; kind= overrides."""
    cases = {
        "bert": (["bert-uncased-vocab.txt"], ["vocab.txt"], GLMTokenizerFast, 30526),
        "gpt2": (["gpt2-vocab.json", "gpt2-merges.txt"], ["vocab.json", "merges.txt"], GLMTokenizerFast, 50265),
        "roberta": (
            ["roberta-vocab.json", "roberta-merges.txt"],
            ["vocab.json", "merges.txt"],
            GLMTokenizerFast,
            50267,
        ),
        "chinese": (["cog-pretrain.model"], ["cog-pretrain.model"], GLMChineseTokenizer, 50010),
    }
    for kind, (sources, names, cls, size) in cases.items():
        folder = tmp_path / kind
        folder.mkdir()
        for source, name in zip(sources, names, strict=True):
            (folder / name).write_bytes((vocab_dir / source).read_bytes())
        tok = GLMTokenizer.from_pretrained(folder)
        assert (type(tok), tok.glm_kind, tok.num_tokens) == (cls, kind, size)
    released = {"tokenizer_class": "GLMChineseTokenizer"}
    (tmp_path / "chinese" / "tokenizer_config.json").write_text(json.dumps(released))
    (tmp_path / "chinese" / "added_tokens.json").write_text(json.dumps({"<|endofpiece|>": 50007, "[gMASK]": 50007}))
    assert GLMTokenizer.from_pretrained(tmp_path / "chinese").gmask_token_id == 50007
    assert GLMTokenizer.from_pretrained(tmp_path / "chinese", legacy_gmask=False).gmask_token_id == 50009
    assert GLMTokenizer.from_pretrained(tmp_path / "roberta", kind="gpt2").glm_kind == "gpt2"
    with pytest.raises(ValueError, match="roberta vocabulary lacks the <s> token"):
        GLMTokenizer.from_pretrained(tmp_path / "gpt2", kind="roberta")
    assert GLMTokenizer.from_pretrained(tmp_path / "roberta", add_task_mask=True).gmask_token_id == 50267
    assert GLMTokenizer.from_pretrained(tmp_path / "bert", add_decoder_mask=True).dblock_token_id == 30526
    with pytest.warns(UserWarning, match="legacy_gmask"):
        GLMTokenizer.from_pretrained(tmp_path / "bert", legacy_gmask=True)


# ---------------------------------------------------------------------------------------------------------------
# Training


@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
def test_train_tokenizer_round_trip(shared_dir, tmp_path, kind):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text((shared_dir / "data" / "corpus" / "tinyshakespeare.txt").read_text()[:200_000])
    tok = train_tokenizer([corpus], kind=kind, vocab_size=600, save_directory=tmp_path / "tok")
    loaded = GLMTokenizer.from_pretrained(tmp_path / "tok")
    assert tok.vocab_size == loaded.vocab_size <= 600
    assert loaded.sop_token_id == loaded.vocab_size  # command tokens appended after the trained vocabulary
    assert loaded.num_tokens == loaded.vocab_size + (8 if kind == "bpe" else 4)
    text = "First Citizen: before we [MASK] any further, hear me speak."
    ids = loaded.encode(text, add_special_tokens=False)
    assert ids == tok.encode(text, add_special_tokens=False) and loaded.mask_token_id in ids
    if kind == "bpe":
        assert loaded.decode(ids) == "First Citizen: before we[MASK] any further, hear me speak."
    else:
        assert "".join(loaded.decode(ids).split()) == "".join(text.lower().replace("[mask]", "[MASK]").split())


# ---------------------------------------------------------------------------------------------------------------
# Bad input


def test_errors_name_the_file(vocab_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such tokenizer folder"):
        GLMTokenizer.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no tokenizer files found"):
        GLMTokenizer.from_pretrained(tmp_path / "empty")

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "vocab.json").write_text('{"a": 0, "b": 1,')
    (bad / "merges.txt").write_text("#version: 0.2\na b\n")
    with pytest.raises(ValueError, match=r"vocab\.json: not valid JSON \(line 1"):
        GLMTokenizer.from_pretrained(bad)
    (bad / "vocab.json").write_bytes((vocab_dir / "gpt2-vocab.json").read_bytes())
    (bad / "merges.txt").write_text("#version: 0.2\nĠ t\nĠ a b\n")
    with pytest.raises(ValueError, match=r"merges\.txt:3: expected two space-separated symbols"):
        GLMTokenizer.from_pretrained(bad)
    (bad / "merges.txt").write_text("#version: 0.2\nĠ t\n☃☃ ☄\n")
    with pytest.raises(ValueError, match=r"merges\.txt:3: '☃☃' is not in the vocabulary"):
        GLMTokenizer.from_pretrained(bad)
    (bad / "vocab.json").write_text('{"a": 0}')
    with pytest.raises(ValueError, match=r"vocab\.json: gpt2 vocabulary lacks the <\|endoftext\|>"):
        GLMTokenizer.from_pretrained(bad, kind="gpt2")

    (tmp_path / "vocab.txt").write_text("")
    with pytest.raises(ValueError, match=r"vocab\.txt: empty vocabulary file"):
        GLMTokenizer.from_bert_vocab(tmp_path / "vocab.txt")
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n[CLS]\n[SEP]\nhello\n")
    with pytest.raises(ValueError, match=r"vocab\.txt:6: token 'hello' already on line 3"):
        GLMTokenizer.from_bert_vocab(tmp_path / "vocab.txt")
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n")
    with pytest.raises(ValueError, match=r"vocab\.txt: BERT vocabulary lacks the \[MASK\]"):
        GLMTokenizer.from_bert_vocab(tmp_path / "vocab.txt")
    (tmp_path / "cog-pretrain.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"cog-pretrain\.model: not a SentencePiece model"):
        GLMTokenizer.from_sentencepiece(tmp_path / "cog-pretrain.model")
    (tmp_path / "tokenizer_config.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"tokenizer_config\.json: not valid JSON"):
        GLMTokenizer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        GLMTokenizer.from_pretrained(vocab_dir, kind="xlnet")

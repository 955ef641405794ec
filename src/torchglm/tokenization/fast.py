"""BERT WordPiece, GPT-2 and RoBERTa byte-level BPE on a Rust ``tokenizers`` backend.

The command tokens are the backend's added tokens (matched on raw text, ``lstrip`` where the original stripped),
so ordinary batches never leave Rust. A few texts need the original's rule to the letter and take a Python path
instead (same ids, slower): blank texts (the original returns no tokens), texts holding an alias command string
(RoBERTa's ``<|endoftext|>``, id 2 whose canonical string is ``[SEP]``), the four ASCII separators
``\\x1c``-``\\x1f`` that Python's ``str.rstrip`` strips before a [MASK] and Rust does not, and, for BERT, characters
on which Rust's normalizer and the original Python BasicTokenizer disagree (newer Unicode assignments, and the
final sigma that Python's ``str.lower`` writes as ``ς``).
"""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from .base import GLMTokenizer
from .commands import CommandLayout

_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def basic_tokenize(text: str, lowercase: bool = True) -> list[str]:
    """BERT's original BasicTokenizer, the reference for GLM's BERT tokenizer: drop NUL, U+FFFD and control
    characters, turn whitespace into spaces, isolate CJK ideographs, split on whitespace, lowercase and strip
    accents (NFD, drop Mn) when lowercasing, then split off every punctuation character."""
    chars = []
    for ch in text:
        cp = ord(ch)
        if ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
            chars.append(" ")
        elif cp == 0 or cp == 0xFFFD or unicodedata.category(ch).startswith("C"):
            continue
        elif any(lo <= cp <= hi for lo, hi in _CJK_RANGES):
            chars.append(f" {ch} ")
        else:
            chars.append(ch)
    words = []
    for word in "".join(chars).split():
        if lowercase:
            word = "".join(c for c in unicodedata.normalize("NFD", word.lower()) if unicodedata.category(c) != "Mn")
        current = ""
        for ch in word:
            cp = ord(ch)
            if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
                is_punctuation = True
            else:
                is_punctuation = unicodedata.category(ch).startswith("P")
            if is_punctuation:
                words += [current, ch] if current else [ch]
                current = ""
            else:
                current += ch
        if current:
            words.append(current)
    return words


class GLMTokenizerFast(GLMTokenizer, PreTrainedTokenizerFast):
    """GLM tokenizer for the BERT, GPT-2 and RoBERTa families. Build it with ``GLMTokenizer.from_*``."""

    def __init__(
        self,
        tokenizer_object: Tokenizer,
        layout: CommandLayout,
        kind: str,
        options: dict[str, Any],
        native_files: dict[str, str],
        **kwargs,
    ):
        self._init_commands(layout, kind, options)
        self._native_files = native_files  # file name -> contents, written back by save_pretrained
        self._lowercase = kind == "bert" and options.get("do_lower_case", True)
        python_only = [re.escape(alias) for alias in layout.aliases]
        if any(t.lstrip for t in layout.tokens):
            python_only.append("[\x1c-\x1f]")  # str.isspace() but not Rust's char::is_whitespace
        self._python_re = re.compile("|".join(python_only)) if python_only else None
        self._agree: set[str] = set()
        self._disagree: set[str] = {"Σ"} if self._lowercase else set()  # Python lowercases a final Σ to ς
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(tokenizer_object=tokenizer_object, **self._special_token_kwargs(layout), **kwargs)

    # ---- encoding ------------------------------------------------------------------------------------------
    def _needs_python(self, text: Any) -> bool:
        """Whether ``text`` must take the Python path to get the original's ids (see the module docstring)."""
        if not isinstance(text, str) or not text or text.isspace():
            return True
        if self._python_re is not None and self._python_re.search(text) is not None:
            return True
        return self.glm_kind == "bert" and not text.isascii() and not self._bert_agrees(text)

    def _plain_batch(self, texts) -> bool:
        """``not any(map(self._needs_python, texts))`` with a few whole-batch scans instead of a Python loop
        (the check must not make encoding slow)."""
        try:
            joined = "\n".join(texts)  # a TypeError for anything but str
        except TypeError:
            return False
        if not all(texts) or any(map(str.isspace, texts)):
            return False
        if self._python_re is not None and self._python_re.search(joined) is not None:
            return False
        return self.glm_kind != "bert" or joined.isascii() or self._bert_agrees(joined)

    def _bert_agrees(self, text: str) -> bool:
        """Whether Rust's BertNormalizer + BertPreTokenizer treat every character of ``text`` as the Python
        reference does; each new character is checked once, in a word and alone, then remembered."""
        chars = set(text)
        if chars & self._disagree:
            return False
        for ch in chars - self._agree:
            if ord(ch) < 128:
                continue
            backend = self._tokenizer
            ok = True
            for probe in (f"xa{ch}bx", ch):
                rust = [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(probe))]
                ok = ok and rust == basic_tokenize(probe, self._lowercase)
            (self._agree if ok else self._disagree).add(ch)
            if not ok:
                return False
        return True

    def _encode_piece(self, piece: str) -> list[int]:
        if self.glm_kind == "bert":
            model = self._tokenizer.model
            return [token.id for word in basic_tokenize(piece, self._lowercase) for token in model.tokenize(word)]
        return self._tokenizer.encode(piece, add_special_tokens=False).ids

    def _encode_plus(self, text, text_pair=None, **kwargs):
        texts = text if isinstance(text, (list, tuple)) else [text]
        if kwargs.get("split_special_tokens") or kwargs.get("is_split_into_words"):
            return super()._encode_plus(text, text_pair=text_pair, **kwargs)
        if text_pair is None and self._plain_batch(texts):
            return super()._encode_plus(text, **kwargs)
        return self._glm_encode_plus(text, text_pair, **kwargs)

    def _encode_batch(self, texts: list) -> list[list[int]]:
        """One Rust call for the texts it takes exactly, the Python rule for the others."""
        slow = [self._needs_python(t) for t in texts]
        fast = [t for t, s in zip(texts, slow, strict=True) if not s]
        fast_ids = iter(e.ids for e in self._tokenizer.encode_batch_fast(fast, add_special_tokens=False))
        return [
            next(fast_ids) if not s else self._encode_text(t) if isinstance(t, str) else list(t)
            for t, s in zip(texts, slow, strict=True)
        ]

    # ---- saving ----------------------------------------------------------------------------------------------
    def _save_vocabulary_files(self, folder: Path) -> list[str]:
        written = []
        for name, contents in self._native_files.items():
            (folder / name).write_text(contents, encoding="utf-8")
            written.append(str(folder / name))
        self._tokenizer.save(str(folder / "tokenizer.json"))  # for tools that read the Rust file directly
        return written + [str(folder / "tokenizer.json")]


def _add_command_tokens(backend: Tokenizer, layout: CommandLayout) -> None:
    """Register each id's canonical string as a special added token, in id order, so that the Rust side hands
    out exactly the layout's ids (new ones are numbered from the vocabulary size up)."""
    lstrip = {t.token for t in layout.tokens if t.lstrip}
    for token_id, string in sorted(layout.canonical.items()):
        backend.add_special_tokens([AddedToken(string, lstrip=string in lstrip, normalized=False, special=True)])
        got = backend.token_to_id(string)
        if got != token_id:
            raise ValueError(f"command token {string!r} got id {got}, expected {token_id}: vocabulary has holes")


def _template(backend: Tokenizer, layout: CommandLayout) -> None:
    """``__call__`` wraps a text as ``[CLS] text eos``, as the released tokenizers do."""
    canonical = layout.canonical
    cls, eos = layout.id("ENC"), layout.id("eos")
    backend.post_processor = processors.TemplateProcessing(
        single=f"{canonical[cls]} $A {canonical[eos]}",
        special_tokens=[(canonical[cls], cls), (canonical[eos], eos)] if cls != eos else [(canonical[cls], cls)],
    )


def make_wordpiece(vocab: dict[str, int], layout: CommandLayout, lowercase: bool) -> Tokenizer:
    """Rust BERT: clean text, isolate CJK, lowercase + strip accents (uncased), split whitespace/punctuation,
    WordPiece with ``##`` continuations and [UNK] for words over 100 characters or not coverable."""
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    _add_command_tokens(backend, layout)
    _template(backend, layout)
    return backend


def make_bytelevel_bpe(vocab: dict[str, int], merges: list[tuple[str, str]], layout: CommandLayout) -> Tokenizer:
    """Rust GPT-2/RoBERTa: GPT-2's pre-tokenizer regex and byte-to-unicode map with no prefix space (as the
    original called its GPT-2 tokenizer), then BPE. Command strings that share an id with a base entry under
    another name (RoBERTa's ``<s>`` is GLM's ``[CLS]``) take that entry's place; fairseq's own names cannot
    come out of byte-level BPE, so no text loses a token by it."""
    vocab = dict(vocab)
    by_id = {i: s for s, i in vocab.items()}
    for token_id, string in layout.canonical.items():
        old = by_id.get(token_id)
        if old is not None and old != string:
            if string in vocab:
                raise ValueError(f"command token {string!r} is already in the vocabulary with id {vocab[string]}")
            del vocab[old]
            vocab[string] = token_id
    backend = Tokenizer(models.BPE(vocab, merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    _add_command_tokens(backend, layout)
    _template(backend, layout)
    return backend


def native_bpe_files(vocab: dict[str, int], merges: list[tuple[str, str]]) -> dict[str, str]:
    return {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
    }


def native_wordpiece_files(vocab: dict[str, int]) -> dict[str, str]:
    return {"vocab.txt": "".join(token + "\n" for token, _ in sorted(vocab.items(), key=lambda kv: kv[1]))}

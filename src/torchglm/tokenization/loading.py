"""Reading tokenizer folders and vocabulary files, with errors that name the file (and line) at fault."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from .commands import bert_layout, chinese_layout, gpt2_layout, roberta_layout

KINDS = ("bert", "gpt2", "roberta", "chinese")
_CLASS_KINDS = {
    "GLMBertTokenizer": "bert",
    "GLMGPT2Tokenizer": "gpt2",
    "GLMRobertaTokenizer": "roberta",
    "GLMChineseTokenizer": "chinese",
}
_DEFAULTS = {"add_task_mask": True, "add_decoder_mask": False}


def read_vocab_txt(path: str | os.PathLike) -> dict[str, int]:
    """A WordPiece ``vocab.txt``: one token per line, the line number its id (as the original read it)."""
    path = Path(path)
    lines = _read_text(path).splitlines()
    if not lines:
        raise ValueError(f"{path}: empty vocabulary file")
    vocab: dict[str, int] = {}
    for i, line in enumerate(lines):
        token = line.strip()
        if token in vocab:
            raise ValueError(f"{path}:{i + 1}: token {token!r} already on line {vocab[token] + 1}")
        vocab[token] = i
    for token in ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"):
        if token not in vocab:
            raise ValueError(f"{path}: BERT vocabulary lacks the {token} token GLM needs")
    return vocab


def read_vocab_json(path: str | os.PathLike) -> dict[str, int]:
    """A BPE ``vocab.json``: an object mapping each token to its integer id."""
    path = Path(path)
    try:
        vocab = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}): {err.msg}") from None
    if not isinstance(vocab, dict) or not vocab:
        raise ValueError(f"{path}: expected a non-empty JSON object mapping tokens to ids")
    bad = next(((k, v) for k, v in vocab.items() if not isinstance(v, int) or isinstance(v, bool)), None)
    if bad is not None:
        raise ValueError(f"{path}: token {bad[0]!r} maps to {bad[1]!r}, not an integer id")
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise ValueError(f"{path}: ids must be 0..{len(vocab) - 1}, each used once")
    return vocab


def read_merges(path: str | os.PathLike, vocab: dict[str, int] | None = None) -> list[tuple[str, str]]:
    """A BPE ``merges.txt``: an optional ``#version`` line, then one ``left right`` pair per line."""
    path = Path(path)
    merges = []
    for lineno, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line or (lineno == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"{path}:{lineno}: expected two space-separated symbols, got {line!r}")
        if vocab is not None:
            for symbol in (parts[0], parts[1], parts[0] + parts[1]):
                if symbol not in vocab:
                    raise ValueError(f"{path}:{lineno}: {symbol!r} is not in the vocabulary")
        merges.append((parts[0], parts[1]))
    return merges


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such vocabulary file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def _options(options: dict[str, Any], allowed: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``options`` into GLM layout options (with defaults) and transformers keyword arguments."""
    glm = {key: options.pop(key, _DEFAULTS.get(key)) for key in allowed}
    return glm, options


def build_bert(vocab_file, vocab: dict[str, int] | None = None, **options):
    """GLM BERT tokenizer from ``vocab_file`` (or an in-memory ``vocab``)."""
    from .fast import GLMTokenizerFast, make_wordpiece, native_wordpiece_files

    vocab = vocab if vocab is not None else read_vocab_txt(vocab_file)
    options.setdefault("do_lower_case", True)
    glm, hf = _options(options, ("add_task_mask", "add_decoder_mask", "do_lower_case"))
    layout = bert_layout(vocab, glm["add_task_mask"], glm["add_decoder_mask"])
    backend = make_wordpiece(vocab, layout, glm["do_lower_case"])
    return GLMTokenizerFast(backend, layout, "bert", glm, native_wordpiece_files(vocab), **hf)


def build_bpe(vocab_file, merges_file, kind: str = "gpt2", **options):
    """GLM GPT-2 or RoBERTa tokenizer from ``vocab.json`` + ``merges.txt``."""
    from .fast import GLMTokenizerFast, make_bytelevel_bpe, native_bpe_files

    vocab = read_vocab_json(vocab_file)
    required = ("<|endoftext|>",) if kind == "gpt2" else ("<s>", "</s>", "<unk>", "<mask>")
    for token in required:
        if token not in vocab:
            raise ValueError(f"{vocab_file}: {kind} vocabulary lacks the {token} token GLM needs")
    merges = read_merges(merges_file, vocab)
    options.setdefault("add_task_mask", kind == "gpt2")
    glm, hf = _options(options, ("add_task_mask", "add_decoder_mask"))
    layout = (gpt2_layout if kind == "gpt2" else roberta_layout)(vocab, glm["add_task_mask"], glm["add_decoder_mask"])
    backend = make_bytelevel_bpe(vocab, merges, layout)
    return GLMTokenizerFast(backend, layout, kind, glm, native_bpe_files(vocab, merges), **hf)


def build_chinese(model_file, **options):
    """GLM Chinese tokenizer from a SentencePiece model file."""
    import sentencepiece as spm

    from .chinese import GLMChineseTokenizer

    path = Path(model_file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such SentencePiece model")
    proto = path.read_bytes()
    try:
        size = spm.SentencePieceProcessor(model_proto=proto).get_piece_size()
    except (RuntimeError, OSError) as err:
        raise ValueError(f"{path}: not a SentencePiece model ({err})") from None
    options.setdefault("legacy_gmask", False)
    glm, hf = _options(options, ("add_task_mask", "add_decoder_mask", "legacy_gmask"))
    layout = chinese_layout(size, glm["add_task_mask"], glm["add_decoder_mask"], glm["legacy_gmask"])
    return GLMChineseTokenizer(proto, layout, glm, **hf)


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}): {err.msg}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return config


def _detect_kind(folder: Path) -> str:
    if (folder / "vocab.txt").is_file():
        return "bert"
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        vocab = read_vocab_json(folder / "vocab.json")
        return "roberta" if "<mask>" in vocab and "<s>" in vocab else "gpt2"
    if _sentencepiece_file(folder) is not None:
        return "chinese"
    raise FileNotFoundError(
        f"{folder}: no tokenizer files found (looked for tokenizer_config.json naming a GLM tokenizer class, "
        "vocab.txt, vocab.json + merges.txt, cog-pretrain.model or another *.model)"
    )


def _sentencepiece_file(folder: Path) -> Path | None:
    if (folder / "cog-pretrain.model").is_file():
        return folder / "cog-pretrain.model"
    models = sorted(folder.glob("*.model"))
    return models[0] if len(models) == 1 else None


def _released_gmask_is_legacy(folder: Path, config: dict[str, Any]) -> bool | None:
    """Whether a released Chinese folder maps [gMASK] to <|endofpiece|>'s id (glm-10b-chinese's layout)."""
    added = _read_config(folder / "added_tokens.json")
    for entry_id, entry in (config.get("added_tokens_decoder") or {}).items():
        if isinstance(entry, dict) and "content" in entry:
            added.setdefault(entry["content"], int(entry_id))
    if "[gMASK]" in added and "<|endofpiece|>" in added:
        return added["[gMASK]"] == added["<|endofpiece|>"]
    return None


def load_folder(folder, kind: str | None = None, **options):
    """``GLMTokenizer.from_pretrained``: pick the family, read its files, apply the folder's options."""
    from torchglm.builtin import resolve

    folder = Path(resolve(folder))
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such tokenizer folder")
    config = _read_config(folder / "tokenizer_config.json")
    if kind == "chinese-legacy":
        kind, options["legacy_gmask"] = "chinese", True
    kind = kind or config.get("glm_kind") or _CLASS_KINDS.get(config.get("tokenizer_class")) or _detect_kind(folder)
    if kind not in KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {', '.join(KINDS)} or chinese-legacy")
    for key in ("add_task_mask", "add_decoder_mask", "do_lower_case", "legacy_gmask", "model_max_length"):
        if key in config and key not in options:
            options[key] = config[key]
    if kind == "bert":
        return build_bert(folder / "vocab.txt", **_drop(options, "legacy_gmask"))
    if kind in ("gpt2", "roberta"):
        return build_bpe(
            folder / "vocab.json", folder / "merges.txt", kind, **_drop(options, "legacy_gmask", "do_lower_case")
        )
    if "legacy_gmask" not in options:
        legacy = _released_gmask_is_legacy(folder, config)
        if legacy is not None:
            options["legacy_gmask"] = legacy
    model_file = _sentencepiece_file(folder)
    if model_file is None:
        raise FileNotFoundError(f"{folder}: no SentencePiece model (cog-pretrain.model) for the chinese tokenizer")
    return build_chinese(model_file, **_drop(options, "do_lower_case"))


def _drop(options: dict[str, Any], *keys: str) -> dict[str, Any]:
    dropped = [key for key in keys if options.get(key) not in (None, False) and key != "do_lower_case"]
    if dropped:
        warnings.warn(f"tokenizer options {dropped} do not apply to this family and are ignored", stacklevel=3)
    return {key: value for key, value in options.items() if key not in keys}

"""Zero-shot language modelling as the original GLM evaluates it: LAMBADA accuracy and text perplexity.

- **LAMBADA**: each passage's last word (``" " + word``, tokenized) is the answer, scored at a final blank after
  the rest of the passage; an example is correct only if every answer token is the model's argmax.
- **Perplexity** (WikiText ``.tokens`` files, detokenized as the original does, or any UTF-8 text): the whole file
  tokenized, scored in windows of ``seq_length - 1`` tokens, each token after the first exactly once. Token-level
  perplexity ``exp(total / (tokens - 1))``; word-level "adjusted" perplexity ``exp(total / (words - 1))``, words
  counted in the original text, so that models with different tokenizers compare.

The layouts are in :mod:`torchglm.tasks.scoring`; see docs/evaluation.md for the numbers' meaning.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torchglm.errors import InputError

from .scoring import (
    Progress,
    PromptIds,
    WindowSpan,
    check_seq_length,
    encode,
    layout_name,
    score_final_blank,
    score_windows,
    window_spans,
)

# ---- reading files -------------------------------------------------------------------------------------------


def read_text_file(path: str | Path) -> str:
    """A whole UTF-8 file; an empty or undecodable one is an :class:`InputError` naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputError.at(path, None, f"cannot read ({error.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise InputError.at(path, line, f"not UTF-8 (byte {error.start} of the file)") from None
    if not text.strip():
        raise InputError.at(path, None, "the file is empty: nothing to evaluate")
    return text


def read_jsonl(path: str | Path) -> list[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of a JSON-lines file."""
    records = []
    for number, line in enumerate(read_text_file(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError.at(path, number, f"not JSON ({error.msg}, column {error.colno})") from None
        if not isinstance(record, dict):
            raise InputError.at(path, number, "expected a JSON object")
        records.append((number, record))
    return records


def text_field(path, number: int, record: dict, name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str):
        what = "missing" if name not in record else f"not a string ({type(value).__name__})"
        raise InputError.at(path, number, f'field "{name}" is {what}')
    return value


# ---- LAMBADA -------------------------------------------------------------------------------------------------


@dataclass
class LambadaExample:
    context_ids: list[int]
    answer_ids: list[int]
    line: int = 0
    """1-based line of the example in its file (0: built in memory)."""


def split_last_word(text: str) -> tuple[str, str]:
    """``(context, last word)``: the last whitespace-separated word, the text before its last occurrence stripped
    (the original's rule)."""
    words = text.split()
    if not words:
        raise ValueError("the text has no last word")
    word = words[-1]
    return text[: text.rfind(word)].strip(), word


def lambada_example(tokenizer, text: str, line: int = 0) -> LambadaExample:
    context, word = split_last_word(text)
    return LambadaExample(
        encode(tokenizer, context),
        encode(tokenizer, " " + word),
        line,
    )


def read_lambada(path: str | Path, tokenizer) -> list[LambadaExample]:
    """LAMBADA examples from a JSON-lines file of ``{"text": passage}`` (the GPT-2 detokenized test set)."""
    examples = []
    for number, record in read_jsonl(path):
        text = text_field(path, number, record, "text")
        try:
            example = lambada_example(tokenizer, text, number)
        except ValueError as error:
            raise InputError.at(path, number, f'field "text": {error}') from None
        if not example.answer_ids:
            raise InputError.at(path, number, f'field "text": the last word {text.split()[-1]!r} has no tokens')
        examples.append(example)
    if not examples:
        raise InputError.at(path, None, "no examples")
    return examples


@dataclass
class LambadaResult:
    accuracy: float
    correct: int
    total: int
    settings: dict
    examples: list[dict] = field(default_factory=list)
    """Per example: ``line``, ``nll`` (answer's summed negative log-likelihood), ``tokens``, ``correct``."""

    def summary(self) -> str:
        mode = self.settings.get("layout") or layout_name(self.settings.get("unidirectional", False))
        return f"LAMBADA ({mode}): accuracy {self.accuracy:.4f} ({self.correct}/{self.total})"

    def to_dict(self) -> dict:
        return {"task": "lambada", "metric": "accuracy", **asdict(self)}


def evaluate_lambada(
    model,
    tokenizer,
    examples: Sequence[LambadaExample],
    *,
    seq_length: int | None = None,
    unidirectional: bool = False,
    causal: bool = False,
    batch_size: int = 16,
    mask: str | None = None,
    progress: Progress | None = None,
) -> LambadaResult:
    """LAMBADA accuracy of ``model`` (eval mode) on ``examples``; ``seq_length`` defaults to the model's positions
    (longer contexts lose tokens from the left). ``causal``: the causal-LM layout (``[CLS] context answer`` left to
    right), for models pretrained with the ``clm`` objective."""
    layout = layout_name(unidirectional, causal)
    seq_length = check_seq_length(seq_length, model)
    ids = PromptIds.from_tokenizer(tokenizer, mask)
    scores = score_final_blank(
        model,
        ids,
        [e.context_ids for e in examples],
        [[e.answer_ids] for e in examples],
        seq_length=seq_length,
        unidirectional=unidirectional,
        causal=causal,
        batch_size=batch_size,
        progress=progress,
    )
    rows = [
        {"line": e.line, "nll": -s.log_prob, "tokens": s.num_tokens, "correct": s.is_greedy}
        for e, [s] in zip(examples, scores, strict=True)
    ]
    correct = sum(r["correct"] for r in rows)
    settings = {"seq_length": seq_length, "unidirectional": unidirectional, "layout": layout}
    settings["mask_id"] = None if causal else ids.mask  # no blank in the causal layout
    return LambadaResult(correct / max(len(rows), 1), correct, len(rows), settings, rows)


# ---- perplexity ----------------------------------------------------------------------------------------------

# The original's WikiText detokenizer, as (pattern, replacement) rules applied in order: WikiText's tokenization
# put spaces around punctuation and wrote "1,000" as "1 @,@ 000"; these rules undo it.
_LITERAL, _REGEX = 0, 1
WIKITEXT_RULES: tuple[tuple[int, str, str], ...] = (
    # contractions
    (_LITERAL, "s '", "s'"),
    # number separators
    (_LITERAL, " @-@ ", "-"),
    (_LITERAL, " @,@ ", ","),
    (_LITERAL, " @.@ ", "."),
    # punctuation
    (_LITERAL, " : ", ": "),
    (_LITERAL, " ; ", "; "),
    (_LITERAL, " . ", ". "),
    (_LITERAL, " ! ", "! "),
    (_LITERAL, " ? ", "? "),
    (_LITERAL, " , ", ", "),
    # brackets and quotes: no space inside
    (_REGEX, r"\(\s*([^\)]*?)\s*\)", r"(\1)"),
    (_REGEX, r"\[\s*([^\]]*?)\s*\]", r"[\1]"),
    (_REGEX, r"{\s*([^}]*?)\s*}", r"{\1}"),
    (_REGEX, r"\"\s*([^\"]*?)\s*\"", r'"\1"'),
    (_REGEX, r"'\s*([^']*?)\s*'", r"'\1'"),
    # headings, degrees, line ends
    (_LITERAL, "= = = =", "===="),
    (_LITERAL, "= = =", "==="),
    (_LITERAL, "= =", "=="),
    (_LITERAL, " \N{DEGREE SIGN} ", "\N{DEGREE SIGN}"),
    (_LITERAL, " \n", "\n"),
    (_LITERAL, "\n ", "\n"),
    (_LITERAL, " N ", " 1 "),
    (_LITERAL, " 's", "'s"),
)
# The original's Penn Treebank detokenizer (for ``ptb.*.txt`` files).
PTB_RULES: tuple[tuple[int, str, str], ...] = (
    (_LITERAL, " '", "'"),
    (_LITERAL, " \n", "\n"),
    (_LITERAL, "\n ", "\n"),
    (_LITERAL, " n't", "n't"),
    (_LITERAL, " N ", "1 "),
    (_LITERAL, "$ 1", "$1"),
    (_LITERAL, "# 1", "#1"),
)
DETOKENIZERS = {
    name: [(kind, re.compile(a) if kind == _REGEX else a, b) for kind, a, b in rules]
    for name, rules in (("wikitext", WIKITEXT_RULES), ("ptb", PTB_RULES))
}


def detokenize(text: str, kind: str = "wikitext") -> str:
    """``kind`` (``wikitext`` or ``ptb``) tokenized text back to ordinary text by the original's rules."""
    for rule, pattern, replacement in DETOKENIZERS[kind]:
        text = pattern.sub(replacement, text) if rule == _REGEX else text.replace(pattern, replacement)
    return text


def wikitext_detokenize(text: str) -> str:
    """WikiText ``.tokens`` text back to ordinary text (``"guest @-@ starring role , the"`` ->
    ``"guest-starring role, the"``), as the original's detokenizer does."""
    return detokenize(text, "wikitext")


def detokenizer_for(path: str | Path) -> str | None:
    """The detokenizer for a file, by its name as the original chose by path: WikiText for ``.tokens`` files or
    names with "wikitext", PTB for names with "ptb", none otherwise."""
    name = Path(path).name.lower()
    if name.endswith(".tokens") or "wikitext" in name:
        return "wikitext"
    return "ptb" if "ptb" in name else None


@dataclass
class PerplexityText:
    """A text to score and its word count (what the word-level perplexity divides by)."""

    text: str
    num_words: int
    source: str = ""


def read_perplexity_text(
    path: str | Path, detokenize_as: str | None = "auto", lines: int | None = None
) -> PerplexityText:
    """A whole file (or its first ``lines``) for perplexity, as one text. ``detokenize_as``: ``"auto"`` (by the
    path, as the original: ``.tokens`` files are WikiText), ``"wikitext"``, ``"ptb"`` or None. Detokenized files
    have their words counted as the original counts them (``len(raw.strip().split(" "))`` before detokenizing);
    other files count whitespace-separated words."""
    raw = read_text_file(path)
    if lines is not None:
        raw = "".join(raw.splitlines(keepends=True)[:lines])
    kind = detokenizer_for(path) if detokenize_as == "auto" else detokenize_as
    if kind is not None:
        if kind not in DETOKENIZERS:
            raise InputError(f"detokenizer {kind!r}: choose one of {', '.join(DETOKENIZERS)}")
        return PerplexityText(detokenize(raw, kind), len(raw.strip().split(" ")), str(path))
    return PerplexityText(raw, len(raw.split()), str(path))


@dataclass
class PerplexityResult:
    ppl: float
    """Token-level perplexity ``exp(total_nll / (num_tokens - 1))``."""
    adjusted_ppl: float
    """Word-level perplexity ``exp(total_nll / (num_words - 1))``."""
    total_nll: float
    scored_tokens: int
    num_tokens: int
    num_words: int
    settings: dict
    windows: list[dict] = field(default_factory=list)
    """Per window: ``start`` (token index), ``nll``, ``tokens`` (scored)."""

    def summary(self) -> str:
        mode = self.settings.get("layout") or layout_name(self.settings.get("unidirectional", False))
        return (
            f"perplexity ({mode}): {self.ppl:.4f} per token, {self.adjusted_ppl:.4f} per word; total NLL "
            f"{self.total_nll:.4f} over {self.scored_tokens} scored tokens ({self.num_tokens} tokens, {self.num_words} "
            f"words, {len(self.windows)} windows)"
        )

    def to_dict(self) -> dict:
        return {"task": "perplexity", "metric": "ppl", **asdict(self)}


def _exp(x: float) -> float:
    return math.exp(x) if x < 700 else math.inf


def perplexity_windows(num_tokens: int, seq_length: int, overlap: int) -> list[WindowSpan]:
    """The original's windows: ``seq_length - 1`` tokens each, the k-th from ``k * overlap`` (its
    ``--overlapping-eval``: the tokens each later window scores, 1 to ``seq_length - 2``)."""
    if not 1 <= overlap <= seq_length - 2:
        raise InputError(f"--overlap {overlap}: must be between 1 and seq_length - 2 = {seq_length - 2}")
    return window_spans(num_tokens, seq_length - 1, overlap)


def evaluate_perplexity(
    model,
    tokenizer,
    text: PerplexityText | str,
    *,
    seq_length: int | None = None,
    overlap: int = 256,
    unidirectional: bool = False,
    causal: bool = False,
    batch_size: int = 16,
    mask: str | None = None,
    tokens: Sequence[int] | None = None,
    progress: Progress | None = None,
) -> PerplexityResult:
    """Perplexity of ``model`` (eval mode) on ``text`` (tokenized whole, or ``tokens`` given). ``overlap``: tokens
    each window after the first scores (at most ``seq_length - 2``). ``causal``: windows read left to right as a
    causal LM (``[CLS] window``), for models pretrained with the ``clm`` objective."""
    layout = layout_name(unidirectional, causal)
    if isinstance(text, str):
        text = PerplexityText(text, len(text.split()))
    seq_length = check_seq_length(seq_length, model)
    ids = PromptIds.from_tokenizer(tokenizer, mask)
    tokens = list(encode(tokenizer, text.text) if tokens is None else tokens)
    if len(tokens) < 2:
        raise InputError(f"{text.source or 'the text'}: {len(tokens)} token(s); perplexity needs at least 2")
    spans = perplexity_windows(len(tokens), seq_length, overlap)
    scores = score_windows(
        model, ids, tokens, spans, unidirectional=unidirectional, causal=causal, batch_size=batch_size,
        progress=progress,
    )  # fmt: skip
    windows = [
        {"start": s.start, "nll": -c.log_prob, "tokens": c.num_tokens} for s, c in zip(spans, scores, strict=True)
    ]
    total = sum(w["nll"] for w in windows)
    scored = sum(w["tokens"] for w in windows)
    settings = {
        "seq_length": seq_length, "overlap": overlap, "unidirectional": unidirectional, "layout": layout,
        "mask_id": None if causal else ids.mask,
    }  # fmt: skip
    return PerplexityResult(
        _exp(total / (len(tokens) - 1)),
        _exp(total / max(text.num_words - 1, 1)),
        total,
        scored,
        len(tokens),
        text.num_words,
        settings,
        windows,
    )

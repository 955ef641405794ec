"""Blank filling on held-out sentences: one word of each sentence blanked; is the model's greedy fill that word?

The paper's case for GLM against a left-to-right model is that a blank in the middle of a text is filled seeing
both sides of it. This task measures that directly, for any model torchglm loads:

- **GLM** (default): part A is ``[CLS] left [M] right [eos]`` and the word is scored as the blank's block
  ``[sop] word[:-1]`` at the mask's position, block positions ``1..n`` (``[M]`` = ``[MASK]``, the token-blank
  mask; ``--mask`` picks another).
- **GLM, left context only** (``right_context=False``): part A is ``[CLS] left [M] [eos]``, LAMBADA's layout: the
  same information a left-to-right model has.
- **causal** (``causal=True``, models pretrained with the ``clm`` objective): ``[CLS] left word`` read left to
  right; the right context cannot be used.

An example is correct when every token of the word is the model's argmax given the ones before it, which is what
greedy decoding of the word's length produces (LAMBADA's rule); the NLL per token is reported beside it. Each
non-blank line of the file is one sentence (the shared Gutenberg books hold one sentence per line); lines with
fewer than ``min_words`` or more than ``max_words`` words are skipped. The blanked word is drawn, with a seed
per line, from the purely alphabetic words after the first, so every model has some left context.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torchglm.errors import InputError
from torchglm.layout import Block

from .language_model import read_text_file
from .scoring import (
    Progress,
    PromptIds,
    check_seq_length,
    encode,
    final_blank_inputs,
    layout_name,
    score_rows,
)

_WORD = re.compile(r"[A-Za-z]+")


@dataclass(frozen=True)
class InfillExample:
    """A sentence with one word blanked: ``left + " " + word + " " + right`` is the line."""

    line: int
    left: str
    word: str
    right: str


def blank_one_word(sentence: str, line: int, *, seed: int = 0) -> InfillExample | None:
    """The line with one alphabetic word after the first blanked (drawn with a seed of its own), or None when
    the line has no such word."""
    words = sentence.split()
    candidates = [i for i in range(1, len(words)) if _WORD.fullmatch(words[i])]
    if not candidates:
        return None
    i = random.Random(seed * 1_000_003 + line).choice(candidates)
    return InfillExample(line, " ".join(words[:i]), words[i], " ".join(words[i + 1 :]))


def read_infill_sentences(
    path: str | Path, *, min_words: int = 8, max_words: int = 40, seed: int = 0
) -> list[InfillExample]:
    """One example per non-blank line of a UTF-8 text file with ``min_words..max_words`` words."""
    if not 2 <= min_words <= max_words:
        raise InputError(f"--min-words {min_words} / --max-words {max_words}: need 2 <= min <= max")
    examples = []
    for number, text in enumerate(read_text_file(path).splitlines(), start=1):
        if min_words <= len(text.split()) <= max_words:
            example = blank_one_word(text, number, seed=seed)
            if example is not None:
                examples.append(example)
    if not examples:
        raise InputError.at(path, None, f"no line has {min_words} to {max_words} words with a word to blank")
    return examples


@dataclass
class InfillResult:
    accuracy: float
    correct: int
    total: int
    nll_per_token: float
    """Mean over all blanked words' tokens of -log p(token)."""
    skipped: int
    """Examples longer than ``seq_length`` in this layout, left out."""
    settings: dict
    examples: list[dict] = field(default_factory=list)
    """Per example: ``line``, ``word``, ``nll`` (summed over its tokens), ``tokens``, ``correct``."""

    def summary(self) -> str:
        return (
            f"blank filling ({self.settings['layout']}): accuracy {self.accuracy:.4f} ({self.correct}/{self.total}), "
            f"NLL {self.nll_per_token:.4f} per token" + (f", {self.skipped} too long" if self.skipped else "")
        )

    def to_dict(self) -> dict:
        return {"task": "infill", "metric": "accuracy", **asdict(self)}


def infill_inputs(
    left: Sequence[int],
    word: Sequence[int],
    right: Sequence[int],
    ids: PromptIds,
    *,
    right_context: bool = True,
    causal: bool = False,
) -> tuple[list[int], Block]:
    """Part A and the scored block of one blanked word (token ids without [CLS])."""
    if causal or not right_context:
        return final_blank_inputs(left, word, ids, causal=causal)
    part_a = [ids.cls, *left, ids.mask, *right, ids.eos]
    return part_a, Block.span(ids.sop, word, position=len(left) + 1)


def evaluate_infill(
    model,
    tokenizer,
    examples: Sequence[InfillExample],
    *,
    seq_length: int | None = None,
    right_context: bool = True,
    causal: bool = False,
    batch_size: int = 16,
    mask: str | None = "MASK",
    progress: Progress | None = None,
) -> InfillResult:
    """Greedy fill accuracy and NLL per token of ``model`` (eval mode) on blanked words."""
    layout = "causal" if causal else layout_name() if right_context else "bidirectional, left context only"
    seq_length = check_seq_length(seq_length, model)
    ids = PromptIds.from_tokenizer(tokenizer, None if causal else mask)
    rows, kept = [], []
    for e in examples:
        word = encode(tokenizer, " " + e.word)
        right = encode(tokenizer, " " + e.right) if e.right else []
        part_a, block = infill_inputs(
            encode(tokenizer, e.left), word, right, ids, right_context=right_context, causal=causal
        )
        if len(part_a) + len(block) <= seq_length:
            rows.append((part_a, [block]))
            kept.append(e)
    scores = score_rows(model, rows, pad_id=ids.pad, batch_size=batch_size, progress=progress)
    results = [
        {"line": e.line, "word": e.word, "nll": -s.log_prob, "tokens": s.num_tokens, "correct": s.is_greedy}
        for e, [s] in zip(kept, scores, strict=True)
    ]
    correct = sum(r["correct"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    settings = {"seq_length": seq_length, "layout": layout, "mask_id": None if causal else ids.mask}
    return InfillResult(
        correct / max(len(results), 1),
        correct,
        len(results),
        sum(r["nll"] for r in results) / max(tokens, 1),
        len(examples) - len(kept),
        settings,
        results,
    )

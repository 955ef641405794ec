"""Zero-shot multiple choice from a JSON-lines file: each choice scored as an answer at a final blank.

A line is ``{"inputs_pretokenized": ..., "choices_pretokenized": [...], "label": i}`` (the original's
``MultiChoiceDataset`` format, as in P3 / T0 exports) or ``{"context": ..., "choices": [...], "label": i}``;
``label`` may be left out (predictions only). Part A is ``[CLS] context [M] [eos]``, encoded once and shared by
the choices; each choice is a block scored by the sum of its tokens' log-probabilities, or their mean with
``length_normalize`` (choices tokenized as written: put a leading space in them where the tokenizer cares).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torchglm.errors import InputError

from .language_model import read_jsonl, text_field
from .scoring import Progress, PromptIds, check_seq_length, encode, layout_name, score_final_blank

FORMATS = (("inputs_pretokenized", "choices_pretokenized"), ("context", "choices"))


@dataclass
class ChoiceExample:
    context: str
    choices: list[str]
    label: int | None = None
    line: int = 0


def read_multiple_choice(path: str | Path) -> list[ChoiceExample]:
    """Examples from a JSON-lines file in either format (see the module docstring)."""
    examples = []
    for number, record in read_jsonl(path):
        names = next((pair for pair in FORMATS if pair[0] in record), None)
        if names is None:
            raise InputError.at(path, number, 'missing field "inputs_pretokenized" (or "context")')
        context = text_field(path, number, record, names[0])
        choices = record.get(names[1])
        if not isinstance(choices, list) or not choices or not all(isinstance(c, str) and c for c in choices):
            raise InputError.at(path, number, f'field "{names[1]}" must be a non-empty list of non-empty strings')
        label = record.get("label")
        if label is not None and (isinstance(label, bool) or not isinstance(label, int)):
            raise InputError.at(path, number, f'field "label" must be an integer, not {label!r}')
        if label is not None and not 0 <= label < len(choices):
            raise InputError.at(path, number, f'field "label" {label} is outside the {len(choices)} choices')
        examples.append(ChoiceExample(context, choices, label, number))
    if not examples:
        raise InputError.at(path, None, "no examples")
    return examples


@dataclass
class MultipleChoiceResult:
    accuracy: float | None
    correct: int
    total: int
    settings: dict
    examples: list[dict] = field(default_factory=list)
    """Per example: ``line``, ``scores`` (per choice), ``nll``/``tokens`` (per choice), ``prediction``, ``label``,
    ``correct``."""

    def summary(self) -> str:
        if self.accuracy is None:
            return f"multiple choice: {self.total} examples predicted (no labels)"
        return f"multiple choice: accuracy {self.accuracy:.4f} ({self.correct}/{self.total})"

    def to_dict(self) -> dict:
        return {"task": "multichoice", "metric": "accuracy", **asdict(self)}


def evaluate_multiple_choice(
    model,
    tokenizer,
    examples: Sequence[ChoiceExample],
    *,
    length_normalize: bool = False,
    seq_length: int | None = None,
    unidirectional: bool = False,
    causal: bool = False,
    batch_size: int = 16,
    mask: str | None = None,
    progress: Progress | None = None,
) -> MultipleChoiceResult:
    """Pick the best-scoring choice of each example; accuracy over the labelled ones. ``progress`` counts choices."""
    layout = layout_name(unidirectional, causal)
    seq_length = check_seq_length(seq_length, model)
    ids = PromptIds.from_tokenizer(tokenizer, mask)
    contexts = [encode(tokenizer, e.context) for e in examples]
    if causal:
        for e, context in zip(examples, contexts, strict=True):
            if not context:
                raise InputError(f"line {e.line}: an empty context; the causal layout needs one token before a choice")
    answers = []
    for e in examples:
        tokenized = [encode(tokenizer, c) for c in e.choices]
        for j, choice in enumerate(tokenized):
            if not choice:
                raise InputError(f"line {e.line}: choice {j} ({e.choices[j]!r}) has no tokens")
        answers.append(tokenized)
    scores = score_final_blank(
        model, ids, contexts, answers, seq_length=seq_length, unidirectional=unidirectional,
        causal=causal, batch_size=batch_size, progress=progress,
    )  # fmt: skip
    rows, correct, labelled = [], 0, 0
    for e, per_choice in zip(examples, scores, strict=True):
        values = [s.log_prob / s.num_tokens if length_normalize else s.log_prob for s in per_choice]
        prediction = max(range(len(values)), key=values.__getitem__)
        row = {"line": e.line, "scores": values, "nll": [-s.log_prob for s in per_choice],
               "tokens": [s.num_tokens for s in per_choice], "prediction": prediction, "label": e.label}  # fmt: skip
        if e.label is not None:
            labelled += 1
            row["correct"] = prediction == e.label
            correct += row["correct"]
        rows.append(row)
    settings = {"seq_length": seq_length, "unidirectional": unidirectional, "layout": layout,
                "length_normalize": length_normalize, "mask_id": ids.mask}  # fmt: skip
    return MultipleChoiceResult(correct / labelled if labelled else None, correct, len(rows), settings, rows)

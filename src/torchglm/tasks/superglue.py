"""SuperGLUE as cloze questions (PET patterns, GLM's recipe): each example becomes a text with one ``[MASK]`` that
a verbalizer word (single-token tasks) or a whole answer (multi-token tasks) fills.

    RTE (pattern 0)   [CLS] "hypothesis" ? [MASK] , "premise" [eos]   + [sop]            targets " Yes" / " No"
    COPA (pattern 0)  [CLS] "choice1" or "choice2"? premise, so [MASK]. [eos] + [sop] choice  one row per choice

The readers follow the original's (curly quotes and dashes to ASCII; WSC's pronoun indices repaired; COPA mirrored in
training; MultiRC one example per answer; ReCoRD's ``@highlight`` as "- ", its gold answer plus up to 9 shuffled
negative entities in training and all entities in evaluation). :func:`cloze_input` lays a pattern out as part A
(``[CLS] parts_a parts_b [eos]``, the longest shortenable part losing one token at a time until it fits) with the
blank's position and, for multi-token tasks, one answer block per choice (``answer + <|endofpiece|>``);
:func:`fixed_length_arrays` writes what the original's dataset returned for it (ids padded with eos to the task's
length, 2-D positions, ``sep``, targets, logit mask), which the golden tests compare.

Default pattern ids, the original's: RTE 0, CB 3, BoolQ 4, WiC 1, MultiRC 0, COPA 0, WSC 2, ReCoRD 0.
"""

from __future__ import annotations

import dataclasses
import random
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torchglm.errors import InputError

from .language_model import read_jsonl
from .scoring import encode

# ----------------------------------------------------------------------------------------------------------------
# Examples


def standardize_punctuation(text: str) -> str:
    """Curly quotes and the en dash to ASCII, as the original's readers do."""
    for curly, plain in (("\u201c", '"'), ("\u201d", '"'), ("\u2019", "'"), ("\u2018", "'"), ("\u2013", "-")):
        text = text.replace(curly, plain)
    return text


@dataclass
class ClozeExample:
    guid: str
    text_a: str
    text_b: str | None = None
    label: object = None
    meta: dict = field(default_factory=dict)
    idx: object = None
    num_choices: int = 1


TASKS = ("rte", "cb", "boolq", "wic", "multirc", "copa", "wsc", "record")
LABELS = {
    "rte": ["entailment", "not_entailment"],
    "cb": ["entailment", "contradiction", "neutral"],
    "boolq": ["false", "true"],
    "wic": ["false", "true"],
    "multirc": [0, 1],
    "copa": [0, 1],
    "wsc": ["False", "True"],
    "record": ["0", "1"],
}
DEFAULT_PATTERN = {"rte": 0, "cb": 3, "boolq": 4, "wic": 1, "multirc": 0, "copa": 0, "wsc": 2, "record": 0}
PATTERNS = {"rte": 5, "cb": 5, "boolq": 6, "wic": 3, "multirc": 5, "copa": 2, "wsc": 3, "record": 1}
"""Number of pattern ids of each task (0 .. n-1)."""
SEQ_LENGTH = {"rte": 256, "cb": 256, "boolq": 256, "wic": 256, "multirc": 512, "copa": 256, "wsc": 128, "record": 512}
MULTI_TOKEN = {"copa", "wsc", "record"}
TASK_FOLDERS = {"rte": "RTE", "cb": "CB", "boolq": "BoolQ", "wic": "WiC", "multirc": "MultiRC", "copa": "COPA",
                "wsc": "WSC", "record": "ReCoRD"}  # fmt: skip


def _field(path, number, record, *names):
    value = record
    for name in names:
        if not isinstance(value, dict) or name not in value:
            raise InputError.at(path, number, f'field "{".".join(names)}" is missing')
        value = value[name]
    return value


def _text(path, number, record, *names) -> str:
    value = _field(path, number, record, *names)
    if not isinstance(value, str):
        raise InputError.at(path, number, f'field "{".".join(names)}" is not a string')
    return standardize_punctuation(value)


def _label(task, path, number, record, convert):
    if "label" not in record:
        return None
    label = convert(record["label"])
    if label not in LABELS[task]:
        raise InputError.at(path, number, f"unknown label {record['label']!r} (the task's labels: {LABELS[task]})")
    return label


def read_examples(task: str, path: str | Path, split: str = "dev", *, wsc_negative: bool = False) -> list[ClozeExample]:
    """A task's examples from its SuperGLUE jsonl file, ``split`` ("train", "dev", "test") naming the guids and
    choosing the training-only rules; ordered by number of choices (stable), as the original orders them.
    ``wsc_negative``: WSC examples without a ``candidates`` field get noun phrases of their text as negatives
    (:func:`torchglm.tasks.noun_phrases.wsc_negatives`; the original's ``--wsc-negative`` data carried them)."""
    if task not in TASKS:
        raise InputError(f"SuperGLUE task {task!r} is not one of {', '.join(TASKS)}")
    records = read_jsonl(path)
    if not records:
        raise InputError(f"{path}: no examples (an empty split)")
    if task == "wsc":
        examples = _read_wsc(path, records, split, wsc_negative)
    else:
        examples = _READERS[task](path, records, split)
    examples.sort(key=lambda e: e.num_choices)
    return examples


def _read_pairs(task, a_name, b_name):
    def read(path, records, split):
        out = []
        for line, (number, record) in enumerate(records):
            idx = record.get("idx", line)
            label = _label(task, path, number, record, str)
            out.append(ClozeExample(f"{split}-{idx}", _text(path, number, record, a_name),
                                    _text(path, number, record, b_name), label, idx=idx))  # fmt: skip
        return out

    return read


def _read_boolq(path, records, split):
    out = []
    for number, record in records:
        idx = record.get("idx")
        label = _label("boolq", path, number, record, lambda v: str(v).lower())
        out.append(ClozeExample(f"{split}-{idx}", _text(path, number, record, "passage"),
                                _text(path, number, record, "question"), label, idx=idx))  # fmt: skip
    return out


def _read_wic(path, records, split):
    out = []
    for number, record in records:
        idx = record.get("idx")
        label = ("true" if record.get("label") else "false") if "label" in record else None
        meta = {"word": _text(path, number, record, "word")}
        out.append(ClozeExample(f"{split}-{idx}", _text(path, number, record, "sentence1"),
                                _text(path, number, record, "sentence2"), label, meta, idx))  # fmt: skip
    return out


def _read_multirc(path, records, split):
    out = []
    for number, record in records:
        passage = _field(path, number, record, "passage")
        text = _text(path, number, record, "passage", "text")
        for question in _field(path, number, passage, "questions"):
            query = standardize_punctuation(_field(path, number, question, "question"))
            for answer in _field(path, number, question, "answers"):
                label = _label("multirc", path, number, answer, int)
                meta = {"passage_idx": record.get("idx"), "question_idx": question.get("idx"),
                        "answer_idx": answer.get("idx"), "answer": _text(path, number, answer, "text")}  # fmt: skip
                guid = f"{split}-p{meta['passage_idx']}-q{meta['question_idx']}-a{meta['answer_idx']}"
                idx = [meta["passage_idx"], meta["question_idx"], meta["answer_idx"]]
                out.append(ClozeExample(guid, text, query, label, meta, idx))
    return out


def _read_copa(path, records, split):
    out = []
    for number, record in records:
        idx = record.get("idx")
        meta = {k: _field(path, number, record, k) for k in ("choice1", "choice2", "question")}
        if meta["question"] not in ("cause", "effect"):
            raise InputError.at(path, number, f'field "question" is {meta["question"]!r}, not "cause" or "effect"')
        label = _label("copa", path, number, record, int)
        out.append(ClozeExample(f"{split}-{idx}", _field(path, number, record, "premise"), None, label, meta, idx))
    if split == "train":  # the original's augmentation: every example again with its choices swapped
        out += [
            ClozeExample(e.guid + "m", e.text_a, None, None if e.label is None else 1 - e.label,
                         {"choice1": e.meta["choice2"], "choice2": e.meta["choice1"], "question": e.meta["question"]})
            for e in list(out)
        ]  # fmt: skip
    return out


def _read_wsc(path, records, split, extract_negatives: bool = False):
    out = []
    for number, record in records:
        idx = record.get("idx")
        label = _label("wsc", path, number, record, str)
        text = _text(path, number, record, "text")
        target = _field(path, number, record, "target")
        span1_text, span2_text = _field(path, number, target, "span1_text"), _field(path, number, target, "span2_text")
        span1, span2 = _field(path, number, target, "span1_index"), _field(path, number, target, "span2_index")
        words, lower, span1_words = text.split(), text.lower().split(), span1_text.lower().split()
        # the dataset's indices are off by one for some examples: repaired as the original does
        if lower[span1 : span1 + len(span1_words)] != span1_words:
            for offset in (-1, 1):
                if lower[span1 + offset : span1 + len(span1_words) + offset] == span1_words:
                    span1 += offset
        if words[span2] != span2_text:
            for offset in (-1, 1):
                if 0 <= span2 + offset < len(words) and words[span2 + offset] == span2_text:
                    span2 += offset
            if words[span2] != span2_text and words[span2].startswith(span2_text):
                words = [*words[:span2], words[span2][: len(span2_text)], words[span2][len(span2_text) :],
                         *words[span2 + 1 :]]  # fmt: skip
        if words[span2] != span2_text:
            raise InputError.at(path, number, f"the pronoun {span2_text!r} is not word {span2} of the text")
        meta = {"span1_text": span1_text, "span2_text": span2_text, "span1_index": span1, "span2_index": span2}
        candidates = []
        for candidate in record.get("candidates", []):
            if candidate["text"] not in candidates:
                candidates.append(candidate["text"])
        if split == "train" and label != "True":
            continue  # the cloze recipe trains on the true referents (their candidates are the negatives)
        guid, text = f"{split}-{idx}", " ".join(words)
        extracted = extract_negatives and "candidates" not in record
        if extracted:
            from .noun_phrases import wsc_negatives

            candidates = wsc_negatives(text, span1_text)
        if split == "train" and len(candidates) > 9:
            for first in range(0, len(candidates), 9):
                chunk = candidates[first : first + 9]
                chunk += candidates[: 9 - len(chunk)]
                out.append(ClozeExample(guid, text, None, label, {**meta, "candidates": chunk}, idx))
        else:
            if "candidates" in record or extracted:
                meta["candidates"] = candidates
            out.append(ClozeExample(guid, text, None, label, meta, idx))
    return out


def _read_record(path, records, split, seed: int = 42, max_train_candidates: int = 10):
    out, shuffler = [], random.Random(seed)
    for number, record in records:
        idx = record.get("idx")
        passage = _field(path, number, record, "passage")
        text = _text(path, number, record, "passage", "text")
        spans = _field(path, number, passage, "entities")  # inclusive character offsets into the passage
        entities = sorted({text[e["start"] : e["end"] + 1] for e in spans})  # one-for-one replacements keep offsets
        text = text.replace("@highlight\n", "- ")  # as the GPT-3 paper writes ReCoRD's highlights
        for question in _field(path, number, record, "qas"):
            query = standardize_punctuation(_field(path, number, question, "query"))
            if "@placeholder" not in query:
                raise InputError.at(path, number, "a ReCoRD query without @placeholder")
            answers = list(dict.fromkeys(standardize_punctuation(a["text"]) for a in question.get("answers", [])))
            qid = question.get("idx")
            if split == "train":
                for k, answer in enumerate(answers):
                    negatives = [e for e in entities if e not in answers]
                    if len(negatives) > max_train_candidates - 1:
                        shuffler.shuffle(negatives)
                        negatives = negatives[: max_train_candidates - 1]
                    meta = {"passage_idx": idx, "question_idx": qid, "candidates": [answer, *negatives],
                            "answers": [answer]}  # fmt: skip
                    out.append(ClozeExample(f"{split}-p{idx}-q{qid}-a{k}", text, query, "0", meta, [idx, qid, k],
                                            len(negatives) + 1))  # fmt: skip
            else:
                meta = {"passage_idx": idx, "question_idx": qid, "candidates": entities, "answers": answers}
                out.append(ClozeExample(f"{split}-p{idx}-q{qid}", text, query, "1", meta, qid, len(entities)))
    return out


_READERS = {
    "rte": _read_pairs("rte", "premise", "hypothesis"),
    "cb": _read_pairs("cb", "premise", "hypothesis"),
    "boolq": _read_boolq,
    "wic": _read_wic,
    "multirc": _read_multirc,
    "copa": _read_copa,
    "wsc": _read_wsc,
    "record": _read_record,
}


@dataclass(frozen=True)
class ExternalTask:
    """A cloze task of another module (``tasks/clue.py``) served by this one's layout, scoring, training and
    metrics: its rows of the tables above and the functions that stand in for this module's per-task branches."""

    labels: list
    default_pattern: int
    patterns: int
    seq_length: int
    read: Callable  # (path, records, split) -> list[ClozeExample]
    pattern_parts: Callable  # (example, pattern_id) -> (parts_a, parts_b)
    task_file: Callable  # (data folder or None, split) -> Path
    submission_rows: Callable  # (examples, predictions) -> list[dict]
    submission_file: str
    verbalizer: Callable | None = None  # (pattern_id, label) -> str, for a single-token task
    answers: Callable | None = None  # (example) -> list[str], for a multi-token task


EXTERNAL_TASKS: dict[str, ExternalTask] = {}


def register_task(name: str, task: ExternalTask) -> None:
    """Add a task to the table: ``TASKS`` (so the CLI's choices and the finetuning planner) and the dicts above."""
    global TASKS
    if name not in TASKS:
        TASKS = (*TASKS, name)
    LABELS[name], DEFAULT_PATTERN[name], PATTERNS[name] = task.labels, task.default_pattern, task.patterns
    SEQ_LENGTH[name], _READERS[name] = task.seq_length, task.read
    if task.answers is not None:
        MULTI_TOKEN.add(name)
    EXTERNAL_TASKS[name] = task


# ----------------------------------------------------------------------------------------------------------------
# Patterns and verbalizers

MASK = object()
"""The blank's place in a pattern."""


def _short(text: str) -> tuple[str, bool]:
    return (text, True)


def _strip_punct(part):
    if isinstance(part, tuple):
        return (part[0].rstrip(string.punctuation), part[1])
    return part.rstrip(string.punctuation)


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def pattern_parts(task: str, example: ClozeExample, pattern_id: int):
    """``(parts_a, parts_b)``: the pattern's pieces, each a string, ``(string, shortenable)`` or :data:`MASK`."""
    if not 0 <= pattern_id < PATTERNS[task]:
        raise InputError(f"{task} has no pattern {pattern_id} (its patterns: 0..{PATTERNS[task] - 1})")
    if task in EXTERNAL_TASKS:
        return EXTERNAL_TASKS[task].pattern_parts(example, pattern_id)
    e, p = example, pattern_id
    if task in ("rte", "cb"):
        if task == "cb" and p == 4:
            return [_short(e.text_a), " question:", _short(" " + e.text_b), " true, false or neither?", " answer:",
                    MASK], []  # fmt: skip
        premise, hypothesis = e.text_a, e.text_b.rstrip(string.punctuation)
        if p == 0:
            return ['"', _short(hypothesis), '" ?'], [MASK, ",", ' "', _short(premise), '"']
        if p == 1:
            return [_short(hypothesis), "?"], [MASK, ",", _short(" " + premise)]
        if p == 2:
            return ['"', _short(hypothesis), '" ?'], [MASK, '. "', _short(premise), '"']
        if p == 3:
            return [_short(hypothesis), "?"], [MASK, ".", _short(" " + premise)]
        return [_short(premise), " question:", _short(" " + e.text_b), " True or False?", " answer:", MASK], []
    if task == "boolq":
        passage, question = e.text_a, e.text_b
        if p < 2:
            return [_short(passage), " Question:", _short(" " + question), "? Answer:", MASK, "."], []
        if p < 4:
            return [_short(passage), " Based on the previous passage,", _short(" " + question), "?", MASK, "."], []
        return ["Based on the following passage", _short(" " + question), "?", MASK, ".", _short(" " + passage)], []
    if task == "wic":
        word = e.meta["word"]
        if p == 0:
            return [_short('"' + e.text_a + '" / "' + e.text_b + '"'), ' Similar sense of "' + word + '"?', MASK,
                    "."], []  # fmt: skip
        if p == 1:
            return [_short(e.text_a), _short(" " + e.text_b),
                    " Does " + word + " have the same meaning in both sentences?", MASK], []  # fmt: skip
        return [word, " .", ' Sense (1) (a) "', _short(e.text_a), '"', " (", MASK, ') "', e.text_b, '"'], []
    if task == "multirc":
        passage = _strip_punct(_short(e.text_a.rstrip()))
        question, answer = _strip_punct(e.text_b.rstrip()), e.meta["answer"]
        if p == 0:
            return [passage, ".", " Question:", " " + question + "?", " Is it", " " + answer, "?", MASK, "."], []
        if p == 1:
            return [passage, ".", " Question:", " " + question, "?", ' Is the correct answer "', answer, '"?', MASK,
                    "."], []  # fmt: skip
        if p == 2:
            return [passage, ". Based on the previous passage,", " " + question, "?", ' Is "', answer,
                    '" a correct answer?', MASK, "."], []  # fmt: skip
        if p == 3:
            return [passage, " " + question, "- [", MASK, "]", answer], []
        return [passage, ".", " Question:", " " + question, "?", " " + answer, "?", MASK, "."], []
    if task == "copa":
        premise = _strip_punct(_short(" " + e.text_a))
        choice1, choice2 = (_strip_punct(_lower_first(e.meta[k])) for k in ("choice1", "choice2"))
        joiner = " because" if e.meta["question"] == "cause" else ", so"
        if p == 0:
            return ['"', choice1, '" or "', choice2, '"?', premise, joiner, MASK, "."], []
        return [choice1, " or", " " + choice2, "?", premise, joiner, MASK, "."], []
    if task == "wsc":
        words = e.text_a.split()
        words[e.meta["span2_index"]] = "*" + words[e.meta["span2_index"]] + "*"
        text, pronoun = _short(" ".join(words)), e.meta["span2_text"]
        if p == 0:
            return [text, " The pronoun '*" + pronoun + "*' refers to", MASK, "."], []
        if p == 1:
            return [text, " In the previous sentence, the pronoun '*" + pronoun + "*' refers to", MASK, "."], []
        return [text, " Question: In the passage above, what does the pronoun '*" + pronoun + "*' refer to?",
                " Answer:", MASK, "."], []  # fmt: skip
    question_a, question_b = e.text_b.split("@placeholder", 1)  # record
    return [_short(e.text_a), " " + question_a.rstrip(), MASK, question_b], []


def verbalizer(task: str, pattern_id: int, label) -> str:
    """The word that fills the blank for ``label`` (single-token tasks)."""
    if getattr(EXTERNAL_TASKS.get(task), "verbalizer", None) is not None:
        return EXTERNAL_TASKS[task].verbalizer(pattern_id, label)
    if task in ("rte", "cb") and pattern_id == 4:
        return {"entailment": " true", "contradiction": " false", "not_entailment": " false"}.get(label, " neither")
    if task == "rte":
        return {"entailment": " Yes", "not_entailment": " No"}[label]
    if task == "cb":
        return {"entailment": " Yes", "contradiction": " No", "neutral": " Maybe"}[label]
    if task == "boolq":
        yes_no = pattern_id in (0, 2, 4)
        return {"false": " No" if yes_no else " false", "true": " Yes" if yes_no else " true"}[label]
    if task == "wic":
        if pattern_id == 2:
            return {"false": "2", "true": "b"}[label]
        return {"false": " No", "true": " Yes"}[label]
    if task == "multirc":
        if pattern_id == 3:
            return " False" if label == 0 else " True"
        return " No" if label == 0 else " Yes"
    raise InputError(f"{task} is a multi-token task: its answers are the choices, not verbalizer words")


def answers(task: str, example: ClozeExample) -> list[str]:
    """The texts each choice fills the blank with (multi-token tasks), the correct one at the label's index."""
    if getattr(EXTERNAL_TASKS.get(task), "answers", None) is not None:
        return EXTERNAL_TASKS[task].answers(example)
    if task == "copa":
        return [" " + _strip_punct(_lower_first(example.meta[k])) for k in ("choice1", "choice2")]
    if task == "wsc":
        return [" " + example.meta["span1_text"], *(" " + c for c in example.meta.get("candidates", []))]
    if task == "record":
        return [" " + c for c in example.meta["candidates"]]
    raise InputError(f"{task} is a single-token task: its choices are verbalizer words")


# ----------------------------------------------------------------------------------------------------------------
# Layout


@dataclass
class ClozeInput:
    """One example as GLM input: part A (``[CLS] ... [eos]``) with its blank, and what fills the blank."""

    guid: str
    label: int
    part_a: list[int] | None
    """Single-token tasks: the one part A (multi-token tasks have one per choice, see ``choice_part_a``)."""
    mask_position: int | None
    verbalizer_ids: list[int] | None = None
    """Single-token tasks: each label's verbalizer id, in label order."""
    choice_part_a: list[list[int]] | None = None
    """Multi-token tasks: part A of each choice (truncated for that choice's length)."""
    choice_mask_positions: list[int] | None = None
    choice_ids: list[list[int]] | None = None
    """Multi-token tasks: each choice's ids + <|endofpiece|>, the block's targets."""


def _encode_parts(tokenizer, parts, mask_id: int) -> list[tuple[list[int], bool]]:
    out = []
    for part in parts:
        if part is MASK:
            out.append(([mask_id], False))
        elif isinstance(part, list):  # ids as they are: P-tuning's prompt slots (tasks.prompts)
            out.append((list(part), False))
        elif isinstance(part, tuple):
            out.append((encode(tokenizer, part[0]), part[1]))
        else:
            out.append((encode(tokenizer, part), False))
    return out


def _length(parts, shortenable_only: bool = False) -> int:
    return sum(len(ids) for ids, short in parts if short or not shortenable_only)


def _truncate(parts_a, parts_b, room: int) -> None:
    """The original's rule: one token at a time off the end of the last non-empty shortenable part of whichever
    side has more shortenable tokens (A on a tie goes to B), until the parts fit ``room`` tokens."""
    for _ in range(_length(parts_a) + _length(parts_b) - room):
        side = parts_a if _length(parts_a, True) > _length(parts_b, True) else parts_b
        candidates = [i for i, (ids, short) in enumerate(side) if short and ids]
        if not candidates:
            raise InputError("the pattern's fixed text alone is longer than the sequence length")
        last = candidates[-1]
        side[last] = (side[last][0][:-1], True)


def _part_a(tokenizer, parts_a, parts_b, seq_length: int, mask_id: int) -> tuple[list[int], int]:
    ids = [tokenizer.cls_token_id] + [t for p, _ in parts_a for t in p] + [t for p, _ in parts_b for t in p]
    ids = ids[: seq_length - 1] + [tokenizer.eos_token_id]
    if mask_id not in ids:
        raise InputError(f"the blank was cut off: the pattern does not fit {seq_length} tokens")
    return ids, len(ids) - 1 - ids[::-1].index(mask_id)


def cloze_input(tokenizer, task: str, example: ClozeExample, pattern_id: int | None = None,
                seq_length: int | None = None, prompt=None) -> ClozeInput:  # fmt: skip
    """Lay an example out with a pattern (default: the task's) at a sequence length (default: the task's);
    ``prompt`` (a ``tasks.prompts.PromptLayout``): P-tuning's placeholder ids at the pattern's prompt slots."""
    pattern_id = DEFAULT_PATTERN[task] if pattern_id is None else pattern_id
    seq_length = SEQ_LENGTH[task] if seq_length is None else seq_length
    mask_id = tokenizer.mask_token_id
    raw_a, raw_b = pattern_parts(task, example, pattern_id)
    if prompt is not None:
        raw_a, raw_b = prompt.parts(task, pattern_id, raw_a, raw_b)
    label = LABELS[task].index(example.label) if example.label is not None else 0
    if task not in MULTI_TOKEN:
        parts_a, parts_b = _encode_parts(tokenizer, raw_a, mask_id), _encode_parts(tokenizer, raw_b, mask_id)
        _truncate(parts_a, parts_b, seq_length - 3)  # [CLS], eos and the block's <|startofpiece|>
        part_a, mask_position = _part_a(tokenizer, parts_a, parts_b, seq_length, mask_id)
        verbalizers = []
        for name in LABELS[task]:
            ids = encode(tokenizer, verbalizer(task, pattern_id, name))
            if len(ids) != 1:
                raise InputError(f"{task} verbalizer {verbalizer(task, pattern_id, name)!r} is not one token here")
            verbalizers.append(ids[0])
        return ClozeInput(example.guid, label, part_a, mask_position, verbalizers)
    out = ClozeInput(example.guid, label, None, None, choice_part_a=[], choice_mask_positions=[], choice_ids=[])
    encoded_a, encoded_b = _encode_parts(tokenizer, raw_a, mask_id), _encode_parts(tokenizer, raw_b, mask_id)
    for text in answers(task, example):
        answer = [*encode(tokenizer, text), tokenizer.eop_token_id]
        parts_a, parts_b = list(encoded_a), list(encoded_b)  # each choice truncates its own copy (the lists only)
        _truncate(parts_a, parts_b, seq_length - 2 - len(answer))  # [CLS], eos
        part_a, mask_position = _part_a(tokenizer, parts_a, parts_b, seq_length, mask_id)
        out.choice_part_a.append(part_a)
        out.choice_mask_positions.append(mask_position)
        out.choice_ids.append(answer)
    if task == "wsc" and example.guid.startswith("train"):
        out.label = 0  # the true referent is choice 0 in training (its negatives follow)
    return out


def loss_inputs(task: str, inputs: Sequence[ClozeInput]) -> list[ClozeInput]:
    """The inputs whose ``label`` the cloze loss can read as the correct choice (the dev loss). A WSC dev label says
    whether the example's referent is the pronoun's (False/True), not a choice: the loss scores the referent (choice
    0) against its negatives, so only the true referents count, as in training. Other tasks: all, unchanged."""
    if task != "wsc":
        return list(inputs)
    true = LABELS["wsc"].index("True")
    return [dataclasses.replace(item, label=0) for item in inputs if item.label == true]


def fixed_length_arrays(cloze: ClozeInput, seq_length: int, pad_id: int, sop_id: int) -> dict:
    """What the original's dataset returned for the example: ``text`` (ids padded with eos to ``seq_length``),
    ``position`` ``[2, L]``, ``mask`` (= sep), ``target``, ``logit_mask`` (per choice for multi-token tasks),
    ``label``. torchglm's own batches pad only to the batch and never attend the padding; these are for comparing."""

    def row(part_a, mask_position, answer):
        sep = len(part_a)
        block = [sop_id, *answer[:-1]] if answer else [sop_id]
        ids = part_a + block
        positions = list(range(sep)) + [mask_position] * len(block)
        blocks = [0] * sep + list(range(1, len(block) + 1))
        target = [0] * sep + (list(answer) if answer else [0])
        logit = [0] * sep + [1] * len(block)
        pad = seq_length - len(ids)
        return (ids + [pad_id] * pad, [positions + [0] * pad, blocks + [0] * pad], sep, target + [0] * pad,
                logit + [0] * pad)  # fmt: skip

    if cloze.part_a is not None:
        ids, position, sep, _, logit = row(cloze.part_a, cloze.mask_position, None)
        return {"text": ids, "position": position, "mask": sep, "target": list(cloze.verbalizer_ids),
                "logit_mask": logit, "label": cloze.label}  # fmt: skip
    rows = [row(a, m, c) for a, m, c in zip(cloze.choice_part_a, cloze.choice_mask_positions, cloze.choice_ids,
                                            strict=True)]  # fmt: skip
    return {"text": [r[0] for r in rows], "position": [r[1] for r in rows], "mask": [r[2] for r in rows],
            "target": [r[3] for r in rows], "logit_mask": [r[4] for r in rows], "label": cloze.label}  # fmt: skip


def task_file(data: str | Path | None, task: str, split: str) -> Path:
    """``DATA/RTE/val.jsonl`` and the like: a task's split in the official SuperGLUE folder layout (``split``:
    train, val, test, dev32; ``data`` None: ../shared/data/superglue); CLUE tasks: ``clue.task_file``."""
    if task in EXTERNAL_TASKS:
        return EXTERNAL_TASKS[task].task_file(data, split)
    folder = Path("../shared/data/superglue" if data is None else data)
    if (folder / TASK_FOLDERS[task]).is_dir():
        folder = folder / TASK_FOLDERS[task]
    path = folder / f"{split}.jsonl"
    if not path.is_file():
        raise InputError(f"{path}: no such file (the {task} {split} split)")
    return path


def build_inputs(tokenizer, task: str, examples: Sequence[ClozeExample], pattern_id: int | None = None,
                 seq_length: int | None = None, prompt=None) -> list[ClozeInput]:  # fmt: skip
    return [cloze_input(tokenizer, task, e, pattern_id, seq_length, prompt) for e in examples]


# ----------------------------------------------------------------------------------------------------------------
# Scoring: each label's verbalizer, or each choice's answer block, after its part A (KV cache, shared)


@dataclass
class ClozeScores:
    guid: str
    label: int
    scores: list[float]
    """Single-token: log p(verbalizer) at the blank, per label; multi-token: the choice's summed log-probability
    (divided by its length ** length_penalty)."""

    @property
    def prediction(self) -> int:
        return max(range(len(self.scores)), key=self.scores.__getitem__)


def score_inputs(model, tokenizer, inputs: Sequence[ClozeInput], *, length_penalty: float = 0.0,
                 batch_size: int = 16, progress=None) -> list[ClozeScores]:  # fmt: skip
    """Score every label (single-token) or choice (multi-token) through ``generation.score``: each distinct part A
    is encoded once and every continuation after it is one part-B block (``[sop]`` predicting the verbalizer; or
    ``[sop] answer`` predicting ``answer <|endofpiece|>``), exact rather than the original's 16-token cut."""
    from torchglm.generation.score import score
    from torchglm.layout import Block

    sop = tokenizer.sop_token_id
    contexts, continuations, owners = [], [], []  # owners[k] = [(input, choice)] of context k's continuations
    for i, item in enumerate(inputs):
        if item.part_a is not None:
            contexts.append(item.part_a)
            continuations.append([Block([sop], item.mask_position, 1, [v]) for v in item.verbalizer_ids])
            owners.append([(i, c) for c in range(len(item.verbalizer_ids))])
            continue
        by_context: dict[tuple, int] = {}
        for c, (part_a, mask, answer) in enumerate(
            zip(item.choice_part_a, item.choice_mask_positions, item.choice_ids, strict=True)
        ):
            key = tuple(part_a)
            if key not in by_context:
                by_context[key] = len(contexts)
                contexts.append(part_a)
                continuations.append([])
                owners.append([])
            k = by_context[key]
            continuations[k].append(Block([sop, *answer[:-1]], mask, 1, answer))
            owners[k].append((i, c))
    results = score(model, contexts, continuations, pad_id=tokenizer.pad_token_id, batch_size=batch_size)
    scores = [[0.0] * (len(x.verbalizer_ids) if x.part_a is not None else len(x.choice_ids)) for x in inputs]
    for k, found in enumerate(results):
        for (i, c), result in zip(owners[k], found, strict=True):
            value = result.log_prob
            if inputs[i].part_a is None and length_penalty:
                value /= result.num_tokens**length_penalty
            scores[i][c] = value
    if progress is not None:
        progress(len(inputs))
    return [ClozeScores(x.guid, x.label, s) for x, s in zip(inputs, scores, strict=True)]


# ----------------------------------------------------------------------------------------------------------------
# Metrics, as the official SuperGLUE scorer


def _normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    import re

    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD token F1 between a prediction and one gold answer (after :func:`_normalize_answer`)."""
    from collections import Counter

    predicted, wanted = _normalize_answer(prediction).split(), _normalize_answer(gold).split()
    common = sum((Counter(predicted) & Counter(wanted)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(wanted)
    return 2 * precision * recall / (precision + recall)


def metrics(task: str, examples: Sequence[ClozeExample], predictions: Sequence[int]) -> dict[str, float]:
    """The official metrics (x100): accuracy; CB accuracy and macro-F1; MultiRC F1 over all answers (F1a) and
    exact match per question; ReCoRD max-over-gold token F1 and exact match; from scikit-learn where it computes
    the same thing."""
    from sklearn.metrics import accuracy_score, f1_score

    if len(examples) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")
    if task == "record":
        f1 = exact = 0.0
        for example, choice in zip(examples, predictions, strict=True):
            predicted = example.meta["candidates"][choice]
            golds = example.meta["answers"]
            f1 += max(token_f1(predicted, g) for g in golds)
            exact += max(float(_normalize_answer(predicted) == _normalize_answer(g)) for g in golds)
        return {"f1": 100 * f1 / len(examples), "em": 100 * exact / len(examples)}
    labels = [LABELS[task].index(e.label) for e in examples]
    out = {"accuracy": 100 * accuracy_score(labels, predictions)}
    if task == "cb":
        out["f1_macro"] = 100 * f1_score(labels, predictions, average="macro", labels=[0, 1, 2], zero_division=0)
    if task == "multirc":
        out["f1a"] = 100 * f1_score(labels, predictions, zero_division=0)
        questions: dict = {}
        for example, label, predicted in zip(examples, labels, predictions, strict=True):
            key = (example.meta["passage_idx"], example.meta["question_idx"])
            questions[key] = questions.get(key, True) and label == predicted
        out["em"] = 100 * sum(questions.values()) / len(questions)
        del out["accuracy"]
    return out


def submission_rows(task: str, examples: Sequence[ClozeExample], predictions: Sequence[int]) -> list[dict]:
    """The SuperGLUE submission lines (``RTE.jsonl``: ``{"idx", "label"}``; MultiRC nested by passage and question;
    ReCoRD the chosen entity), as the original writes them."""
    if task in EXTERNAL_TASKS:
        return EXTERNAL_TASKS[task].submission_rows(examples, predictions)
    if task == "record":
        return [{"idx": e.idx, "label": e.meta["candidates"][p]} for e, p in zip(examples, predictions, strict=True)]
    if task == "multirc":
        passages: dict = {}
        for e, p in zip(examples, predictions, strict=True):
            questions = passages.setdefault(e.meta["passage_idx"], {})
            questions.setdefault(e.meta["question_idx"], []).append({"idx": e.meta["answer_idx"], "label": p})
        return [
            {"idx": pid, "passage": {"questions": [{"idx": qid, "answers": a} for qid, a in questions.items()]}}
            for pid, questions in passages.items()
        ]
    return [{"idx": e.idx, "label": LABELS[task][p]} for e, p in zip(examples, predictions, strict=True)]


def submission_file(task: str) -> str:
    """The name of the task's submission file: ``RTE.jsonl`` and the like (CLUE: ``afqmc_predict.json``)."""
    return EXTERNAL_TASKS[task].submission_file if task in EXTERNAL_TASKS else TASK_FOLDERS[task] + ".jsonl"


# ----------------------------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class SuperGlueResult:
    task: str
    pattern_id: int
    examples: int
    metrics: dict[str, float]
    predictions: list[int] = field(default_factory=list, repr=False)

    def summary(self) -> str:
        scores = ", ".join(f"{k} {v:.2f}" for k, v in self.metrics.items())
        return f"{self.task} (pattern {self.pattern_id}): {self.examples} examples, {scores}"

    def to_dict(self) -> dict:
        return {"task": self.task, "pattern_id": self.pattern_id, "examples": self.examples, "metrics": self.metrics}


def evaluate_superglue(model, tokenizer, task: str, examples: Sequence[ClozeExample], *,
                       pattern_id: int | None = None, seq_length: int | None = None, length_penalty: float = 0.0,
                       batch_size: int = 16, progress=None) -> SuperGlueResult:  # fmt: skip
    """Score every example's labels or choices (:func:`score_inputs`) and compute the task's official metrics; a
    model with a P-tuning prompt encoder attached gets its prompt slots."""
    from .prompts import prompt_layout

    pattern_id = DEFAULT_PATTERN[task] if pattern_id is None else pattern_id
    seq_length = min(SEQ_LENGTH[task] if seq_length is None else seq_length, int(model.config.max_sequence_length))
    inputs = build_inputs(tokenizer, task, examples, pattern_id, seq_length, prompt_layout(model))
    scored = score_inputs(model, tokenizer, inputs, length_penalty=length_penalty, batch_size=batch_size,
                          progress=progress)  # fmt: skip
    predictions = [s.prediction for s in scored]
    if task == "wsc":  # choice 0 is the example's referent: "True" when it outscores every negative, as the original
        predictions = [LABELS["wsc"].index("True") if p == 0 else LABELS["wsc"].index("False") for p in predictions]
    labelled = all(e.label is not None for e in examples)
    found = metrics(task, examples, predictions) if labelled else {}
    return SuperGlueResult(task, pattern_id, len(examples), found, predictions)


# ----------------------------------------------------------------------------------------------------------------
# Training: the cloze objective


def training_rows(cloze: ClozeInput, sop_id: int):
    """The rows one example trains on, as ``layout.Sample``: single-token, part A + ``[sop]`` labelled with the
    gold verbalizer (the loss reads every verbalizer's logit there); multi-token, one row per choice, ``[sop]
    answer`` labelled with ``answer <|endofpiece|>``."""
    from torchglm.layout import Block, Sample

    if cloze.part_a is not None:
        return [Sample(cloze.part_a, [Block([sop_id], cloze.mask_position, 1, [cloze.verbalizer_ids[cloze.label]])])]
    return [
        Sample(part_a, [Block([sop_id, *answer[:-1]], mask, 1, answer)])
        for part_a, mask, answer in zip(
            cloze.choice_part_a, cloze.choice_mask_positions, cloze.choice_ids, strict=True
        )  # fmt: skip
    ]


def collate_cloze(items: Sequence[ClozeInput], pad_id: int, sop_id: int) -> dict:
    """A batch of examples: their rows laid out together (padding never attended) plus ``cloze_label [B]`` and
    either ``verbalizers [B, K]`` (single-token) or ``row_example``/``row_choice [R]`` (multi-token)."""
    import torch

    from torchglm.layout import build_batch

    rows, row_example, row_choice = [], [], []
    for i, item in enumerate(items):
        for c, row in enumerate(training_rows(item, sop_id)):
            rows.append(row)
            row_example.append(i)
            row_choice.append(c)
    batch = dict(build_batch(rows, pad_id=pad_id))
    batch.pop("block_index", None)
    batch["cloze_label"] = torch.tensor([item.label for item in items])
    if items[0].part_a is not None:
        batch["verbalizers"] = torch.tensor([item.verbalizer_ids for item in items])
    else:
        batch["row_example"], batch["row_choice"] = torch.tensor(row_example), torch.tensor(row_choice)
    return batch


CLOZE_LOSSES = ("cross_entropy", "hinge", "generative", "mix")


def cloze_loss_terms(scores, gold, loss: str = "cross_entropy", margin: float = 1.0):
    """Each example's loss from its choices' scores ``[B, C]`` (``-inf`` where an example has fewer choices) and the
    gold choice ``[B]``, as the original's ``--loss-func``: ``cross_entropy`` over the choices; ``hinge``, the sum of
    ``max(0, margin + s_j - s_gold)`` over the wrong choices (the original's margin is 1); ``generative``, ``-s_gold``
    (the LM loss of the correct answer alone); ``mix``, cross-entropy + generative."""
    import torch.nn.functional as F

    if loss not in CLOZE_LOSSES:
        raise ValueError(f"cloze loss {loss!r} is not one of {CLOZE_LOSSES}")
    gold_score = scores.gather(1, gold[:, None]).squeeze(1)
    if loss == "hinge":
        return (margin + scores - gold_score[:, None]).clamp(min=0).sum(dim=1) - margin  # the gold term is margin
    cross_entropy = F.cross_entropy(scores, gold, reduction="none")
    if loss == "cross_entropy":
        return cross_entropy
    return -gold_score if loss == "generative" else cross_entropy - gold_score


class ClozeLoss:
    """The cloze objective, summed per example: the scores are the labels' verbalizer log-probabilities at the blank
    (single-token) or the choices' summed answer log-probabilities, over tokens ** ``length_penalty`` (multi-token);
    :func:`cloze_loss_terms` turns them into the ``loss`` chosen (the original's ``--loss-func``)."""

    def __init__(self, loss: str = "cross_entropy", length_penalty: float = 0.0, margin: float = 1.0):
        if loss not in CLOZE_LOSSES:
            raise ValueError(f"cloze loss {loss!r} is not one of {CLOZE_LOSSES}")
        self.loss, self.length_penalty, self.margin = loss, length_penalty, margin

    def count(self, batch) -> int:
        return int(batch["cloze_label"].numel())

    def __call__(self, model, batch):
        import torch
        import torch.nn.functional as F

        from torchglm.layout import model_inputs
        from torchglm.losses import LossSums

        labels = batch["labels"]
        targets = labels != -100
        logits = model(**model_inputs(batch), predict_at=targets, use_cache=False).logits.float()  # [N, V]
        log_probs = F.log_softmax(logits, dim=-1)
        gold = batch["cloze_label"]
        if "verbalizers" in batch:  # one labelled position per row, one row per example
            scores = log_probs.gather(1, batch["verbalizers"])  # the original's raw logits, shifted per row
        else:
            token = log_probs.gather(1, labels[targets][:, None]).squeeze(1)
            rows = targets.nonzero()[:, 0]
            per_row = torch.zeros(labels.shape[0], device=token.device).index_add(0, rows, token)
            if self.length_penalty:
                lengths = torch.zeros(labels.shape[0], device=token.device).index_add(0, rows, torch.ones_like(token))
                per_row = per_row / lengths.clamp(min=1) ** self.length_penalty
            choices = int(batch["row_choice"].max()) + 1
            scores = torch.full((gold.numel(), choices), float("-inf"), device=token.device)
            scores = scores.index_put((batch["row_example"], batch["row_choice"]), per_row)
        loss = cloze_loss_terms(scores, gold, self.loss, self.margin).sum()
        correct = (scores.argmax(dim=-1) == gold).float().sum().detach()
        return LossSums(total=loss, count=gold.numel(), tokens=labels.numel(),
                        parts={"accuracy": (correct, torch.tensor(float(gold.numel())))})  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# The classification-head alternative: [CLS] A [SEP] B [eos], fully bidirectional, a pooled token classified

CLASSIFIER_TASKS = ("rte", "cb", "boolq", "wic", "multirc")


@dataclass
class ClassifierInput:
    guid: str
    label: int
    ids: list[int]


def classifier_input(tokenizer, task: str, example: ClozeExample, seq_length: int) -> ClassifierInput:
    """The original's classifier layout: ``[CLS] A [SEP] B [eos]`` cut to ``seq_length`` (from the end), with A and
    B as its processors pair them (WiC prefixes the word, MultiRC appends " answer: " and the answer to B)."""
    if task not in CLASSIFIER_TASKS:
        raise InputError(f"the classification head serves {', '.join(CLASSIFIER_TASKS)}, not {task}")
    text_a, text_b = example.text_a, example.text_b
    if task == "wic":
        text_a = example.meta["word"] + ": " + text_a
    if task == "multirc":
        text_b = " ".join([example.text_b, "answer:", example.meta["answer"]])
    ids = [tokenizer.cls_token_id, *encode(tokenizer, text_a), tokenizer.sep_token_id, *encode(tokenizer, text_b)]
    ids = ids[: seq_length - 1] + [tokenizer.eos_token_id]
    label = LABELS[task].index(example.label) if example.label is not None else 0
    return ClassifierInput(example.guid, label, ids)


def collate_classifier(items: Sequence[ClassifierInput], pad_id: int) -> dict:
    """Padded to the longest; ``sep`` = each sequence's length (all of it bidirectional, padding never seen)."""
    import torch

    from torchglm.layout import Sample, build_batch

    batch = dict(build_batch([Sample(item.ids) for item in items], pad_id=pad_id))
    batch.pop("block_index", None)
    batch["cloze_label"] = torch.tensor([item.label for item in items])
    return batch


class ClassifierLoss:
    """Cross-entropy (or the hinge loss, ``loss="hinge"``) of ``GLMForSequenceClassification``'s logits, summed per
    example."""

    def __init__(self, loss: str = "cross_entropy"):
        if loss not in ("cross_entropy", "hinge"):
            raise ValueError(f"the classification head trains with cross_entropy or hinge, not {loss!r}")
        self.loss = loss

    def count(self, batch) -> int:
        return int(batch["cloze_label"].numel())

    def __call__(self, model, batch):
        import torch

        from torchglm.layout import model_inputs
        from torchglm.losses import LossSums

        logits = model(**model_inputs(batch)).logits.float()
        gold = batch["cloze_label"]
        correct = (logits.argmax(dim=-1) == gold).float().sum().detach()
        return LossSums(total=cloze_loss_terms(logits, gold, self.loss).sum(), count=gold.numel(),
                        tokens=batch["input_ids"].numel(),
                        parts={"accuracy": (correct, torch.tensor(float(gold.numel())))})  # fmt: skip


def evaluate_classifier(model, tokenizer, task: str, examples: Sequence[ClozeExample], *, seq_length: int,
                        batch_size: int = 16) -> SuperGlueResult:  # fmt: skip
    """A ``GLMForSequenceClassification``'s predictions and the task's official metrics."""
    import torch

    from torchglm.layout import model_inputs

    items = [classifier_input(tokenizer, task, e, seq_length) for e in examples]
    predictions: list[int] = []
    with torch.inference_mode():
        for first in range(0, len(items), batch_size):
            batch = collate_classifier(items[first : first + batch_size], tokenizer.pad_token_id)
            inputs = {k: v.to(model.device) for k, v in model_inputs(batch).items()}
            predictions += model(**inputs).logits.argmax(dim=-1).tolist()
    found = metrics(task, examples, predictions) if all(e.label is not None for e in examples) else {}
    return SuperGlueResult(task, -1, len(examples), found, predictions)


# The CLUE tasks (AFQMC, TNEWS, CLUEWSC) join the task table above: importing this module registers them.
from . import clue as _clue  # noqa: E402, F401

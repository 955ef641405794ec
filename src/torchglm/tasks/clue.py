"""CLUE as cloze questions (AFQMC, TNEWS, CLUEWSC): the original GLM's patterns and verbalizers for its Chinese
models. The tasks join :mod:`.superglue`'s task table (``superglue.register_task``), so its layout, truncation,
scoring, ``ClozeLoss``, accuracy and the ``evaluate superglue`` / ``finetune superglue`` commands serve them.

    AFQMC (pattern 0)    [CLS] sentence1 ？ 你是说 sentence2 ？ [MASK] 。 [eos] + [sop]     targets 不是 / 是
    TNEWS (pattern 0)    [CLS] 标题： title 关键词： keywords 类别： [MASK] [eos] + [sop] 故事   one row per label
    CLUEWSC (pattern 0)  [CLS] text (*pronoun*, #noun# marked) 代词'*它*' [MASK] 指#noun#. [eos] + [sop]  不是 / 是

The readers take CLUE's JSON lines as they are (no punctuation clean-up, as the original); a split name ``train``,
``val``/``dev`` or ``test`` finds CLUE's ``train.json``/``dev.json``/``test.json`` or FewCLUE's
``train_few_all.json``/``dev_few_all.json``/``test_public.json``; any other name is read as ``NAME.json``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

from torchglm.errors import InputError

from . import superglue
from .superglue import ClozeExample, ExternalTask

TASKS = ("afqmc", "tnews", "cluewsc")
DEFAULT_DATA = "../shared/data/clue"
LABELS = {
    "afqmc": ["0", "1"],
    "tnews": ["100", "101", "102", "103", "104", "106", "107", "108", "109", "110", "112", "113", "114", "115", "116"],
    "cluewsc": ["false", "true"],
}
PATTERNS = {"afqmc": 2, "tnews": 1, "cluewsc": 2}
"""Number of pattern ids of each task (0 .. n-1); the original's default is 0 for all three."""
SEQ_LENGTH = 256
"""The original's MAX_SEQ_LEN for all three (config_tasks/task_{afqmc,tnews,cluewsc}.sh)."""
VERBALIZERS = {
    "afqmc": {"0": "▁不是", "1": "▁是"},  # the original writes SentencePiece's "▁": the same ids as 不是 / 是
    "cluewsc": {"false": "不是", "true": "是"},
}
TNEWS_ANSWERS = {
    "100": "故事", "101": "文化", "102": "娱乐", "103": "体育", "104": "金融", "106": "居家", "107": "汽车",
    "108": "教育", "109": "科技", "110": "军事", "112": "旅游", "113": "世界", "114": "股票", "115": "农业",
    "116": "游戏",
}  # fmt: skip
"""The original's TNEWS words (not the dataset's label_zh: 金融 for 财经, 居家 for 房产, 世界 for 国际, 游戏 for 电竞).
居家 is two SentencePiece tokens, so TNEWS is scored as a multi-token cloze: each label's word a part-B block."""
SPLIT_FILES = {
    "train": ("train", "train_few_all"),
    "val": ("dev", "dev_few_all"),
    "dev": ("dev", "dev_few_all"),
    "test": ("test", "test_public"),
}


# ----------------------------------------------------------------------------------------------------------------
# Readers


_value = superglue._field  # a (nested) field of a JSON record, or an InputError naming file, line and field


def _string(path, number, record, *names) -> str:
    """A string field as written: CLUE's Chinese text keeps its punctuation (SuperGLUE's readers ASCII-fy it)."""
    value = _value(path, number, record, *names)
    if not isinstance(value, str):
        raise InputError.at(path, number, f'field "{".".join(names)}" is not a string')
    return value


def _label(task, path, number, record):
    """The label as the task's label string (TNEWS files hold numbers, CLUEWSC booleans as text); None if absent."""
    if "label" not in record:
        return None
    value = record["label"]
    label = str(value).lower() if isinstance(value, (bool, str)) else str(value)
    if label not in LABELS[task]:
        raise InputError.at(path, number, f'field "label": unknown label {value!r} (the task\'s labels: '
                                          f"{', '.join(LABELS[task])})")  # fmt: skip
    return label


def _idx(record, line: int):
    """The example's id: the file's ``id`` or ``idx`` (FewCLUE), else its 0-based line (the original's)."""
    return record.get("id", record.get("idx", line))


def _read_pair(task: str, first: str, second: str):
    """A reader of a task whose example is two text fields (AFQMC's sentence pair, TNEWS's title and keywords)."""

    def read(path, records, split):
        out = []
        for line, (number, record) in enumerate(records):
            idx = _idx(record, line)
            out.append(ClozeExample(f"{split}-{idx}", _string(path, number, record, first),
                                    _string(path, number, record, second), _label(task, path, number, record),
                                    idx=idx))  # fmt: skip
        return out

    return read


_read_afqmc = _read_pair("afqmc", "sentence1", "sentence2")
_read_tnews = _read_pair("tnews", "sentence", "keywords")


def _read_cluewsc(path, records, split):
    out = []
    for line, (number, record) in enumerate(records):
        idx = _idx(record, line)
        text = _string(path, number, record, "text")
        meta = {}
        for span in ("span1", "span2"):  # span1: the noun phrase, span2: the pronoun; character offsets
            words = _string(path, number, record, "target", f"{span}_text")
            start = _value(path, number, record, "target", f"{span}_index")
            if not isinstance(start, int) or start < 0 or not words or text[start : start + len(words)] != words:
                raise InputError.at(path, number, f'field "target.{span}_index": {start!r} is not where '
                                                  f'"{words}" is in the text')  # fmt: skip
            meta |= {f"{span}_text": words, f"{span}_index": start}
        out.append(ClozeExample(f"{split}-{idx}", text, None, _label("cluewsc", path, number, record), meta, idx))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Patterns, verbalizers, files, submissions


def _short(text: str) -> tuple[str, bool]:
    return (text, True)


def marked_text(example: ClozeExample) -> str:
    """CLUEWSC's text with the pronoun in asterisks and the noun phrase in hashes, as the original marks them."""
    chars, m = list(example.text_a), example.meta
    for span, mark in (("span2", "*"), ("span1", "#")):
        first, last = m[f"{span}_index"], m[f"{span}_index"] + len(m[f"{span}_text"]) - 1
        chars[first] = mark + chars[first]
        chars[last] = chars[last] + mark
    return "".join(chars)


def pattern_parts(task: str, example: ClozeExample, pattern_id: int):
    """``(parts_a, parts_b)`` as in :func:`superglue.pattern_parts` (called through it)."""
    mask, e = superglue.MASK, example
    if task == "afqmc":
        if pattern_id == 0:
            return [_short(e.text_a), "？"], ["你是说", _short(e.text_b), "？", mask, "。"]
        return [_short(e.text_a), "？"], [mask, "，", _short(e.text_b)]
    if task == "tnews":
        return ["标题：", _short(e.text_a), "关键词：", _short(e.text_b), "类别：", mask], []
    pronoun, noun = "代词'*" + e.meta["span2_text"] + "*'", e.meta["span1_text"]
    if pattern_id == 0:
        return [_short(marked_text(e)), pronoun, mask, "指#" + noun + "#."], []
    return ["在如下的句子中：", _short(marked_text(e)), pronoun, mask, "指'#" + noun + "#'."], []


def task_file(task: str, data: str | Path | None, split: str) -> Path:
    """``DATA/tnews/dev_few_all.json`` and the like (``data`` the CLUE folder or the task's own; None: the shared
    copy)."""
    folder = Path(DEFAULT_DATA if data is None else data)
    if (folder / task).is_dir():
        folder = folder / task
    names = SPLIT_FILES.get(split, (split,))
    for name in names:
        if (folder / f"{name}.json").is_file():
            return folder / f"{name}.json"
    wanted = " or ".join(f"{name}.json" for name in names)
    raise InputError(f"{folder}: no {wanted} (the {task} {split} split; --data names the CLUE folder)")


def submission_rows(task: str, examples: Sequence[ClozeExample], predictions: Sequence[int]) -> list[dict]:
    """CLUE's submission lines, ``{"id", "label"}`` ordered by id (the original sorts by id too, but names it idx)."""
    rows = [{"id": e.idx, "label": LABELS[task][p]} for e, p in zip(examples, predictions, strict=True)]
    return sorted(rows, key=lambda row: (isinstance(row["id"], str), row["id"]))


_READERS = {"afqmc": _read_afqmc, "tnews": _read_tnews, "cluewsc": _read_cluewsc}

for _task in TASKS:
    superglue.register_task(_task, ExternalTask(
        labels=LABELS[_task], default_pattern=0, patterns=PATTERNS[_task], seq_length=SEQ_LENGTH,
        read=_READERS[_task], pattern_parts=functools.partial(pattern_parts, _task),
        task_file=functools.partial(task_file, _task), submission_rows=functools.partial(submission_rows, _task),
        submission_file=f"{_task}_predict.json",
        verbalizer=(lambda pattern_id, label, _t=_task: VERBALIZERS[_t][label]) if _task in VERBALIZERS else None,
        answers=(lambda example: [TNEWS_ANSWERS[label] for label in LABELS["tnews"]]) if _task == "tnews" else None,
    ))  # fmt: skip

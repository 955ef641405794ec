"""Sequence to sequence: summarization (CNN/DailyMail, XSum, Gigaword), question generation (SQuAD) and any
source/target pairs, as GLM's blank infilling: the source is part A with one blank, the target fills it.

Layouts (``[M]`` is ``[sMASK]`` for models with task masks, ``[MASK]`` otherwise)::

    summary   part A  [CLS] [M] " Content:" " "+source          (source cut from the right to src_seq_length)
    question  part A  [CLS] context " Question:" [M] " Answer: "+answer   (the context cut around the answer)
    pairs     part A  [CLS] " "+source [M] [eos]                 (source cut from the left)
    training  part B  [sop] t[:-1] predicting t, t = (" "+target + <|endofpiece|>)[:tgt_seq_length],
                      at the blank's text position, block positions 1..n

Decoding is the generation core's beam search (:func:`torchglm.generation.search_block`) over documents x beams
with the KV cache, the blank's block growing from ``<|startofpiece|>``; by default with the original's scorer
(``beam_scorer="glm"``), so the released code's summaries and scores are reproduced. Unlike the original, the
padding of short sources is never attended (the original padded part A to ``src_seq_length`` and attended the
padding, so a summary depended on the batch's padding).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from torchglm.errors import InputError
from torchglm.generation import BlockSearch, GenerationOptions, build_logits_processors, search_block
from torchglm.generation.state import DecodingState, check_contexts
from torchglm.layout import Block, GLMBatch, Sample, build_batch, model_inputs
from torchglm.losses import LossSums

from .language_model import read_jsonl, read_text_file, text_field
from .scoring import PromptIds, encode

Progress = Callable[[int], None]

# ----------------------------------------------------------------------------------------------------------------
# Tasks


@dataclass(frozen=True)
class Seq2SeqTask:
    """A task's layout, lengths, file fields and decoding defaults (the original's per-task settings)."""

    name: str
    layout: str
    """"summary", "question" or "pairs" (see the module docstring)."""
    src_seq_length: int
    """Most tokens of part A."""
    tgt_seq_length: int
    """Most target tokens in training (``<|endofpiece|>`` included) and most tokens decoded."""
    num_beams: int = 1
    length_penalty: float = 1.0
    min_new_tokens: int = 0
    no_repeat_ngram_size: int = 0
    source_field: str = "source"
    target_field: str = "target"
    answer_field: str = "answer"

    def generation_options(self, **overrides) -> GenerationOptions:
        """The task's decoding defaults (the original's: its scorer, at most ``tgt_seq_length`` tokens; the
        default minimum length shrinks to a shorter maximum)."""
        longest = overrides.get("max_new_tokens") or self.tgt_seq_length
        options = GenerationOptions(
            max_new_tokens=self.tgt_seq_length,
            min_new_tokens=min(self.min_new_tokens, longest),
            num_beams=self.num_beams,
            length_penalty=self.length_penalty,
            no_repeat_ngram_size=self.no_repeat_ngram_size,
            beam_scorer="glm",
        )
        return GenerationOptions.resolve(options, {k: v for k, v in overrides.items() if v is not None})


TASKS: dict[str, Seq2SeqTask] = {
    task.name: task
    for task in (
        # the original's config_tasks/seq_*.sh: lengths, beams, length penalty, minimum length, no-repeat size
        Seq2SeqTask("cnn_dm", "summary", 608, 160, 5, 0.7, 55, 3, "article", "highlights"),
        Seq2SeqTask("xsum", "summary", 608, 60, 6, 1.0, 10, 3, "document", "summary"),
        Seq2SeqTask("gigaword", "summary", 192, 32, 5, 0.6, 0, 3, "document", "summary"),
        Seq2SeqTask("squad_generation", "question", 464, 48, 5, 0.7, 0, 0, "context", "question", "answer"),
        Seq2SeqTask("custom", "pairs", 512, 128, 5, 1.0, 0, 3),
    )
}


def get_task(name: str, **overrides) -> Seq2SeqTask:
    """A task preset, with fields replaced (``src_seq_length=96``); an unknown name is an InputError."""
    if name not in TASKS:
        raise InputError(f"seq2seq task {name!r} is not one of {', '.join(TASKS)}")
    task = replace(TASKS[name], **{k: v for k, v in overrides.items() if v is not None})
    for what in ("src_seq_length", "tgt_seq_length"):
        if getattr(task, what) < 1:
            raise InputError(f"{what} must be >= 1, got {getattr(task, what)}")
    return task


# ----------------------------------------------------------------------------------------------------------------
# Reading


@dataclass
class Seq2SeqExample:
    source: str
    target: str
    """The reference ('' where there is none: raw documents to summarize)."""
    uid: str
    answer: str = ""
    """Question generation: the answer the question asks for."""


def clean_source(text: str) -> str:
    """A document's lines stripped, empty ones dropped, joined by single spaces (the original's XSum reader)."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def read_line_pairs(source_path: str | Path, target_path: str | Path | None, split: str = "") -> list[Seq2SeqExample]:
    """``{split}.source`` / ``{split}.target`` line files (one document per line, the original's format); the
    target file may be omitted (documents to summarize)."""
    sources = read_text_file(source_path).splitlines()
    targets = read_text_file(target_path).splitlines() if target_path is not None else None
    while sources and not sources[-1].strip():
        sources.pop()
    if targets is not None:
        while targets and not targets[-1].strip():
            targets.pop()
        if len(sources) != len(targets):
            raise InputError(
                f"{source_path} has {len(sources)} lines but {target_path} has {len(targets)}: every source line "
                "needs its target line"
            )
    examples = []
    for number, line in enumerate(sources, start=1):
        source = clean_source(line)
        if not source:
            raise InputError.at(source_path, number, "empty document")
        target = targets[number - 1].strip() if targets is not None else ""
        if targets is not None and not target:
            raise InputError.at(target_path, number, "empty target")
        examples.append(Seq2SeqExample(source, target, f"{split or 'line'}-{number}"))
    return examples


def read_jsonl_pairs(
    path: str | Path, task: Seq2SeqTask, *, need_target: bool = True, split: str = ""
) -> list[Seq2SeqExample]:
    """JSON lines with the task's fields (``source_field``, ``target_field``, and ``answer_field`` for question
    generation; SQuAD's ``{"answers": {"text": [...]}}`` also works). ``id`` becomes the uid when present."""
    examples = []
    for number, record in read_jsonl(path):
        source = clean_source(text_field(path, number, record, task.source_field))
        if not source:
            raise InputError.at(path, number, f'field "{task.source_field}" is empty')
        target = ""
        if need_target or task.target_field in record:
            target = text_field(path, number, record, task.target_field).strip()
            if need_target and not target:
                raise InputError.at(path, number, f'field "{task.target_field}" is empty')
        answer = ""
        if task.layout == "question":
            answer = _answer(path, number, record, task.answer_field)
        uid = str(record.get("id", f"{split or 'line'}-{number}"))
        examples.append(Seq2SeqExample(source, target, uid, answer))
    return examples


def _answer(path, number: int, record: dict, name: str) -> str:
    if name not in record and isinstance(record.get("answers"), dict):
        texts = record["answers"].get("text") or []
        if texts and isinstance(texts[0], str):
            return texts[0]
    return text_field(path, number, record, name)


def read_split(data: str | Path, task: Seq2SeqTask, split: str = "test", need_target: bool = True):
    """A task's examples from a file (``.jsonl``, or ``.source`` with its ``.target`` beside it) or a folder
    holding ``{split}.jsonl`` or ``{split}.source`` / ``{split}.target``."""
    data = Path(data)
    if data.is_dir():
        for candidate in (data / f"{split}.jsonl", data / f"{split}.source"):
            if candidate.is_file():
                return read_split(candidate, task, split, need_target)
        raise InputError(f"{data} holds neither {split}.jsonl nor {split}.source (+ {split}.target)")
    if not data.is_file():
        raise InputError(f"{data}: no such file or folder")
    if data.suffix == ".source":
        target = data.with_suffix(".target")
        if not target.is_file():
            if need_target:
                raise InputError(f"{data} has no {target.name} beside it (the references)")
            target = None
        return read_line_pairs(data, target, split)
    if data.suffix in (".jsonl", ".json"):
        return read_jsonl_pairs(data, task, need_target=need_target, split=split)
    if need_target:
        raise InputError(
            f"{data}: a plain text file holds no references; give a .jsonl file or a .source file with its .target"
        )
    return read_line_pairs(data, None, split)  # documents to summarize, one per line


# ----------------------------------------------------------------------------------------------------------------
# Inputs


@dataclass
class Seq2SeqInput:
    """A source as part A, and where its blank is."""

    part_a: list[int]
    mask_position: int


def source_input(tokenizer, example: Seq2SeqExample, task: Seq2SeqTask, ids: PromptIds | None = None) -> Seq2SeqInput:
    """Part A of an example in the task's layout, at most ``src_seq_length`` tokens."""
    ids = ids or prompt_ids(tokenizer)
    limit = task.src_seq_length
    if task.layout == "summary":
        prompt = [ids.cls, ids.mask, *encode(tokenizer, " Content:")]
        part_a = (prompt + encode(tokenizer, " " + example.source))[:limit]
    elif task.layout == "question":
        source = encode(tokenizer, example.source.rstrip() + " Question:")
        answer = encode(tokenizer, " Answer: " + example.answer)
        room = limit - len(answer) - 2
        if room < 1:
            raise InputError(f"example {example.uid}: its answer alone takes {len(answer)} tokens of {limit}")
        if len(source) > room:
            source = _around_answer(source, encode(tokenizer, " " + example.answer), room)
        part_a = [ids.cls, *source, ids.mask, *answer]
    elif task.layout == "pairs":
        source = encode(tokenizer, " " + example.source)
        part_a = [ids.cls, *source[len(source) - max(limit - 3, 0) :], ids.mask, ids.eos]
    else:
        raise InputError(f"unknown seq2seq layout {task.layout!r}")
    if len(part_a) > limit or len(part_a) < 3:
        raise InputError(f"example {example.uid}: part A of {len(part_a)} tokens does not fit {limit}")
    return Seq2SeqInput(part_a, part_a.index(ids.mask))


def _around_answer(source: list[int], answer: list[int], room: int) -> list[int]:
    """The ``room`` source tokens ending where the answer ends (the original's rule), else the first ones."""
    for start in range(len(source) - len(answer) + 1):
        if answer and source[start : start + len(answer)] == answer:
            end = start + len(answer)
            return source[max(0, end - room) : end]
    return source[:room]


def prompt_ids(tokenizer) -> PromptIds:
    """``[sMASK]`` where the tokenizer has task masks, ``[MASK]`` otherwise."""
    return PromptIds.from_tokenizer(tokenizer, "sMASK" if tokenizer.smask_token_id is not None else "MASK")


def target_block(tokenizer, example: Seq2SeqExample, task: Seq2SeqTask, mask_position: int) -> Block:
    """The training block: ``[sop] t[:-1]`` predicting ``t``, t = (" " + target + eop) cut to tgt_seq_length."""
    if not example.target:
        raise InputError(f"example {example.uid} has no target to train on")
    target = [*encode(tokenizer, " " + example.target), tokenizer.eop_token_id][: task.tgt_seq_length]
    return Block([tokenizer.sop_token_id, *target[:-1]], mask_position, 1, target)


def training_sample(tokenizer, example: Seq2SeqExample, task: Seq2SeqTask, ids: PromptIds | None = None) -> Sample:
    """Part A and the target block of one training example."""
    source = source_input(tokenizer, example, task, ids)
    return Sample(source.part_a, [target_block(tokenizer, example, task, source.mask_position)])


def collate(samples: Sequence[Sample], pad_id: int) -> GLMBatch:
    """A training batch: part A then the block, each padded to the batch's longest; padding never attended."""
    batch = build_batch(samples, pad_id=pad_id, align=True)
    batch.pop("block_index", None)
    return batch


# ----------------------------------------------------------------------------------------------------------------
# Training objective


class LabelSmoothedLoss:
    """Cross-entropy at the target tokens with label smoothing, as the original: ``(1 - e) CE + e mean_v(-log
    p_v)`` per token (e = ``smoothing``), summed so micro-batches combine exactly (``torchglm.losses``)."""

    def __init__(self, smoothing: float = 0.1):
        if not 0 <= smoothing < 1:
            raise InputError(f"label smoothing must be in [0, 1), got {smoothing}")
        self.smoothing = smoothing

    def count(self, batch: GLMBatch) -> int:
        return int((batch["labels"] != -100).sum())

    def __call__(self, model: nn.Module, batch: GLMBatch) -> LossSums:
        labels = batch["labels"]
        targets = labels != -100
        logits = model(**model_inputs(batch), predict_at=targets, use_cache=False).logits.float()  # [N, V]
        log_probs = F.log_softmax(logits, dim=-1)
        nll = -log_probs.gather(1, labels[targets][:, None]).squeeze(1)
        loss = (1 - self.smoothing) * nll - self.smoothing * log_probs.mean(dim=-1) if self.smoothing else nll
        parts = {"nll": (nll.detach().sum(), targets.sum())} if self.smoothing else {}
        return LossSums(total=loss.sum(), count=targets.sum(), tokens=labels.numel(), parts=parts)


# ----------------------------------------------------------------------------------------------------------------
# Decoding


@dataclass
class Generated:
    """One decoded target."""

    uid: str
    token_ids: list[int]
    """The best hypothesis's tokens (``<|endofpiece|>`` left out; [PAD] kept, as the decoder made them)."""
    text: str
    score: float
    stopped: bool
    """Ended at ``<|endofpiece|>`` (False: cut at max_new_tokens)."""


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    inputs: Sequence[Seq2SeqInput],
    options: GenerationOptions,
    *,
    batch_size: int = 8,
    uids: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> list[Generated]:
    """Decode the blank of every input: ``batch_size`` documents x ``num_beams`` rows at a time, their sources
    encoded once into the KV cache (padding never attended), longest sources together."""
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    check_contexts([i.part_a for i in inputs], model.config)
    if options.max_new_tokens > model.config.max_sequence_length:
        raise InputError(
            f"max_new_tokens {options.max_new_tokens} is over the model's {model.config.max_sequence_length} "
            "block positions"
        )
    device = model.device
    stop_ids = torch.tensor([tokenizer.eop_token_id], device=device)
    processors, warpers = build_logits_processors(options, [tokenizer.eop_token_id], device)
    order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i].part_a))
    found: dict[int, Generated] = {}
    for first in range(0, len(order), batch_size):
        chunk = order[first : first + batch_size]
        state = DecodingState(
            model, [inputs[i].part_a for i in chunk], pad_id=tokenizer.pad_token_id, capacity=options.max_new_tokens
        )
        state.fork(options.num_beams)
        hypotheses = search_block(
            BlockSearch(
                state=state,
                active=torch.ones(len(chunk), dtype=torch.bool, device=device),
                text_positions=torch.tensor([inputs[i].mask_position for i in chunk], device=device),
                start_id=tokenizer.sop_token_id,
                stop_ids=stop_ids,
                options=options,
                processors=processors,
                warpers=warpers,
            )
        )
        for i, best in zip(chunk, hypotheses, strict=True):
            top = best[0]
            uid = uids[i] if uids is not None else str(i)
            found[i] = Generated(uid, top.token_ids, decode_text(tokenizer, top.token_ids), top.score, top.stopped)
        if progress is not None:
            progress(len(chunk))
    return [found[i] for i in range(len(inputs))]


def decode_text(tokenizer, token_ids: Sequence[int]) -> str:
    """A decoded target as text: command tokens and padding dropped (ids past the tokenizer's vocabulary, which
    only an untrained model makes, too)."""
    known = [t for t in token_ids if t < len(tokenizer)]
    return tokenizer.decode(known, skip_special_tokens=True).strip()


# ----------------------------------------------------------------------------------------------------------------
# ROUGE

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> str:
    """One sentence per line (rougeLsum's input): after ``.``, ``!`` or ``?`` and a space before a capital or a
    digit. A rule, not nltk's punkt (whose model cannot be downloaded here); existing newlines are kept."""
    return "\n".join(s.strip() for line in text.splitlines() for s in _SENTENCE_END.split(line) if s.strip())


def remove_duplicate_sentences(text: str, rate: float) -> str:
    """The original's ``--remove-duplicate`` post-processing: drop a sentence when more than ``rate`` of its
    distinct words (lower-cased, split on spaces) are in the sentences before it, kept or dropped."""
    kept: list[str] = []
    seen: set[str] = set()
    for sentence in split_sentences(text).splitlines():
        words = set(sentence.lower().split())
        if len(words & seen) <= rate * len(words):
            kept.append(sentence)
        seen |= words
    return "\n".join(kept)


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def rouge(hypotheses: Sequence[str], references: Sequence[str], *, stemmer: bool = True) -> dict[str, float]:
    """Mean F-measures (x100) of ROUGE-1/2/L/Lsum by ``rouge-score`` (Porter stemming); Lsum on sentences
    split one per line."""
    try:
        from rouge_score import rouge_scorer
    except ImportError:  # pragma: no cover - an extra
        raise InputError("ROUGE needs the rouge-score package: pip install 'torchglm[eval]'") from None
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    if not hypotheses:
        raise InputError("no summaries to score")
    root = logging.getLogger()
    before = list(root.handlers)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=stemmer)
    # rouge-score logs with the module-level logging.info, whose implicit basicConfig would give the root logger
    # a handler and every later torchglm message a second copy on stderr: take that handler off again
    for handler in root.handlers[len(before) :]:
        root.removeHandler(handler)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for hypothesis, reference in zip(hypotheses, references, strict=True):
        scores = scorer.score(split_sentences(reference), split_sentences(hypothesis))
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    return {name: 100 * total / len(hypotheses) for name, total in totals.items()}


def lead_sentence(source: str) -> str:
    """The lead-1 baseline: the source's first sentence."""
    sentences = split_sentences(source).splitlines()
    return sentences[0] if sentences else ""


# ----------------------------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class Seq2SeqResult:
    task: str
    examples: int
    rouge: dict[str, float]
    generation: dict
    lead_rouge: dict[str, float] | None = None
    """The lead-1 baseline on the same examples (summaries only)."""
    generated: list[Generated] = field(default_factory=list, repr=False)

    def summary(self) -> str:
        scores = " ".join(f"{k} {v:.2f}" for k, v in self.rouge.items())
        lead = ""
        if self.lead_rouge:
            lead = " (lead-1: " + " ".join(f"{k} {v:.2f}" for k, v in self.lead_rouge.items()) + ")"
        return f"{self.task}: {self.examples} examples, {scores}{lead}"

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("generated")
        return out


def evaluate_seq2seq(
    model,
    tokenizer,
    examples: Sequence[Seq2SeqExample],
    task: Seq2SeqTask,
    options: GenerationOptions | None = None,
    *,
    batch_size: int = 8,
    remove_duplicates: float | None = None,
    progress: Progress | None = None,
) -> Seq2SeqResult:
    """Decode every example and score the texts against the references with ROUGE (plus lead-1 for summaries)."""
    options = options or task.generation_options()
    ids = prompt_ids(tokenizer)
    inputs = [source_input(tokenizer, e, task, ids) for e in examples]
    generated = generate(
        model, tokenizer, inputs, options, batch_size=batch_size, uids=[e.uid for e in examples], progress=progress
    )
    hypotheses = [g.text for g in generated]
    if remove_duplicates is not None:
        hypotheses = [remove_duplicate_sentences(h, remove_duplicates) for h in hypotheses]
        for g, h in zip(generated, hypotheses, strict=True):
            g.text = h
    references = [e.target for e in examples]
    scores = lead = None
    if all(references):
        scores = rouge(hypotheses, references)
        if task.layout == "summary":
            lead = rouge([lead_sentence(e.source) for e in examples], references)
    return Seq2SeqResult(task.name, len(examples), scores or {}, asdict(options), lead, generated)

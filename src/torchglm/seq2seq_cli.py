"""Summaries and questions from a model: ``torchglm evaluate seq2seq`` (ROUGE against references) and
``torchglm summarize`` (raw documents in, summaries out).

torchglm evaluate seq2seq --task xsum --model DIR --data test.jsonl --output runs/xsum-eval
torchglm evaluate seq2seq --task cnn_dm --model DIR --data cnn_dm/ --split test --num-beams 5
torchglm summarize documents.txt --model DIR [--task xsum] [--output summaries.txt]

--data is a ``.jsonl`` file (the task's fields: xsum document/summary, cnn_dm article/highlights, ...), a
``.source`` file with its ``.target`` beside it, or a folder holding ``{split}.jsonl`` or ``{split}.source`` /
``{split}.target``; summarize also reads a plain text file, one document per line. Decoding defaults are the
task's (docs/seq2seq.md); each option below replaces one. The output folder receives ``{task}.hyps`` and
``{task}.refs`` (one text per line), ``predictions.jsonl`` (ids, text, score per example), ``results.json`` and
``evaluate.log``, each written whole or not at all.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from torchglm.errors import InputError

log = logging.getLogger("torchglm.evaluate")


def add_decoding_arguments(parser: argparse.ArgumentParser, *, summarize: bool = False) -> None:
    from torchglm.evaluate_cli import DTYPES
    from torchglm.tasks.seq2seq import TASKS

    parser.add_argument(
        "--task", dest="seq2seq_task", choices=list(TASKS), default="xsum" if summarize else None,
        required=not summarize, help="the task's layout, lengths and decoding" + (" (default xsum)" * summarize),
    )  # fmt: skip
    parser.add_argument(
        "--model", default="glm-tiny-en", help="checkpoint folder or built-in model (default glm-tiny-en)"
    )
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the model folder)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    fields = parser.add_argument_group("JSON-lines fields (default: the task's, e.g. xsum document/summary)")
    fields.add_argument("--source-field", help="the field holding the document (or context)")
    fields.add_argument("--target-field", help="the field holding the reference (summary, question, target)")
    fields.add_argument("--answer-field", help="question generation: the field holding the answer")
    lengths = parser.add_argument_group("lengths (default: the task's, capped by the model's positions)")
    lengths.add_argument("--src-seq-length", type=int, help="most tokens of the source part")
    lengths.add_argument("--tgt-seq-length", type=int, help="most target tokens (and decoded tokens)")
    decoding = parser.add_argument_group("decoding (default: the task's)")
    decoding.add_argument("--num-beams", type=int)
    decoding.add_argument("--length-penalty", type=float)
    decoding.add_argument("--min-new-tokens", type=int, help="the original's --min-tgt-length")
    decoding.add_argument("--max-new-tokens", type=int, help="default: the target length")
    decoding.add_argument("--no-repeat-ngram-size", type=int)
    decoding.add_argument("--beam-scorer", choices=["glm", "transformers"], help="default glm (the original's)")
    decoding.add_argument("--batch-size", type=int, default=8, help="documents decoded together (default 8)")
    parser.add_argument("--limit", type=int, help="only the first N documents")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    add_decoding_arguments(parser)
    parser.add_argument("--data", required=True, help="a .jsonl or .source file, or a folder with {split}.*")
    parser.add_argument("--split", default="test", help="the split read from a --data folder (default test)")
    parser.add_argument("--output", help="output folder (hyps, refs, predictions, results.json, log)")
    parser.add_argument(
        "--remove-duplicates", type=float, metavar="RATE",
        help="drop a summary sentence whose words are RATE or more in an earlier one (the original's option)",
    )  # fmt: skip


def task_and_options(args, model):
    """The task preset with the command line's lengths, capped by the model's positions, and its decoding."""
    from torchglm.tasks.seq2seq import get_task

    names = {"source_field": args.source_field, "target_field": args.target_field, "answer_field": args.answer_field}
    task = get_task(args.seq2seq_task, src_seq_length=args.src_seq_length, tgt_seq_length=args.tgt_seq_length, **names)
    positions = int(model.config.max_sequence_length)
    if task.src_seq_length >= positions:
        if args.src_seq_length is not None:
            raise InputError(
                f"--src-seq-length {task.src_seq_length} leaves no position for the target: the model has {positions}"
            )
        task = get_task(args.seq2seq_task, src_seq_length=positions - 1, tgt_seq_length=task.tgt_seq_length, **names)
        log.info("source length capped at %d (the model's %d positions)", task.src_seq_length, positions)
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit {args.limit}: must be at least 1")
    try:
        options = task.generation_options(
            num_beams=args.num_beams,
            length_penalty=args.length_penalty,
            min_new_tokens=args.min_new_tokens,
            max_new_tokens=args.max_new_tokens,
            no_repeat_ngram_size=args.no_repeat_ngram_size,
            beam_scorer=args.beam_scorer,
        )
    except ValueError as error:
        raise InputError(str(error).replace("GenerationOptions.", "--").replace("_", "-")) from None
    return task, options


def run_evaluate(args: argparse.Namespace) -> int:
    from torchglm.evaluate_cli import _progress, _setup_logging, _sha256
    from torchglm.fill_cli import load
    from torchglm.tasks import seq2seq

    output = Path(args.output) if args.output else None
    _setup_logging(None)
    model, tokenizer = load(args.model, args.tokenizer, args.device, args.dtype)
    task, options = task_and_options(args, model)
    examples = seq2seq.read_split(args.data, task, args.split)[: args.limit]
    if not examples:
        raise InputError(f"{args.data}: no examples")
    _setup_logging(output / "evaluate.json" if output else None)  # the log file, once the input is known good
    log.info("torchglm evaluate seq2seq %s: model %s, data %s (%d examples)", task.name, args.model, args.data,
             len(examples))  # fmt: skip
    started = time.perf_counter()
    with _progress(args, len(examples), "documents", task.name) as progress:
        result = seq2seq.evaluate_seq2seq(
            model, tokenizer, examples, task, options, batch_size=args.batch_size,
            remove_duplicates=args.remove_duplicates, progress=progress,
        )  # fmt: skip
    elapsed = time.perf_counter() - started
    log.info("%s  [%.1f s, %.2f documents/s]", result.summary(), elapsed, len(examples) / elapsed)
    if output is not None:
        record = result.to_dict() | {
            "model": str(args.model), "data": str(args.data), "data_sha256": _sha256(_data_file(args.data, args.split)),
            "task_settings": {"src_seq_length": task.src_seq_length, "tgt_seq_length": task.tgt_seq_length},
            "dtype": args.dtype, "device": args.device, "batch_size": args.batch_size, "seconds": round(elapsed, 3),
            "documents_per_second": round(len(examples) / elapsed, 3),
        }  # fmt: skip
        write_outputs(output, task.name, examples, result, record)
        log.info("results: %s", output / "results.json")
    return 0


def _data_file(data: str, split: str) -> Path:
    path = Path(data)
    if path.is_dir():
        for name in (f"{split}.jsonl", f"{split}.source"):
            if (path / name).is_file():
                return path / name
    return path


def write_outputs(folder: Path, name: str, examples, result, record: dict) -> None:
    """hyps, refs, predictions and results, each written to a temporary file and renamed into place."""
    from torchglm.data.shards import atomic_write_json

    folder.mkdir(parents=True, exist_ok=True)
    one_line = [g.text.replace("\n", " ") for g in result.generated]
    write_text_atomic(folder / f"{name}.hyps", "".join(t + "\n" for t in one_line))
    write_text_atomic(folder / f"{name}.refs", "".join(e.target.replace("\n", " ") + "\n" for e in examples))
    rows = [
        json.dumps({"uid": g.uid, "text": g.text, "token_ids": g.token_ids, "score": g.score, "stopped": g.stopped})
        for g in result.generated
    ]
    write_text_atomic(folder / "predictions.jsonl", "".join(r + "\n" for r in rows))
    atomic_write_json(folder / "results.json", record)


def write_text_atomic(path: Path, text: str) -> None:
    from torchglm.data.shards import atomic_write_bytes

    atomic_write_bytes(path, text.encode("utf-8"))


# ----------------------------------------------------------------------------------------------------------------
# torchglm summarize


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="documents: a text file (one per line), a .jsonl or a .source file")
    add_decoding_arguments(parser, summarize=True)
    parser.add_argument("--output", help="write the summaries there (one per line) instead of printing them")


def run(args: argparse.Namespace) -> int:
    from torchglm.evaluate_cli import _progress, _setup_logging
    from torchglm.fill_cli import load
    from torchglm.tasks import seq2seq

    _setup_logging(None, sys.stderr)  # stdout carries the summaries
    model, tokenizer = load(args.model, args.tokenizer, args.device, args.dtype)
    task, options = task_and_options(args, model)
    examples = seq2seq.read_split(args.file, task, need_target=False)[: args.limit]
    inputs = [seq2seq.source_input(tokenizer, e, task) for e in examples]
    with _progress(args, len(inputs), "documents", "summarize") as progress:
        generated = seq2seq.generate(model, tokenizer, inputs, options, batch_size=args.batch_size, progress=progress)
    text = "".join(g.text.replace("\n", " ") + "\n" for g in generated)
    if args.output:
        write_text_atomic(Path(args.output), text)
    else:
        sys.stdout.write(text)
    return 0

"""Zero-shot evaluation: LAMBADA accuracy, perplexity (WikiText or any UTF-8 text), multiple choice, lm-eval.

torchglm evaluate lambada [--model DIR] [--data lambada_test.jsonl] [--unidirectional | --causal] [--output FILE]
torchglm evaluate wikitext --model DIR [--data wiki.test.tokens] [--seq-length 512] [--overlap 256]
torchglm evaluate multichoice --model DIR --data choices.jsonl [--length-normalize]
torchglm evaluate infill --model DIR --data sentences.txt [--left-only | --causal]   (one word per line blanked)
torchglm evaluate seq2seq --task xsum --model DIR --data test.jsonl --output DIR   (ROUGE; see docs/seq2seq.md)
torchglm evaluate harness --model DIR --tasks TASK [--include_path DIR] [any other lm_eval run option]

--model defaults to the built-in glm-tiny-en; --data to the copies in ../shared/data when run from a checkout.
Each run prints a summary line; --output writes a results JSON (metric, counts, settings, model, data file and its
SHA-256, and a row per example or window) and a log next to it. See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

from torchglm.errors import InputError

DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_DATA = {
    "lambada": "../shared/data/lambada/lambada_test.jsonl",
    "wikitext": "../shared/data/wikitext/wikitext-103/wiki.test.tokens",
}
log = logging.getLogger("torchglm.evaluate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    tasks = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--model", default="glm-tiny-en",
        help="checkpoint folder (config.json + weights + tokenizer files), or a built-in model (default glm-tiny-en)",
    )  # fmt: skip
    common.add_argument("--tokenizer", help="tokenizer folder (default: the model folder)")
    common.add_argument("--device", default="cpu", help="torch device (default cpu)")
    common.add_argument("--dtype", choices=DTYPES, default="float32")
    layout = argparse.ArgumentParser(add_help=False)
    layout.add_argument("--data", help="data file (default: the ../shared/data copy, where there is one)")
    layout.add_argument("--seq-length", type=int, help="sequence length (default: the model's positions)")
    layout.add_argument("--unidirectional", action="store_true", help="context read left to right, in part B")
    layout.add_argument(
        "--causal", action="store_true",
        help="causal-LM layout ([CLS] text left to right, no blank) for models pretrained with the clm objective",
    )  # fmt: skip
    layout.add_argument("--mask", choices=["MASK", "sMASK", "gMASK"], help="blank token (default [gMASK] if any)")
    layout.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass (default 16)")
    layout.add_argument("--limit", type=int, help="only the first N examples (wikitext: the first N lines)")
    layout.add_argument("--output", help="results JSON (a .log file is written beside it)")
    layout.add_argument("--no-progress", action="store_true", help="no progress bar")
    layout.add_argument("--quantize", metavar="MODE", help="torchao weight-only quantization: int8, int4 (CUDA)")
    kinds = {"formatter_class": argparse.RawDescriptionHelpFormatter, "parents": [common, layout]}
    tasks.add_parser("lambada", help="LAMBADA last-word accuracy", **kinds)
    text = tasks.add_parser("wikitext", help="perplexity of a WikiText .tokens file or any UTF-8 text", **kinds)
    text.add_argument("--overlap", type=int, default=256, help="tokens each later window scores (default 256)")
    text.add_argument(
        "--detokenize",
        choices=["auto", "wikitext", "ptb", "none"],
        default="auto",
        help="auto (default): WikiText for .tokens files, PTB for ptb files, else none",
    )
    infill = tasks.add_parser(
        "infill", help="blank filling: one word of each line (a sentence) of a text blanked; greedy accuracy", **kinds
    )
    infill.add_argument("--left-only", action="store_true", help="GLM without the blank's right context")
    infill.add_argument("--min-words", type=int, default=8, help="skip lines with fewer words (default 8)")
    infill.add_argument("--max-words", type=int, default=40, help="skip lines with more words (default 40)")
    infill.add_argument("--seed", type=int, default=0, help="seed of the blanked-word draw (default 0)")
    choice = tasks.add_parser("multichoice", help="zero-shot multiple choice from a JSON-lines file", **kinds)
    choice.add_argument("--length-normalize", action="store_true", help="rank choices by mean token log-prob")
    superglue = tasks.add_parser(
        "superglue", help="SuperGLUE and CLUE as cloze questions (PET patterns); writes the submission file",
        parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    from torchglm.tasks.superglue import TASKS as SUPERGLUE_TASKS

    superglue.add_argument("--task", dest="superglue_task", required=True, choices=list(SUPERGLUE_TASKS))
    superglue.add_argument(
        "--data", help="the SuperGLUE or CLUE folder (RTE/val.jsonl, tnews/dev_few_all.json, ...) or the task's own "
        "folder (default: ../shared/data/superglue or ../shared/data/clue)",
    )  # fmt: skip
    superglue.add_argument("--split", default="val", help="val (default), train, test, dev32 or a file name")
    superglue.add_argument("--pattern-id", type=int, help="the pattern (default: the original's for the task)")
    superglue.add_argument("--seq-length", type=int, help="default: the task's (RTE 256, MultiRC 512, ...)")
    superglue.add_argument("--length-penalty", type=float, default=0.0,
                           help="multi-token choices: summed log-prob / tokens ** this (default 0)")  # fmt: skip
    superglue.add_argument("--wsc-negative", action="store_true",
                           help="WSC: score the referent against noun phrases of the text (where the file has no "
                           "candidates), as a model finetuned with task.wsc_negative")  # fmt: skip
    superglue.add_argument("--batch-size", type=int, default=16)
    superglue.add_argument("--limit", type=int, help="only the first N examples")
    superglue.add_argument("--output", help="output folder: TASK.jsonl (submission format; CLUE: "
                           "task_predict.json), results.json, log")  # fmt: skip
    superglue.add_argument("--no-progress", action="store_true")
    from torchglm.seq2seq_cli import add_evaluate_arguments

    add_evaluate_arguments(
        tasks.add_parser(
            "seq2seq", help="summaries or questions decoded and scored with ROUGE",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )  # fmt: skip
    harness = tasks.add_parser(
        "harness",
        help="lm-evaluation-harness (pip install torchglm[eval]): other options go to lm_eval run",
        parents=[common],
    )
    harness.set_defaults(pass_through="harness_args")  # cli.main hands unknown options to lm_eval


def run(args: argparse.Namespace) -> int:
    if args.task == "harness":
        return run_harness(args)
    if args.task == "seq2seq":
        from torchglm.seq2seq_cli import run_evaluate

        return run_evaluate(args)
    if args.task == "superglue":
        return run_superglue(args)
    data = args.data or DEFAULT_DATA.get(args.task)
    if data is None:
        raise InputError(f"evaluate {args.task} needs --data FILE")
    if not Path(data).is_file():
        raise InputError(f"--data {data}: no such file" + ("" if args.data else " (the default; pass --data)"))
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit {args.limit}: must be at least 1")
    output = Path(args.output) if args.output else None
    _setup_logging(output)

    from torchglm.fill_cli import load

    model, tokenizer = load(args.model, args.tokenizer, args.device, args.dtype, args.quantize)
    log.info("torchglm evaluate %s: model %s (%s, %s), data %s", args.task, args.model, args.dtype, args.device, data)
    started = time.perf_counter()
    result, units = _evaluate(args, model, tokenizer, data)
    elapsed = time.perf_counter() - started
    record = result.to_dict() | {
        "model": str(args.model),
        "data": str(data),
        "data_sha256": _sha256(data),
        "dtype": args.dtype,
        "quantization": args.quantize,
        "device": args.device,
        "batch_size": args.batch_size,
        "limit": args.limit,
        "seconds": round(elapsed, 3),
        f"{units}_per_second": round(_count(result, units) / elapsed, 3) if elapsed > 0 else None,
    }
    log.info("%s  [%.1f s]", result.summary(), elapsed)
    if output is not None:
        from torchglm.data.shards import atomic_write_json

        atomic_write_json(output, record)
        log.info("results: %s", output)
    return 0


def _evaluate(args, model, tokenizer, data):
    from torchglm.tasks import language_model as lm
    from torchglm.tasks import multiple_choice as mc

    common = {"seq_length": args.seq_length, "unidirectional": args.unidirectional, "causal": args.causal}
    common["mask"] = args.mask
    common["batch_size"] = args.batch_size
    if args.task == "lambada":
        examples = lm.read_lambada(data, tokenizer)[: args.limit]
        with _progress(args, len(examples), "examples") as progress:
            return lm.evaluate_lambada(model, tokenizer, examples, progress=progress, **common), "examples"
    if args.task == "infill":
        from torchglm.tasks import infill

        if args.unidirectional:
            raise InputError("evaluate infill: --unidirectional does not apply (use --left-only or --causal)")
        if args.left_only and args.causal:
            raise InputError("evaluate infill: --left-only is a GLM layout; a --causal model reads left only anyway")
        examples = infill.read_infill_sentences(
            data, min_words=args.min_words, max_words=args.max_words, seed=args.seed
        )[: args.limit]
        common |= {"mask": args.mask or "MASK", "right_context": not args.left_only}
        del common["unidirectional"]
        with _progress(args, len(examples), "examples") as progress:
            return infill.evaluate_infill(model, tokenizer, examples, progress=progress, **common), "examples"
    if args.task == "multichoice":
        examples = mc.read_multiple_choice(data)[: args.limit]
        with _progress(args, sum(len(e.choices) for e in examples), "choices") as progress:
            result = mc.evaluate_multiple_choice(
                model, tokenizer, examples, length_normalize=args.length_normalize, progress=progress, **common
            )
            return result, "examples"
    kind = None if args.detokenize == "none" else args.detokenize
    text = lm.read_perplexity_text(data, detokenize_as=kind, lines=args.limit)
    tokens = lm.encode(tokenizer, text.text)
    seq_length = lm.check_seq_length(args.seq_length, model)
    windows = len(lm.perplexity_windows(len(tokens), seq_length, args.overlap))
    with _progress(args, windows, "windows") as progress:
        result = lm.evaluate_perplexity(
            model, tokenizer, text, tokens=tokens, overlap=args.overlap, progress=progress, **common
        )
        return result, "tokens"


def _count(result, units: str) -> int:
    return {"examples": getattr(result, "total", 0), "tokens": getattr(result, "num_tokens", 0)}[units]


class _progress:
    """A tqdm bar (rate and ETA) on stderr, as a ``progress(n)`` callback; nothing with --no-progress."""

    def __init__(self, args, total: int, unit: str, label: str | None = None):
        self.bar = None
        if not args.no_progress:
            from tqdm import tqdm

            desc = label or args.task
            self.bar = tqdm(total=total, unit=unit.rstrip("s"), desc=desc, file=sys.stderr, dynamic_ncols=True)

    def __enter__(self):
        return self.bar.update if self.bar is not None else None

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


def _setup_logging(output: Path | None, stream=None) -> None:
    """Messages to ``stream`` (default stdout) and, with ``output``, to a .log file beside it."""
    log.setLevel(logging.INFO)
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
    terminal = logging.StreamHandler(stream or sys.stdout)
    terminal.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(terminal)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.FileHandler(output.with_suffix(".log"), encoding="utf-8")
        to_file.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(to_file)


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def run_harness(args: argparse.Namespace) -> int:
    """lm-eval's own ``run`` command with the ``torchglm`` backend registered; ``--model DIR`` becomes
    ``--model torchglm --model_args pretrained=DIR,...``."""
    try:
        import lm_eval.__main__ as lm_eval_main
    except ImportError:
        raise InputError("the lm-eval backend needs lm-eval: pip install 'torchglm[eval]'") from None
    import torchglm.tasks.harness  # noqa: F401  (registers --model torchglm)

    rest = list(args.harness_args)
    if args.model:
        from torchglm.builtin import resolve

        args.model = resolve(args.model)
        extra = [f"pretrained={args.model}", f"dtype={args.dtype}"]
        if "--model_args" in rest:
            at = rest.index("--model_args") + 1
            rest[at] = ",".join(extra + [rest[at]])
        else:
            rest += ["--model_args", ",".join(extra)]
        if "--device" not in rest:
            rest += ["--device", args.device]
    argv = sys.argv
    sys.argv = ["lm_eval", "run", "--model", "torchglm", *rest]
    try:
        lm_eval_main.cli_evaluate()
    finally:
        sys.argv = argv
    return 0


def _has_classification_head(model: str) -> bool:
    """Whether a model folder holds a ``GLMForSequenceClassification`` (its config.json's ``architectures``)."""
    from torchglm.builtin import resolve

    try:
        config = json.loads((Path(resolve(model)) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # not a local folder with a config: load() says what is wrong
    return "GLMForSequenceClassification" in (config.get("architectures") or [])


def _load_trainable_run(args: argparse.Namespace):
    """``--model`` a folder of ``tasks.prompts.save_trainable`` (trainable.json): its base model with the trained
    tensors and prompt encoder put back, the run's pattern and length as defaults; None for any other folder."""
    from torchglm.fill_cli import load
    from torchglm.tasks import prompts

    info = prompts.trainable_info(args.model) if Path(args.model).is_dir() else None
    if info is None:
        return None
    trained_on = info.get("task")
    if trained_on is not None and trained_on != args.superglue_task:
        raise InputError(f"--model {args.model}: its prompt and layers were trained on {trained_on}, not "
                         f"{args.superglue_task} (trainable.json)")  # fmt: skip
    model, tokenizer = load(info["base_model"], args.tokenizer or args.model, args.device, args.dtype)
    prompts.load_trainable(model, args.model)
    if args.pattern_id is None:
        args.pattern_id = info.get("pattern_id")
    if args.seq_length is None:
        args.seq_length = info.get("seq_length")
    return model, tokenizer


def run_superglue(args: argparse.Namespace) -> int:
    """``torchglm evaluate superglue``: the task's split scored as cloze questions, or by the classification head of
    a ``GLMForSequenceClassification`` folder (told by its config's ``architectures``); metrics and submission file."""
    from torchglm.fill_cli import load
    from torchglm.model import GLMForSequenceClassification
    from torchglm.tasks import superglue

    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit {args.limit}: must be at least 1")
    task = args.superglue_task
    path = superglue.task_file(args.data, task, args.split)
    _setup_logging(None)
    trained = _load_trainable_run(args)  # a P-tuning / frozen-backbone best/ or final/ folder
    classifier = trained is None and _has_classification_head(args.model)
    if classifier and args.pattern_id is not None:
        raise InputError(f"--pattern-id: {args.model} is a classification-head model (GLMForSequenceClassification), "
                         "it reads no pattern")  # fmt: skip
    if trained is not None:
        model, tokenizer = trained
    else:
        model, tokenizer = load(args.model, args.tokenizer, args.device, args.dtype,
                                model_class=GLMForSequenceClassification if classifier else None)  # fmt: skip
    if classifier and model.config.num_labels != len(superglue.LABELS[task]):
        raise InputError(f"--model {args.model}: its classification head has {model.config.num_labels} labels, "
                         f"{task} has {len(superglue.LABELS[task])}")  # fmt: skip
    split = {"val": "dev", "dev32": "dev"}.get(args.split, args.split)
    examples = superglue.read_examples(task, path, split, wsc_negative=args.wsc_negative)[: args.limit]
    output = Path(args.output) if args.output else None
    _setup_logging(output / "evaluate.json" if output else None)
    log.info("torchglm evaluate superglue %s: model %s, %s (%d examples)", task, args.model, path, len(examples))
    started = time.perf_counter()
    with _progress(args, len(examples), "examples", task) as progress:
        if classifier:
            seq_length = min(args.seq_length or superglue.SEQ_LENGTH[task], int(model.config.max_sequence_length))
            result = superglue.evaluate_classifier(model, tokenizer, task, examples, seq_length=seq_length,
                                                   batch_size=args.batch_size)  # fmt: skip
        else:
            result = superglue.evaluate_superglue(
                model, tokenizer, task, examples, pattern_id=args.pattern_id, seq_length=args.seq_length,
                length_penalty=args.length_penalty, batch_size=args.batch_size, progress=progress,
            )  # fmt: skip
    elapsed = time.perf_counter() - started
    log.info("%s  [%.1f s]", result.summary(), elapsed)
    if output is not None:
        from torchglm.data.shards import atomic_write_bytes, atomic_write_json

        output.mkdir(parents=True, exist_ok=True)
        rows = superglue.submission_rows(task, examples, result.predictions)
        name = superglue.submission_file(task)
        atomic_write_bytes(output / name, "".join(json.dumps(r) + "\n" for r in rows).encode())
        record = result.to_dict() | {"model": str(args.model), "data": str(path), "data_sha256": _sha256(path),
                                     "seconds": round(elapsed, 3)}  # fmt: skip
        record["head"] = "classifier" if classifier else "cloze"
        if classifier:
            record.update(pool_token=model.config.pool_token, seq_length=seq_length)
        atomic_write_json(output / "results.json", record)
        log.info("predictions: %s", output / name)
    return 0

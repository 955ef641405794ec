"""Fill the [MASK], [sMASK] and [gMASK] blanks of texts, left to right; a text without a blank is continued.

torchglm fill --model glm-large "Tsinghua University is located in [MASK]."
torchglm fill --model glm-large --file texts.txt --json --num-beams 4      # one JSON object per line
echo "Once upon a time" | torchglm fill --model glm-large --stream --sample --top-p 0.9 --seed 1
torchglm fill --model glm-large --interactive

Texts come from the arguments, else from --file (one per line, "-" for stdin), else from stdin. The model
folder holds config.json, the weights and the tokenizer files (released folders do); without --model, the
built-in glm-tiny-en fills the blanks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from torchglm.errors import InputError
from torchglm.generation import FillResult, GenerationOptions, fill

DTYPES = ("float32", "bfloat16", "float16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("texts", nargs="*", help="texts to fill (default: --file, else stdin)")
    parser.add_argument(
        "--model", default="glm-tiny-en",
        help="checkpoint folder (config.json + weights + tokenizer files), or a built-in model (default glm-tiny-en)",
    )  # fmt: skip
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the model folder)")
    parser.add_argument("--file", help="read texts from this file, one per line ('-': stdin)")
    parser.add_argument("--interactive", action="store_true", help="prompt for texts until end of input")
    parser.add_argument("--stream", action="store_true", help="print each token as it is generated")
    parser.add_argument("--json", action="store_true", help="print one JSON object per text, with every blank")
    parser.add_argument("--truncate", action="store_true", help="drop tokens from the left of too long texts")
    parser.add_argument("--batch-size", type=int, default=16, help="texts decoded together (default 16)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument(
        "--quantize", metavar="MODE", help="weight-only quantization through torchao: int8, or int4 (CUDA, bfloat16)"
    )
    parser.add_argument(
        "--tensor-parallel", action="store_true",
        help="split the model over the processes of torchrun (torchrun --nproc-per-node N -m torchglm.cli fill ...)",
    )  # fmt: skip
    decoding = parser.add_argument_group("decoding (per blank)")
    defaults = GenerationOptions()
    decoding.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    decoding.add_argument("--min-new-tokens", type=int, default=defaults.min_new_tokens)
    decoding.add_argument("--num-beams", type=int, default=defaults.num_beams)
    decoding.add_argument("--length-penalty", type=float, default=defaults.length_penalty)
    decoding.add_argument(
        "--early-stopping", choices=["true", "false", "never"], default="false", help="beam search stop rule"
    )
    decoding.add_argument("--no-repeat-ngram-size", type=int, default=defaults.no_repeat_ngram_size)
    decoding.add_argument("--repetition-penalty", type=float, default=defaults.repetition_penalty)
    decoding.add_argument(
        "--ban", type=_id_list, action="extend", default=[], metavar="ID[,ID...]",
        help="token ids never generated (comma-separated; may repeat)",
    )  # fmt: skip
    decoding.add_argument("--sample", action="store_true", help="sample instead of greedy search")
    decoding.add_argument("--temperature", type=float, default=defaults.temperature)
    decoding.add_argument("--top-k", type=int, default=defaults.top_k)
    decoding.add_argument("--top-p", type=float, default=defaults.top_p)
    decoding.add_argument("--seed", type=int, help="seed for sampling")


def _id_list(text: str) -> list[int]:
    """``"5,7"`` -> [5, 7] (a list in one argument, so that ``--ban`` never swallows the texts after it)."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected token ids like 5,7, got {text!r}") from None


def options_from_args(args: argparse.Namespace) -> GenerationOptions:
    early = {"true": True, "false": False, "never": "never"}[args.early_stopping]
    try:
        return _options(args, early)
    except ValueError as error:
        raise InputError(str(error)) from None


def _options(args: argparse.Namespace, early) -> GenerationOptions:
    return GenerationOptions(
        max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.min_new_tokens,
        num_beams=args.num_beams,
        length_penalty=args.length_penalty,
        early_stopping=early,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
        repetition_penalty=args.repetition_penalty,
        banned_ids=tuple(args.ban),
        do_sample=args.sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )


def check_folders(model_folder: str, tokenizer_folder: str | None) -> None:
    """``--model`` and ``--tokenizer`` name local folders (or a reachable hub id), else an :class:`InputError`."""
    from torchglm.builtin import resolve

    for option, folder in (("--model", model_folder), ("--tokenizer", tokenizer_folder)):
        try:
            folder = resolve(folder) if folder is not None else None
        except FileNotFoundError as error:
            raise InputError(f"{option}: {error}") from None
        if folder is not None and not Path(folder).is_dir():
            if is_hub_id(folder):
                check_hub_reachable(option, folder)
                continue
            raise InputError(
                f"{option} {folder}: no such model folder (torchglm loads local folders: config.json, weights "
                "and tokenizer files)"
            )


def load(
    model_folder: str,
    tokenizer_folder: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    quantization: str | None = None,
    model_class=None,
):
    """A GLM model in eval mode and its tokenizer, from local checkpoint folders. A name that is not a folder is an
    :class:`InputError` at once (transformers would look it up on the hub and wait for the network).
    ``quantization`` (``int8``, ``int4``) quantizes the weights on ``device``, where its kernels must exist.
    ``model_class``: what to load (default ``GLMForConditionalGeneration``)."""
    import torch

    from torchglm.model import GLMForConditionalGeneration
    from torchglm.tokenization import GLMTokenizer

    check_folders(model_folder, tokenizer_folder)
    start = time.perf_counter()
    if quantization is not None:
        from torchglm.quantization import check_quantization_mode

        check_quantization_mode(quantization)  # before any weight is read
    try:
        model_class = model_class or GLMForConditionalGeneration
        model = model_class.from_pretrained(model_folder, dtype=getattr(torch, dtype))
        tokenizer = GLMTokenizer.from_pretrained(tokenizer_folder or model_folder)
    except InputError:  # already names what is wrong (a quantization mode, a checkpoint file)
        raise
    except (OSError, ValueError, KeyError) as error:
        raise InputError(f"--model {model_folder}: cannot load a GLM from it ({error})") from None
    except RuntimeError as error:
        if "mismatched" not in str(error):
            raise
        raise InputError(
            f"--model {model_folder}: its weights do not fit its config.json (tensor shapes differ: see the report "
            "above, one line per tensor)"
        ) from None
    model = model.to(device).eval()
    if quantization is not None:  # on the device whose kernels it needs (from_pretrained's device= needs accelerate)
        from torchglm.quantization import quantize_weights

        quantize_weights(model, quantization)
    print(describe_loaded(model_folder, model, time.perf_counter() - start), file=sys.stderr)
    return model, tokenizer


def describe_loaded(name: str, model, seconds: float) -> str:
    """One line for the terminal: which model, how big (parameters, weight files on disk), how long it took."""
    from torchglm.builtin import resolve

    folder = Path(resolve(name))
    on_disk = (
        sum(p.stat().st_size for p in folder.glob("*") if p.suffix in (".safetensors", ".bin"))
        if folder.is_dir()
        else 0
    )
    parameters = sum(p.numel() for p in model.parameters())
    size = f", {on_disk / 1e6:.1f} MB on disk" if on_disk else ""
    return f"model {name}: {parameters / 1e6:.2f}M parameters{size}, loaded in {seconds:.2f} s"


def is_hub_id(name: str) -> bool:
    """``org/name`` whose ``org`` is not a local folder: a Hugging Face Hub id. Anything else that is not a folder
    (``glm-large``, ``./glm-large``, ``runs/missing``) is a local name and never goes to the network."""
    parts = name.split("/")
    return (
        len(parts) == 2
        and all(re.fullmatch(r"[A-Za-z0-9][\w.-]*", part) for part in parts)
        and not Path(parts[0]).exists()
    )


def check_hub_reachable(option: str, repo_id: str, timeout: float = 5.0) -> None:
    """A hub id is fetched only when the network may be used: refused at once under ``HF_HUB_OFFLINE=1``, else one
    request with a short timeout first (huggingface_hub's own download retries for ~25 s before giving up)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise InputError(f"{option} {repo_id}: a hub id, and HF_HUB_OFFLINE is set; pass a local model folder")
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        response = get_session().head(f"{constants.ENDPOINT}/api/models/{repo_id}", timeout=timeout)
    except Exception as error:  # no network, DNS, timeout: one line, not a 25 s retry loop
        raise InputError(
            f"{option} {repo_id}: the Hugging Face Hub is not reachable ({type(error).__name__}); pass a local "
            "model folder (or set HF_HUB_OFFLINE=1 to never try)"
        ) from None
    if response.status_code >= 400:
        raise InputError(f"{option} {repo_id}: the hub answered {response.status_code} for this id")


def _read_texts(args: argparse.Namespace) -> Iterable[tuple[str, str]]:
    """``(where, text)``: where names the argument or the file line, for error messages."""
    if args.texts:
        return [(f"text {i + 1}", text) for i, text in enumerate(args.texts)]
    if args.file and args.file != "-":
        try:
            with open(args.file, encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"--file {args.file}: cannot read it ({error})") from None
        return [(f"{args.file}, line {n}", line) for n, line in enumerate(lines, start=1) if line.strip()]
    return ((f"stdin, line {n}", line.rstrip("\n")) for n, line in enumerate(sys.stdin, start=1) if line.strip())


def _print_result(result: FillResult, as_json: bool) -> None:
    print(json.dumps(result.to_dict(), ensure_ascii=False) if as_json else result.filled, flush=True)


class _Streamer:
    """Prints one text's fills as they grow (blanks separated by " | "), then the filled text on its own line."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.blank = -1
        self.tokens: list[int] = []
        self.shown = ""

    def __call__(self, sample: int, blank: int, token: int) -> None:
        if blank != self.blank:
            print(" | " if self.blank >= 0 else "", end="")
            self.blank, self.tokens, self.shown = blank, [], ""
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens).strip()
        if text.startswith(self.shown):  # WordPiece/BPE may rewrite the tail; print once it is stable
            print(text[len(self.shown) :], end="", flush=True)
            self.shown = text

    def run(self, model, text: str, options: GenerationOptions, truncate: bool) -> FillResult:
        result = fill(model, self.tokenizer, text, options=options, truncate=truncate, on_token=self)
        print("\n" + result.filled, flush=True)
        return result


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise InputError(f"--batch-size {args.batch_size}: must be at least 1")
    options = options_from_args(args)
    if args.stream and (args.json or options.num_beams > 1):
        raise InputError("--stream prints tokens as they come: not with --json or --num-beams > 1")
    if args.tensor_parallel and args.quantize:
        raise InputError("--quantize: not with --tensor-parallel (quantized weights are not split); use one of them")
    if args.tensor_parallel:
        return _run_tensor_parallel(args)
    model, tokenizer = load(args.model, args.tokenizer, args.device, args.dtype, args.quantize)
    return _fill_texts(args, options, model, tokenizer, list)


def _fill_texts(args, options, model, tokenizer, gather_texts) -> int:
    if args.interactive:
        while True:
            try:
                text = input("text> ")
            except EOFError:
                print()
                return 0
            if not text.strip():
                continue
            try:
                if args.stream:
                    _Streamer(tokenizer).run(model, text, options, args.truncate)
                else:
                    _print_result(fill(model, tokenizer, text, options=options, truncate=args.truncate), args.json)
            except ValueError as error:  # a bad text should not end the session
                print(f"error: {error}", file=sys.stderr)
    texts = gather_texts(_read_texts(args))
    failed = 0
    if args.stream:
        for where, text in texts:
            try:
                _Streamer(tokenizer).run(model, text, options, args.truncate)
            except ValueError as error:
                failed += _report(where, error)
        return 2 if failed else 0
    for start in range(0, len(texts), args.batch_size):
        chunk = texts[start : start + args.batch_size]
        try:
            results = fill(model, tokenizer, [t for _, t in chunk], options=options, truncate=args.truncate,
                           batch_size=args.batch_size)  # fmt: skip
        except ValueError:  # a bad text in the chunk: fill the texts one by one, naming each bad one
            results = []
            for where, text in chunk:
                try:
                    results.append(fill(model, tokenizer, text, options=options, truncate=args.truncate))
                except ValueError as error:
                    failed += _report(where, error)
        for result in results:
            _print_result(result, args.json)
    if failed:
        rest = "; the others were filled" if failed < len(texts) else ""
        print(f"torchglm fill: {failed} of {len(texts)} texts failed (named above){rest}", file=sys.stderr)
    return 2 if failed else 0


def _run_tensor_parallel(args: argparse.Namespace) -> int:
    """``fill`` with the model split over torchrun's processes: sizes checked before anything is loaded, texts read
    by rank 0 and sent to all (they share stdin), one sampling seed, output from rank 0 only."""
    import torch
    import torch.distributed as dist

    from torchglm.builtin import resolve
    from torchglm.config import GLMConfig
    from torchglm.tokenization import GLMTokenizer
    from torchglm.train import parallel

    size = parallel.world_size_from_env()
    if args.interactive:
        raise InputError("--interactive: not with --tensor-parallel (every process would prompt); pass texts or --file")
    check_folders(args.model, args.tokenizer)
    folder = resolve(args.model)
    if not Path(folder, "config.json").is_file():
        raise InputError(f"--model {args.model}: --tensor-parallel needs a local model folder with config.json")
    try:
        config = GLMConfig.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise InputError(f"--model {args.model}: cannot read its config.json ({error})") from None
    parallel.check_tensor_parallel_size(config, size)
    if size == 1:
        print("torchglm fill: --tensor-parallel on one process (not under torchrun): the whole model", file=sys.stderr)
        model, tokenizer = load(args.model, args.tokenizer, args.device, args.dtype)
        return _fill_texts(args, options_from_args(args), model, tokenizer, list)
    world = parallel.init_distributed("cuda" if args.device.startswith("cuda") else "cpu", size)
    ok = False
    try:
        if not world.is_main:
            sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the rest of the process
        start = time.perf_counter()
        try:
            model = parallel.load_tensor_parallel(folder, world.mesh["tp"], getattr(torch, args.dtype))
            tokenizer = GLMTokenizer.from_pretrained(args.tokenizer or folder)
        except InputError:
            raise
        except (OSError, ValueError, KeyError) as error:  # as load() words them: one line, not a traceback
            raise InputError(f"--model {args.model}: cannot load a GLM from it ({error})") from None
        print(describe_loaded(args.model, model, time.perf_counter() - start) + f", over {size} ranks", file=sys.stderr)
        options = dataclasses.replace(options_from_args(args), seed=parallel.shared_seed(args.seed))

        def texts_of_rank0(texts):
            sent = [list(texts) if world.is_main else None]
            dist.broadcast_object_list(sent, src=0)
            return sent[0]

        code = _fill_texts(args, options, model, tokenizer, texts_of_rank0)
        ok = True
        return code
    except BaseException as error:  # the other ranks print nothing else: say why this one failed
        if not world.is_main:
            print(f"torchglm fill: rank {world.rank}: {type(error).__name__}: {error}", file=sys.__stderr__)
        raise
    finally:
        parallel.close_distributed(orderly=ok)


def _report(where: str, error: Exception) -> int:
    # the text's index inside a chunk means nothing to the user: `where` names it
    message = re.sub(r"^text \d+ ", "the text ", re.sub(r"^text \d+: ", "", str(error)))
    print(f"torchglm fill: {where}: {message}", file=sys.stderr)
    return 1

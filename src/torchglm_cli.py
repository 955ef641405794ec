"""The ``torchglm`` command's entry point: ``torchglm fill|pretrain|finetune|evaluate|summarize|convert|prepare-data``.

It lives outside the package so that ``torchglm --help`` and ``--version`` answer at once: importing ``torchglm``
registers its model classes with transformers, which imports torch and transformers (~4 s). A command runs from
its own module through ``torchglm.cli.run_command``, which is also the error boundary.
"""

from __future__ import annotations

import sys

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module with add_arguments/run, one-line help)
    "fill": ("torchglm.fill_cli", "fill the [MASK]/[sMASK]/[gMASK] blanks of texts, or continue them"),
    "convert": ("torchglm.convert", "convert original or released checkpoints to torchglm folders"),
    "pretrain": ("torchglm.train.pretrain", "pretrain GLM (one process, or torchrun: FSDP2 / TP / DeepSpeed)"),
    "prepare-data": ("torchglm.data.prepare", "tokenize corpora into memory-mapped token shards (resumable)"),
    "evaluate": ("torchglm.evaluate_cli", "zero-shot LAMBADA, perplexity, multiple choice, ROUGE; lm-eval backend"),
    "finetune": ("torchglm.train.finetune", "finetune on a task (seq2seq: summaries, questions)"),
    "summarize": ("torchglm.seq2seq_cli", "summarize documents (one per line, or jsonl) with a seq2seq model"),
}


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("torchglm")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "--version":
        print(f"torchglm {version()}")
        return 0
    if not argv or argv[0] not in COMMANDS:
        listing = "\n".join(f"  {name:14} {help_text}" for name, (_, help_text) in COMMANDS.items())
        usage = (
            f"usage: torchglm COMMAND [options]\n\ncommands:\n{listing}\n\n"
            "'torchglm COMMAND --help' for more; --debug shows the traceback of an error; --version."
        )
        if argv and argv[0] not in ("-h", "--help"):
            print(f"torchglm: unknown command {argv[0]!r}\n\n{usage}", file=sys.stderr)
            return 2
        print(usage)
        return 0 if argv else 2
    from torchglm.cli import run_command

    return run_command(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())

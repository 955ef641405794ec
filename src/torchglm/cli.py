"""One command line: ``torchglm fill|pretrain|finetune|evaluate|convert|prepare-data``.

Each command is a thin layer over a Python function; its module owns its argument parser
(``add_arguments(parser)``) and entry point (``run(args)``), so this file only maps names to modules, and
imports only the module of the command that runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from torchglm.errors import InputError

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module with add_arguments/run, one-line help)
    "fill": ("torchglm.fill_cli", "fill the [MASK]/[sMASK]/[gMASK] blanks of texts, or continue them"),
    "convert": ("torchglm.convert", "convert original or released checkpoints to torchglm folders"),
    "pretrain": ("torchglm.train.pretrain", "pretrain GLM (one process, or torchrun: FSDP2 / TP / DeepSpeed)"),
    "prepare-data": ("torchglm.data.prepare", "tokenize corpora into memory-mapped token shards (resumable)"),
    "evaluate": ("torchglm.evaluate_cli", "zero-shot LAMBADA, perplexity, multiple choice; lm-eval backend"),
}


def command_parser(name: str) -> argparse.ArgumentParser:
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(
        prog=f"torchglm {name}", description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    module.add_arguments(parser)
    parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        listing = "\n".join(f"  {name:14} {help_text}" for name, (_, help_text) in COMMANDS.items())
        usage = f"usage: torchglm COMMAND [options]\n\ncommands:\n{listing}\n\n'torchglm COMMAND --help' for more."
        if argv and argv[0] not in ("-h", "--help"):
            print(f"torchglm: unknown command {argv[0]!r}\n\n{usage}", file=sys.stderr)
            return 2
        print(usage)
        return 0 if argv else 2
    parser = command_parser(argv[0])
    args, unknown = parser.parse_known_args(argv[1:])
    if getattr(args, "pass_through", None):  # a command wrapping another tool's command line gets the rest
        setattr(args, args.pass_through, unknown)
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return int(args._run(args) or 0)
    except InputError as error:
        print(f"torchglm {argv[0]}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

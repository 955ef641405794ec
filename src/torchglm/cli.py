"""One command line: ``torchglm fill|pretrain|finetune|evaluate|summarize|convert|prepare-data``
(entry point: ``torchglm_cli``).

Each command is a thin layer over a Python function; its module owns its argument parser
(``add_arguments(parser)``) and entry point (``run(args)``), so this file only builds the parser of the command
that runs and is the one error boundary: a user error (``torchglm.errors.InputError``, which configuration and
checkpoint errors are too) is one line on stderr and exit status 2; ``--debug`` (or ``TORCHGLM_DEBUG=1``) shows
its traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from torchglm.errors import InputError
from torchglm_cli import COMMANDS, main

__all__ = ["COMMANDS", "command_parser", "main", "run_command"]


def command_parser(name: str) -> argparse.ArgumentParser:
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(
        prog=f"torchglm {name}", description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    module.add_arguments(parser)
    parser.set_defaults(_run=module.run)
    return parser


def run_command(name: str, argv: list[str]) -> int:
    debug = "--debug" in argv or os.environ.get("TORCHGLM_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    parser = command_parser(name)
    args, unknown = parser.parse_known_args(argv)
    if getattr(args, "pass_through", None):  # a command wrapping another tool's command line gets the rest
        setattr(args, args.pass_through, unknown)
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return int(args._run(args) or 0)
    except InputError as error:
        if debug:
            raise
        print(f"torchglm {name}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # torchrun ... -m torchglm.cli pretrain ...
    sys.exit(main())

"""One command line: ``torchglm fill|pretrain|finetune|evaluate|convert|prepare-data``.

Each command is a thin layer over a Python function; its module owns its own argument parser
(``add_arguments(parser)``) and entry point (``run(args)``), so this file only maps names to modules.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module with add_arguments/run, one-line help)
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torchglm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

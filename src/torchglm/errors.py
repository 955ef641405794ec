"""User errors: bad input files, arguments or settings, reported as one clear line and exit status 2.

Raise :class:`InputError` for anything the user can fix (a file, line, field or limit named in the message);
``torchglm.cli`` prints it without a traceback. Bugs stay ordinary exceptions.
"""

from __future__ import annotations

import os


class InputError(ValueError):
    """Input the user can fix; the message names the file, line, field or limit."""

    @classmethod
    def at(cls, path: str | os.PathLike, line: int | None, message: str) -> InputError:
        """An error at ``path`` (and 1-based ``line``): ``"data.jsonl, line 3: message"``."""
        where = f"{os.fspath(path)}, line {line}" if line is not None else os.fspath(path)
        return cls(f"{where}: {message}")

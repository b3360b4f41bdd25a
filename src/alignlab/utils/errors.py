"""User errors: one sentence, exit code 2, no traceback.

A mistake in what the user gave (a data row, a config value, a path, a server address) raises
``UserError`` (or a subclass: ``DataError``, ``ConfigError``, ``OutputError``, ``JudgeHTTPError``), whose
message names the file or key, what is wrong and the fix. The entry points print that sentence alone and
exit 2. Anything else is a bug and keeps its traceback; ``HYDRA_FULL_ERROR=1`` shows the traceback of a
user error too.

    @hydra_app("train")            # alignlab.utils.app: instead of @hydra.main(..., config_name="train")
    def main(cfg): ...

    @cli_app("alignlab-export")    # argparse entry points: main(argv) -> exit code
    def main(argv=None): ...
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable

EXIT_USER_ERROR = 2  # the exit code of a user error (argparse's code for bad arguments)


class UserError(Exception):
    """Something the user gave is wrong; ``str(e)`` is one sentence: what, where, and the fix."""


class MissingPathError(UserError, FileNotFoundError):
    """A path the user gave does not exist."""


class ConfigError(UserError, ValueError):
    """A config that contradicts itself; the message names the keys."""


def full_error() -> bool:
    """True when the user asked for whole tracebacks (Hydra's own switch)."""
    return os.environ.get("HYDRA_FULL_ERROR", "") not in ("", "0")


def report(prog: str, error: BaseException) -> None:
    """Print a user error as the one line a user reads."""
    text = " ".join(str(error).split()) or type(error).__name__
    print(f"{prog}: error: {text}", file=sys.stderr, flush=True)


def cli_app(prog: str) -> Callable[[Callable[..., int | None]], Callable[..., int]]:
    """For argparse entry points ``main(argv) -> exit code``: a ``UserError`` prints one line, returns 2."""

    def wrap(fn: Callable[..., int | None]) -> Callable[..., int]:
        @functools.wraps(fn)
        def main(argv: list[str] | None = None) -> int:
            try:
                return fn(argv) or 0
            except UserError as e:
                if full_error():
                    raise
                report(prog, e)
                return EXIT_USER_ERROR

        return main

    return wrap

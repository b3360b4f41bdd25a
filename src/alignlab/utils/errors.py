"""User errors: one sentence, exit code 2, no traceback.

A mistake in what the user gave (a data row, a config value, a path, a server address) raises
``UserError`` (or a subclass: ``DataError``, ``ConfigError``, ``OutputError``, ``JudgeHTTPError``), whose
message names the file or key, what is wrong and the fix. The entry points print that sentence alone and
exit 2. Anything else is a bug and keeps its traceback; ``HYDRA_FULL_ERROR=1`` shows the traceback of a
user error too.

    @hydra_app("train")            # instead of @hydra.main(..., config_name="train")
    def main(cfg): ...

    @cli_app("alignlab-export")    # argparse entry points: main(argv) -> exit code
    def main(argv=None): ...
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

EXIT_USER_ERROR = 2  # the exit code of a user error (argparse's code for bad arguments)


class UserError(Exception):
    """Something the user gave is wrong; ``str(e)`` is one sentence: what, where, and the fix."""


class MissingPathError(UserError, FileNotFoundError):
    """A path the user gave does not exist."""


def full_error() -> bool:
    """True when the user asked for whole tracebacks (Hydra's own switch)."""
    return os.environ.get("HYDRA_FULL_ERROR", "") not in ("", "0")


def report(prog: str, error: BaseException) -> None:
    """Print a user error as the one line a user reads."""
    text = " ".join(str(error).split()) or type(error).__name__
    print(f"{prog}: error: {text}", file=sys.stderr, flush=True)


def hydra_app(
    config_name: str, precheck: Callable[[Any], None] | None = None
) -> Callable[[Callable[[Any], Any]], Callable[..., Any]]:
    """``hydra.main`` over conf/``config_name``.yaml, with user errors printed as one line and exit 2.

    Two kinds of user error: a ``UserError`` raised by the task (bad rows, contradicting keys, missing
    files, an unreachable server), and a command line Hydra cannot compose (a typo'd key, an unknown
    group option), which Hydra reports in its own words without a traceback; both exit 2.
    ``precheck(cfg)`` runs first, before the typed-config check imports the config's targets (the label
    app asks its judge server there, before even torch is imported).
    """
    import hydra

    from alignlab.utils.hydra import CONF_PATH, check_types

    prog = f"alignlab-{config_name}"

    def wrap(fn: Callable[[Any], Any]) -> Callable[..., Any]:
        entered = [False]

        @functools.wraps(fn)
        def task(cfg):
            entered[0] = True
            try:
                if precheck is not None:
                    precheck(cfg)
                check_types(cfg)  # algo.beta=abc fails here, before any model loads
                return fn(cfg)
            except UserError as e:
                if full_error():
                    raise
                report(prog, e)
                sys.exit(EXIT_USER_ERROR)

        hydra_main = hydra.main(version_base="1.3", config_path=CONF_PATH, config_name=config_name)(task)

        @functools.wraps(fn)
        def main(cfg_passthrough=None):
            entered[0] = False
            if cfg_passthrough is None:  # a secret on the command line: refused before Hydra writes .hydra/
                from alignlab.utils.cli_secrets import check_argv

                try:
                    check_argv(sys.argv[1:])
                except UserError as e:
                    if full_error():
                        raise
                    report(prog, e)
                    sys.exit(EXIT_USER_ERROR)
            try:
                return hydra_main(cfg_passthrough)
            except SystemExit as e:
                # Hydra exits 1 after printing why it could not compose the config: the task never ran
                if e.code == 1 and not entered[0]:
                    raise SystemExit(EXIT_USER_ERROR) from None
                raise

        return main

    return wrap


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

"""The Hydra entry point wrapper: ``hydra.main`` with user errors printed as one line and exit 2.

It lives apart from ``alignlab.utils.errors`` (which imports nothing of alignlab) so that the error
classes sit at the bottom of the import graph and this wrapper, which needs the Hydra glue, above it.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

from alignlab.utils.errors import EXIT_USER_ERROR, UserError, full_error, report


def user_error_of(error: BaseException) -> UserError | None:
    """``error`` if it is a ``UserError``; the ``UserError`` that Hydra's ``instantiate`` wrapped (a
    module's constructor refusing ``algo.k=1`` reaches the app as an ``InstantiationException`` whose cause
    is the ``ConfigError``); else None (a bug keeps its traceback)."""
    from hydra.errors import InstantiationException

    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, UserError):
            return error
        if not isinstance(error, InstantiationException):
            return None
        error, seen = error.__cause__, seen + 1
    return None


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
            except Exception as e:
                user = user_error_of(e)
                if user is None or full_error():
                    raise
                report(prog, user)
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

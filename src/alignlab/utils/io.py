"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from alignlab.utils.errors import UserError


class OutputError(UserError, RuntimeError):
    """An output could not be written; the message is one line a user can act on."""


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``."""
    path = Path(path)
    binary = "b" in mode
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OutputError(_describe(e, path)) from e
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OutputError(_describe(e, path)) from e
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _describe(e: OSError, path: Path) -> str:
    if e.errno == errno.ENOSPC:
        return f"cannot write {path}: the disk is full; free space or point paths.output_dir elsewhere"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {path}: permission denied; choose a writable output directory"
    return f"cannot write {path}: {e.strerror or e}"


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=str) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    with atomic_open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(path)


def jsonl_lines(text: str) -> list[str]:
    """The lines of a JSONL text, split at ``\\n`` only. ``str.splitlines`` also splits at U+2028, U+2029,
    U+0085 and other separators, which ``write_jsonl`` (``ensure_ascii=False``) writes raw inside a JSON
    string when a model generates them: a completion would then be cut in two and fail to parse."""
    return [line for line in text.split("\n") if line.strip()]


def write_parquet(path: str | os.PathLike, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows)
    with atomic_open(path, "wb", encoding=None) as f:
        pq.write_table(table, f)
    return Path(path)


def write_rows(path: str | os.PathLike, rows: list[dict]) -> Path:
    """Write rows as JSONL or Parquet, chosen by the file's suffix."""
    p = Path(path)
    if p.suffix == ".parquet":
        return write_parquet(p, rows)
    return write_jsonl(p, rows)

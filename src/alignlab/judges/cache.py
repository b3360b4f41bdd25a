"""A persistent judge cache in SQLite: a rerun costs no model call, a killed run resumes where it stopped.

Every judgement (one order of one comparison, one pointwise text, one score) is stored under a key built
from the judge's identity, the template hash, the prompt, both completions and the order. Results are
committed batch by batch inside a transaction (WAL journal, ``synchronous=FULL``): a process killed at
any moment leaves every committed batch intact and no partial one, and the primary key makes a repeated
insert a no-op, so a restart neither loses nor duplicates anything.

Only answers are kept: a judge's non-answer (no probabilities: unparseable, refused, below the option-mass
floor) is not stored, and one stored by an older version is dropped when read, so a rerun, against a
fixed server or with a fixed template, asks again. A cache file that is not a readable SQLite database
(truncated, overwritten) is moved aside to ``<name>.corrupt-<UTC time>`` with a warning and a fresh cache
is started; damage found later in a run stops it with one line naming the file and the fix.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alignlab.judges.templates import text_hash
from alignlab.utils.errors import UserError
from alignlab.utils.runtime import get_logger

log = get_logger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS judgements (
    key TEXT PRIMARY KEY,
    judge TEXT NOT NULL,
    template TEXT NOT NULL,
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    created REAL NOT NULL
)
"""


class JudgeCacheError(UserError):
    """The judge cache file was damaged during the run; the message names it and the fix."""


def is_answer(value: Any) -> bool:
    """False for a judge's non-answer (``probs`` None): it is not cached, so the next run asks again."""
    return not (isinstance(value, dict) and "probs" in value and value["probs"] is None)


def _damaged(e: sqlite3.Error) -> bool:
    # not a database / malformed image; an OperationalError (locked, disk I/O) is not the file's content
    return isinstance(e, sqlite3.DatabaseError) and not isinstance(e, sqlite3.OperationalError)


def cache_key(judge_id: str, template_hash: str, kind: str, prompt: str, *texts: str) -> str:
    """Key of one judgement: judge identity, template, kind/order (e.g. ``pair:fwd``), prompt, texts."""
    return text_hash(judge_id, template_hash, kind, prompt, *texts) + text_hash(kind, prompt, *texts)


class JudgeCache:
    """SQLite key -> JSON value store with hit/miss counters; safe to share between threads."""

    def __init__(self, path: str | os.PathLike | None):
        """
        Args:
            path: the SQLite file (created with its directory); None keeps the cache in memory only.
        """
        self.path = None if path is None else Path(path).expanduser()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = self._connect()
        except sqlite3.Error as e:
            if self.path is None or not _damaged(e):
                raise
            aside = self._move_aside()
            log.warning("judge cache %s is not a readable SQLite database (%s): moved it to %s and started "
                        "a fresh cache; its judgements will be asked again", self.path, e, aside)  # fmt: skip
            self._db = self._connect()
        self.hits = 0
        self.misses = 0

    def _connect(self) -> sqlite3.Connection:
        existed = self.path is not None and self.path.exists() and self.path.stat().st_size > 0
        db = sqlite3.connect(
            ":memory:" if self.path is None else str(self.path), check_same_thread=False, timeout=60
        )
        try:
            if self.path is not None:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
            db.execute(_SCHEMA)
            db.commit()
            if existed:  # a truncated file opens fine and fails only where its pages are missing
                verdict = db.execute("PRAGMA quick_check(1)").fetchone()[0]
                if verdict != "ok":
                    raise sqlite3.DatabaseError(verdict)
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _move_aside(self) -> Path:
        """Rename the damaged file (and its WAL sidecars) to ``<name>.corrupt-<UTC time>``."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            try:
                os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
            except FileNotFoundError:  # no sidecar, or another process moved it first
                pass
        return aside

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """Under the lock; damage found mid-run becomes one line naming the file and the fix."""
        with self._lock:
            try:
                yield
            except sqlite3.Error as e:
                if self.path is None or not _damaged(e):
                    raise
                raise JudgeCacheError(
                    f"judge cache {self.path} is damaged ({e}): move it aside (mv {self.path} "
                    f"{self.path}.corrupt) and rerun; its judgements will be asked again"
                ) from e

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """The cached values of those ``keys`` that are present."""
        out: dict[str, Any] = {}
        uniq = list(dict.fromkeys(keys))
        with self._reading():
            for i in range(0, len(uniq), 500):
                chunk = uniq[i : i + 500]
                q = f"SELECT key, value FROM judgements WHERE key IN ({','.join('?' * len(chunk))})"
                out.update({k: json.loads(v) for k, v in self._db.execute(q, chunk)})
        return out

    def put_many(self, items: Sequence[tuple[str, str, str, str, Any]]) -> None:
        """Store (key, judge_id, template_hash, kind, value) rows in one transaction."""
        now = time.time()
        rows = [(k, j, t, kind, json.dumps(v, ensure_ascii=False), now) for k, j, t, kind, v in items]
        with self._reading(), self._db:
            self._db.executemany("INSERT OR IGNORE INTO judgements VALUES (?, ?, ?, ?, ?, ?)", rows)

    def delete(self, keys: Sequence[str]) -> None:
        """Drop the rows of ``keys`` (stored non-answers about to be asked again)."""
        with self._reading(), self._db:
            self._db.executemany("DELETE FROM judgements WHERE key = ?", [(k,) for k in keys])

    def __len__(self) -> int:
        with self._reading():
            return self._db.execute("SELECT COUNT(*) FROM judgements").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def map(
        self,
        keys: Sequence[str],
        compute: Callable[[list[int]], list[Any]],
        meta: tuple[str, str],
        kinds: Sequence[str],
        batch_size: int,
        keep: Callable[[Any], bool] = is_answer,
    ) -> list[Any]:
        """Values for ``keys``: cached ones read, missing ones computed ``batch_size`` at a time by
        ``compute(indices)`` and committed after every batch (so a killed run keeps finished batches).

        ``meta`` is (judge_id, template_hash); ``kinds`` gives each key's kind, stored for inspection.
        Duplicate keys are computed once. Values ``keep`` rejects (non-answers) are returned but not
        stored, and such values found in the cache are dropped and computed again.
        """
        found = self.get_many(keys)
        stale = [k for k, v in found.items() if not keep(v)]
        if stale:
            self.delete(stale)
            found = {k: v for k, v in found.items() if keep(v)}
        out: list[Any] = [found.get(k) for k in keys]
        todo: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            if k in found:
                self.hits += 1
            else:
                todo.setdefault(k, []).append(i)
        self.misses += len(todo)
        firsts = [idx[0] for idx in todo.values()]
        for s in range(0, len(firsts), max(1, batch_size)):
            chunk = firsts[s : s + max(1, batch_size)]
            values = compute(chunk)
            if len(values) != len(chunk):
                raise RuntimeError(f"judge returned {len(values)} results for {len(chunk)} queries")
            self.put_many([(keys[i], *meta, kinds[i], v) for i, v in zip(chunk, values) if keep(v)])
            for i, v in zip(chunk, values):
                for j in todo[keys[i]]:
                    out[j] = v
        return out

    def stats(self) -> dict:
        return {"cache_hits": self.hits, "cache_misses": self.misses, "cache_path": str(self.path)}

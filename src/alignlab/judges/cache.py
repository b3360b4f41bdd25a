"""A persistent judge cache in SQLite: a rerun costs no model call, a killed run resumes where it stopped.

Every judgement (one order of one comparison, one pointwise text, one score) is stored under a key built
from the judge's identity, the template hash, the prompt, both completions and the order. Results are
committed batch by batch inside a transaction (WAL journal, ``synchronous=FULL``): a process killed at
any moment leaves every committed batch intact and no partial one, and the primary key makes a repeated
insert a no-op, so a restart neither loses nor duplicates anything.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from alignlab.judges.templates import text_hash

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
        self._db = sqlite3.connect(
            ":memory:" if self.path is None else str(self.path), check_same_thread=False, timeout=60
        )
        if self.path is not None:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        self._db.commit()
        self.hits = 0
        self.misses = 0

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """The cached values of those ``keys`` that are present."""
        out: dict[str, Any] = {}
        uniq = list(dict.fromkeys(keys))
        with self._lock:
            for i in range(0, len(uniq), 500):
                chunk = uniq[i : i + 500]
                q = f"SELECT key, value FROM judgements WHERE key IN ({','.join('?' * len(chunk))})"
                out.update({k: json.loads(v) for k, v in self._db.execute(q, chunk)})
        return out

    def put_many(self, items: Sequence[tuple[str, str, str, str, Any]]) -> None:
        """Store (key, judge_id, template_hash, kind, value) rows in one transaction."""
        now = time.time()
        rows = [(k, j, t, kind, json.dumps(v, ensure_ascii=False), now) for k, j, t, kind, v in items]
        with self._lock, self._db:
            self._db.executemany("INSERT OR IGNORE INTO judgements VALUES (?, ?, ?, ?, ?, ?)", rows)

    def __len__(self) -> int:
        with self._lock:
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
    ) -> list[Any]:
        """Values for ``keys``: cached ones read, missing ones computed ``batch_size`` at a time by
        ``compute(indices)`` and committed after every batch (so a killed run keeps finished batches).

        ``meta`` is (judge_id, template_hash); ``kinds`` gives each key's kind, stored for inspection.
        Duplicate keys are computed once.
        """
        found = self.get_many(keys)
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
            self.put_many([(keys[i], *meta, kinds[i], v) for i, v in zip(chunk, values)])
            for i, v in zip(chunk, values):
                for j in todo[keys[i]]:
                    out[j] = v
        return out

    def stats(self) -> dict:
        return {"cache_hits": self.hits, "cache_misses": self.misses, "cache_path": str(self.path)}

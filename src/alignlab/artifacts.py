"""A content-addressed artifact store: a stage's output directory is named by the hash of everything
that determines it (its config and the keys of its inputs), so identical work is done once and shared.

    store = Store("outputs/artifacts")
    path, record = store.run("pairs", spec, lambda out: sample_pairs(..., out))

A finished artifact has ``DONE.json`` (spec, what the stage returned, seconds it took). An unfinished
one (the process died) is simply run again in the same directory, so stages that checkpoint resume.
"""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alignlab.utils.hashing import stable_hash
from alignlab.utils.io import write_json


def content_key(spec: Any) -> str:
    """A 16-hex-digit hash of a JSON-serialisable spec (dict keys sorted)."""
    return stable_hash(spec)


class Store:
    """Directories ``<root>/<kind>/<key>`` with a ``DONE.json`` marker once complete."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, kind: str, spec: Any) -> Path:
        return self.root / kind / content_key(spec)

    @staticmethod
    def record(path: Path) -> dict | None:
        done = path / "DONE.json"
        return json.loads(done.read_text()) if done.exists() else None

    def run(self, kind: str, spec: Any, fn: Callable[[Path], dict | None]) -> tuple[Path, dict, bool]:
        """Run ``fn(out_dir)`` unless the artifact exists; returns (dir, record, was_cached)."""
        path = self.path(kind, spec)
        if (rec := self.record(path)) is not None:
            return path, rec, True
        path.mkdir(parents=True, exist_ok=True)
        with open(path.parent / f".{path.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process building the same artifact: wait for it
            if (rec := self.record(path)) is not None:
                return path, rec, True
            start = time.perf_counter()
            info = fn(path) or {}
            rec = {
                "kind": kind,
                "key": path.name,
                "spec": spec,
                "info": info,
                "seconds": round(time.perf_counter() - start, 2),
            }
            write_json(path / "DONE.json", rec)
        return path, rec, False

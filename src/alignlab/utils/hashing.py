"""The project's one short stable hash. Every content address (artifact directories, cached prompt sets,
judge identities, published-record keys, evaluation fingerprints) is a prefix of the SHA-256 of either a
canonical JSON text (keys sorted) or a plain text. The formulas are part of the cache format: changing
one invalidates every cache and published key made with it (tests/test_hashing.py pins them)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(obj: Any, *, ensure_ascii: bool = True) -> str:
    """``obj`` as JSON with sorted keys; what JSON cannot encode is written as ``str(value)``."""
    return json.dumps(obj, sort_keys=True, default=str, ensure_ascii=ensure_ascii)


def text_hash(text: str, length: int = 16) -> str:
    """The first ``length`` hex digits of SHA-256 of ``text`` (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def stable_hash(obj: Any, length: int = 16, *, ensure_ascii: bool = True) -> str:
    """``text_hash`` of ``canonical_json(obj)``: equal for equal content, whatever the dict order."""
    return text_hash(canonical_json(obj, ensure_ascii=ensure_ascii), length)

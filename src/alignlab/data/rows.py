"""Reading rows (SFT examples, preference pairs, prompts) with errors a user can act on.

Every invalid row gets a message naming the file, the row (line number for JSONL/CSV), the field and
the fix; with ``skip_invalid=True`` such rows are dropped and counted by reason instead. Nothing is
dropped silently.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlab.utils.errors import UserError

KINDS: dict[str, tuple[list[str], list[str]]] = {
    # kind: (required fields, optional fields)
    "sft": (["prompt", "completion"], []),
    "preference": (["prompt", "chosen", "rejected"], ["p_chosen"]),
    "prompts": (["prompt"], []),
}
HINT = "fix the row, or set data.skip_invalid=true to skip invalid rows (they are counted)"


class DataError(UserError, ValueError):
    """Invalid input data. ``str(e)`` is the whole message: file, row, field and what to do."""

    def __init__(self, message: str, reason: str = "invalid"):
        super().__init__(message)
        self.reason = reason


@dataclass
class LoadReport:
    """What loading did: rows read, kept and skipped (by reason)."""

    source: str
    read: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        s = f"{self.source}: {self.kept}/{self.read} rows kept"
        if self.skipped:
            s += " (skipped: " + ", ".join(f"{n} {r}" for r, n in self.skipped.most_common()) + ")"
        return s


def _iter_raw(path: str) -> Any:
    """Yield (row_label, raw_row or DataError) from a local file or a hub data set."""
    if path.startswith("hf://"):
        yield from _iter_hub(path[len("hf://") :])
        return
    if path.startswith("task://"):
        path = _task_prompt_file(path)
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{path}: file not found; check data paths (e.g. data.train_path=...)", "missing")
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        with open(p, "rb") as f:
            for i, raw in enumerate(f, start=1):
                where = f"{p}:{i}"
                if not raw.strip():
                    continue
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield (
                        where,
                        DataError(
                            f"{where}: invalid UTF-8 at byte {e.start}; re-encode the file as UTF-8 or {HINT}",
                            "invalid UTF-8",
                        ),
                    )
                    continue
                try:
                    yield where, json.loads(text)
                except json.JSONDecodeError as e:
                    yield (
                        where,
                        DataError(
                            f"{where}: malformed JSON ({e.msg.removesuffix(' at')} at column {e.colno}); {HINT}",
                            "malformed JSON",
                        ),
                    )
    elif suffix == ".json":
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(
                f"{p}: not valid UTF-8 JSON ({e}); expected a list of objects", "malformed JSON"
            ) from e
        if isinstance(data, dict):
            data = next((v for v in data.values() if isinstance(v, list)), None)
        if not isinstance(data, list):
            raise DataError(
                f"{p}: expected a JSON list of objects (or an object holding one)", "malformed JSON"
            )
        for i, row in enumerate(data):
            yield f"{p}[{i}]", row
    elif suffix in (".parquet", ".csv"):
        import pandas as pd

        try:
            df = pd.read_parquet(p) if suffix == ".parquet" else pd.read_csv(p, keep_default_na=False)
        except Exception as e:
            raise DataError(f"{p}: could not read {suffix[1:]} file ({e})", "unreadable") from e
        offset = 2 if suffix == ".csv" else 0  # CSV: line numbers count the header
        for i, row in enumerate(df.to_dict(orient="records")):
            yield (f"{p}:{i + offset}" if suffix == ".csv" else f"{p}[row {i}]"), row
    else:
        raise DataError(
            f"{p}: unsupported file type {suffix!r}; use .jsonl, .json, .parquet or .csv", "unsupported"
        )


def _task_prompt_file(url: str) -> str:
    """``task://SPLIT`` paths are resolved by the app from its ``task`` config before data is read."""
    raise DataError(
        f"{url}: task:// paths are read through the app's task; run the train app with task=<name> "
        "(task=<name>), or give a file path",
        "missing",
    )


def _iter_hub(spec: str):
    """``hf://name[:config][@split]`` through ``datasets`` (needs network or a local HF cache)."""
    from datasets import load_dataset

    split = "train"
    if "@" in spec:
        spec, split = spec.rsplit("@", 1)
    name, _, config = spec.partition(":")
    try:
        ds = load_dataset(name, config or None, split=split)
    except Exception as e:
        raise DataError(
            f"hf://{spec}@{split}: could not load from the hub ({type(e).__name__}: {e}); "
            "offline? use a local file",
            "unreadable",
        ) from e
    for i, row in enumerate(ds):
        yield f"hf://{spec}@{split}[{i}]", row


ASSISTANT_TURN = "\n\nAssistant:"  # HH-RLHF's turn marker
_ASSISTANT_ANY = re.compile(
    r"(?:^|\s)Assistant:"
)  # the same marker in other spacings ("Human: hi Assistant: ...")


def _after_last_assistant_marker(text: str) -> int | None:
    """Index just past the last assistant turn marker in ``text``, or None when it has none."""
    i = text.rfind(ASSISTANT_TURN)
    if i >= 0:
        return i + len(ASSISTANT_TURN)
    last = None
    for m in _ASSISTANT_ANY.finditer(text):
        last = m
    return last.end() if last else None


def _common_prefix_split(a: str, b: str) -> tuple[str, str, str]:
    """Texts without turn markers: (shared prompt, rest of a, rest of b), cut just after a whitespace of
    their common prefix, so never inside a word, and leaving both answers non-empty (one answer may be a
    prefix of the other)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    limit = min(n, len(a) - 1, len(b) - 1)  # cut at most here: each answer keeps a character
    cut = next((i + 1 for i in range(limit - 1, -1, -1) if a[i].isspace()), 0)
    return a[:cut], a[cut:], b[cut:]


def _split_texts(ch: str, rj: str, where: str) -> tuple[str, str, str]:
    """Whole transcripts -> (prompt, chosen answer, rejected answer), split at the last assistant turn."""
    i, j = _after_last_assistant_marker(ch), _after_last_assistant_marker(rj)
    if i is None and j is None:
        return _common_prefix_split(ch, rj)
    if i is None or j is None or ch[:i] != rj[:j]:
        raise DataError(
            f"{where}: field 'chosen'/'rejected': the transcripts differ before the last 'Assistant:' turn, "
            f"so they share no prompt; give a separate 'prompt' field or {HINT}",
            "bad transcript",
        )
    return ch[:i], ch[i:], rj[j:]


def _last_assistant(messages: list[dict]) -> int:
    """Index of the last assistant message (the last message when no message has a role)."""
    idx = [k for k, m in enumerate(messages) if m.get("role") == "assistant"]
    return idx[-1] if idx else len(messages) - 1


def _split_conversation(row: dict, where: str) -> dict:
    """Pairs stored as whole conversations (message lists or full texts) -> prompt, chosen, rejected."""
    ch, rj = row["chosen"], row["rejected"]
    if isinstance(ch, list) and isinstance(rj, list):
        if not ch or not rj or not all(isinstance(m, dict) and "content" in m for m in ch + rj):
            raise DataError(
                f"{where}: field 'chosen'/'rejected': message lists need dicts with 'role' and 'content'; {HINT}",
                "bad messages",
            )
        i, j = _last_assistant(ch), _last_assistant(rj)
        if ch[:i] != rj[:j] or i != len(ch) - 1 or j != len(rj) - 1:
            raise DataError(
                f"{where}: field 'chosen'/'rejected': the conversations must be the same up to their last "
                f"assistant message and end with it; {HINT}",
                "bad messages",
            )
        return {**row, "prompt": ch[:i], "chosen": ch[i]["content"], "rejected": rj[j]["content"]}
    if isinstance(ch, str) and isinstance(rj, str):
        prompt, c, r = _split_texts(ch, rj, where)
        return {**row, "prompt": prompt, "chosen": c, "rejected": r}
    return row


def validate_row(row: Any, kind: str, where: str, columns: dict[str, str] | None = None) -> dict:
    """Map columns, split conversations, and check types; returns the canonical row or raises DataError."""
    required, optional = KINDS[kind]
    if not isinstance(row, dict):
        raise DataError(
            f"{where}: expected an object with fields {required}, got {type(row).__name__}; {HINT}",
            "not an object",
        )
    columns = columns or {}
    out = dict(row)
    for canon in required + optional:
        src = columns.get(canon) or canon
        if src != canon and src in row:
            out[canon] = row[src]
    if kind == "preference" and "prompt" not in out and "chosen" in out and "rejected" in out:
        out = _split_conversation(out, where)
    for canon in required:
        src = columns.get(canon) or canon
        if canon not in out:
            have = ", ".join(sorted(map(str, row)))[:200]
            raise DataError(
                f"{where}: missing field '{src}' (row has: {have}); map it with data.columns.{canon}=<column> or {HINT}",
                f"missing {canon}",
            )
        v = out[canon]
        if (
            canon == "prompt"
            and isinstance(v, list)
            and v
            and all(isinstance(m, dict) and "content" in m for m in v)
        ):
            continue  # a message list prompt
        if not isinstance(v, str):
            raise DataError(
                f"{where}: field '{src}' must be a string, got {type(v).__name__}; {HINT}",
                f"non-string {canon}",
            )
        if (canon != "prompt" or kind == "prompts") and not v.strip():  # a prompts file: a prompt is its row
            raise DataError(f"{where}: field '{src}' is empty; {HINT}", f"empty {canon}")
    if kind == "preference":
        if out["chosen"] == out["rejected"]:
            raise DataError(
                f"{where}: fields 'chosen' and 'rejected' are identical, so the pair says nothing; {HINT}",
                "identical pair",
            )
        p = out.get("p_chosen")
        src = columns.get("p_chosen") or "p_chosen"
        if p is None or (isinstance(p, float) and math.isnan(p)):
            out["p_chosen"] = 1.0
        elif isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
            raise DataError(
                f"{where}: field '{src}' must be a number in [0, 1] (P(chosen preferred)), got {p!r}; {HINT}",
                "bad soft label",
            )
        else:
            out["p_chosen"] = float(p)
    return out


def load_rows(
    path: str,
    kind: str,
    columns: dict[str, str] | None = None,
    skip_invalid: bool = False,
    limit: int | None = None,
) -> tuple[list[dict], LoadReport]:
    """Read and validate every row of ``path``; see the module docstring for the error policy."""
    if kind not in KINDS:
        raise ValueError(f"unknown data kind {kind!r}; one of {list(KINDS)}")
    report = LoadReport(source=str(path))
    rows: list[dict] = []
    for where, raw in _iter_raw(str(path)):
        report.read += 1
        try:
            if isinstance(raw, DataError):
                raise raw
            row = validate_row(raw, kind, where, columns)
        except DataError as e:
            if not skip_invalid:
                raise
            report.skipped[e.reason] += 1
            continue
        row["_where"] = where
        rows.append(row)
        report.kept += 1
        if limit and report.kept >= limit:
            break
    if not rows:
        raise DataError(f"{path}: no usable rows ({report.summary()})", "empty")
    return rows, report

"""What ``alignlab.compare`` checks before it pairs anything: every result file can be read, its per-prompt
arrays are whole, and every file was evaluated the same way.

A paired comparison is only as good as its pairing: per-prompt differences mean something only when both
sides saw the same prompts with the same sampling seeds. So a result file is refused when

* it cannot be read (truncated, not JSON, not a JSON object, no ``method`` or ``eval``, per-prompt values
  that are not lists of numbers);
* one of its per-prompt lists (``eval.per_prompt.*``, ``base_eval.per_prompt.*``) has another length than
  the evaluation's ``n`` or than the other files' lists;
* its **evaluation fingerprint** differs from the other files' (or its ``eval`` from its ``base_eval``):
  a short hash of what the pairing relies on (``eval_fingerprint``: task, split, n, samples_per_prompt,
  seed and the sampling settings), computed here from those fields, so records written before the hash
  existed are checked too; a recorded ``eval_fingerprint`` that no longer matches its fields means they
  were edited after the evaluation;
* its ``prompts_sha`` (the hash of the evaluation prompts, recorded by ``alignlab.evaluate``) differs from
  that of the other files that carry one.

Each refusal is one line naming the file, what is wrong and the fix; ``--skip-bad`` leaves such files out
instead, and the report lists them with the reason.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from alignlab.utils.errors import UserError
from alignlab.utils.hashing import stable_hash

FINGERPRINT_KEYS = ("task", "split", "n", "samples_per_prompt", "seed", "sampling")
"""The evaluation fields a paired comparison relies on: the same prompts, sampled the same way."""
SIDES = ("eval", "base_eval")
FIX = "restore the file (or rerun its pipeline job), or pass --skip-bad to leave it out of the report"


class ResultFileError(UserError):
    """A result file that ``alignlab.compare`` cannot pair with the others."""


def _fields(ev: dict) -> dict:
    out = {k: ev.get(k) for k in FINGERPRINT_KEYS}
    if out["samples_per_prompt"] is None:  # records from before k samples per prompt: one
        out["samples_per_prompt"] = 1
    return out


def eval_fingerprint(ev: dict) -> str:
    """The short hash of an evaluation's ``FINGERPRINT_KEYS`` (the fields of a ``metrics.json`` record)."""
    return stable_hash(_fields(ev), 12)


def prompts_sha(prompts: Sequence[str]) -> str:
    """The short hash of the evaluation prompts, in order."""
    return stable_hash(list(prompts))


def _numbers(values) -> bool:
    return isinstance(values, list) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in values
    )


def read_result(path: Path) -> tuple[dict | None, str | None]:
    """(record, None); (None, None) for a JSON file that is no result record; (None, why) for a result
    file that cannot be used."""
    try:
        r = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"cannot be read ({e}): it is truncated or not JSON"
    if not (Path(path).name == "result.json" or (isinstance(r, dict) and ("method" in r or "eval" in r))):
        return None, None  # another JSON file that happens to match the published records' pattern
    if not isinstance(r, dict):
        return None, f"holds a JSON {type(r).__name__}, not a result record"
    missing = [k for k in ("method", "eval") if k not in r]
    if missing:
        return (
            None,
            f"has no {' and no '.join(repr(k) for k in missing)} key: it is not a whole result record",
        )
    for side in SIDES:
        ev = r.get(side)
        if side == "base_eval" and ev is None:
            continue
        if not isinstance(ev, dict):
            return None, f"its {side!r} is a {type(ev).__name__}, not an object"
        per = ev.get("per_prompt")
        if per is not None and not (isinstance(per, dict) and all(_numbers(v) for v in per.values())):
            return None, f"{side}.per_prompt does not hold lists of numbers"
    return r, None


def _lengths(r: dict) -> dict[str, int]:
    return {
        f"{side}.per_prompt.{name}": len(values)
        for side in SIDES
        for name, values in ((r.get(side) or {}).get("per_prompt") or {}).items()
    }


def _own_problem(r: dict) -> str | None:
    """What is wrong inside one record: per-prompt lengths, its eval vs its base_eval, an edited fingerprint."""
    for side in SIDES:
        ev = r.get(side)
        if ev is None:
            continue
        n = ev.get("n")
        for name, values in (ev.get("per_prompt") or {}).items():
            if isinstance(n, int) and len(values) != n:
                return f"{side}.per_prompt.{name} has {len(values)} values but {side}.n is {n}: the list was cut or padded"
        kept = ev.get("eval_fingerprint")
        if kept is not None and kept != eval_fingerprint(ev):
            return (f"its {side}'s evaluation fields no longer match the eval_fingerprint it recorded ({kept}): "
                    "they were edited after the evaluation")  # fmt: skip
    lengths = _lengths(r)
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{k} {v}" for k, v in lengths.items())
        return f"its per-prompt lists differ in length ({shown})"
    base = r.get("base_eval")
    if base is not None and eval_fingerprint(r["eval"]) != eval_fingerprint(base):
        return f"its eval and base_eval were evaluated differently ({_diff(r['eval'], base, 'base_eval')})"
    return None


def _diff(ev: dict, ref: dict, ref_name: str) -> str:
    a, b = _fields(ev), _fields(ref)
    out = []
    for k in FINGERPRINT_KEYS:
        if k == "sampling" and isinstance(a[k], dict) and isinstance(b[k], dict):
            out += [f"sampling.{s}={a[k].get(s)!r} ({ref_name}: {b[k].get(s)!r})"
                    for s in sorted(set(a[k]) | set(b[k])) if a[k].get(s) != b[k].get(s)]  # fmt: skip
        elif a[k] != b[k]:
            out.append(f"{k}={a[k]!r} ({ref_name}: {b[k]!r})")
    return "; ".join(out)


def _majority(values: dict[str, object]) -> object:
    """The most common value (on a tie, that of the first file in path order)."""
    counts = Counter(values.values())
    best = max(counts.values())
    return next(v for v in values.values() if counts[v] == best)


def _cross_problems(results: list[dict]) -> dict[str, str]:
    """Per file: how it differs from the others (evaluation fingerprint, per-prompt length, prompts)."""
    by_path = {r["_path"]: r for r in sorted(results, key=lambda r: r["_path"])}
    problems: dict[str, str] = {}
    if len(by_path) < 2:
        return problems
    prints = {p: eval_fingerprint(r["eval"]) for p, r in by_path.items()}
    ref = _majority(prints)
    ref_eval = next(by_path[p]["eval"] for p, f in prints.items() if f == ref)
    others = sum(f == ref for f in prints.values())
    for p, f in prints.items():
        if f != ref:
            problems[p] = (f"it was evaluated differently from the other {others} file(s) (evaluation fingerprint "
                           f"{f}, theirs {ref}: {_diff(by_path[p]['eval'], ref_eval, 'theirs')}), so its "
                           "per-prompt differences pair nothing")  # fmt: skip
    sizes = {
        p: len(((r["eval"].get("per_prompt") or {}).get("gold_reward")) or []) for p, r in by_path.items()
    }
    size = _majority(sizes)
    for p, s in sizes.items():
        if s != size and p not in problems:
            problems[p] = (f"eval.per_prompt.gold_reward has {s} values where the other files have {size}: "
                           "the list was cut, padded or is missing")  # fmt: skip
    shas = {
        f"{p}\0{side}": (r.get(side) or {}).get("prompts_sha") for p, r in by_path.items() for side in SIDES
    }
    shas = {k: v for k, v in shas.items() if v is not None}
    if shas:
        sha = _majority(shas)
        for k, v in shas.items():
            p, side = k.split("\0")
            if v != sha and p not in problems:
                problems[p] = (
                    f"its {side} ran on other prompts than the other files (prompts_sha {v}, theirs {sha})"
                )
    return problems


def screen_results(
    results: list[dict], unreadable: list[tuple[str, str]], skip_bad: bool = False
) -> tuple[list[dict], list[tuple[str, str]]]:
    """The results ``compare`` may pair, and the excluded (path, why). Without ``skip_bad`` a bad file
    raises ``ResultFileError``: one line naming it, what is wrong and the fix."""
    bad = [(str(p), why) for p, why in unreadable]
    ok = []
    for r in results:
        why = _own_problem(r)
        if why:
            bad.append((r["_path"], why))
        else:
            ok.append(r)
    cross = _cross_problems(ok)
    bad += [(p, why) for p, why in cross.items()]
    ok = [r for r in ok if r["_path"] not in cross]
    if bad and not skip_bad:
        path, why = bad[0]
        more = (
            f" ({len(bad) - 1} more bad file(s): {', '.join(p for p, _ in bad[1:])})" if len(bad) > 1 else ""
        )
        raise ResultFileError(f"{path}: {why}; {FIX}{more}")
    return ok, bad


def excluded_lines(bad: list[tuple[str, str]]) -> list[str]:
    """The report header's account of the files ``--skip-bad`` left out (nothing when none was)."""
    if not bad:
        return []
    head = f"**Excluded with --skip-bad: {len(bad)} result file(s)**, left out of every number below:"
    return [head, "", *[f"- `{p}`: {why}" for p, why in bad], ""]

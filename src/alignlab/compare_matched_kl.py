"""The report's "At matched KL" section and its verdict sentence (``alignlab.compare`` calls
``matched_kl_report``).

Two methods whose mean KLs differ by more than ``KL_RATIO`` are compared at equal compute in the main
table; here they are compared at matched KL as well. On every seed where method A has a frontier (its own
setting and its sweep points, at least two runs) and B ran at its own setting, A's gold gain is read off
that frontier at B's KL on the same seed by linear interpolation between the two neighbouring points, never
extrapolated, and B's gold gain is subtracted (``alignlab.stats_frontier``: the estimand, the delta-method
values and the interval). When B has a frontier too, B is read at A's KL as well (a second row). A read
needs B's KL inside A's swept range on every seed used; otherwise the row says "outside the swept range"
and names the seeds, rather than keep only the seeds that happened to fit. Holm's correction runs over
the rows that have a p-value.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from alignlab.compare_verdict import _pair_verdict
from alignlab.stats import format_p, holm, tost
from alignlab.stats_frontier import matched_gain, matched_read

KL_RATIO = 1.5
"""Pairs whose mean KLs (over seeds, own settings) differ by more than this factor get a matched-KL read."""


def _gain_kl(run: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-prompt gold gain over the run's base policy and per-prompt KL (a constant array of the mean KL
    when a record has no per-prompt KL: its weight is then treated as known)."""
    pp = (run.get("eval") or {}).get("per_prompt") or {}
    base = ((run.get("base_eval") or {}).get("per_prompt") or {}).get("gold_reward")
    if pp.get("gold_reward") is None or base is None or len(pp["gold_reward"]) != len(base):
        return None
    gain = np.asarray(pp["gold_reward"], float) - np.asarray(base, float)
    kl = pp.get("kl")
    if kl is None or len(kl) != gain.size:
        mean_kl = run["eval"].get("kl")
        if mean_kl is None or not math.isfinite(mean_kl):
            return None
        kl = np.full(gain.size, float(mean_kl))
    return gain, np.asarray(kl, float)


def frontiers(rows: list[dict], sweep: list[dict]) -> dict[str, dict]:
    """Per method with sweep points: seed -> its runs on that seed (own setting + sweep points), only seeds
    with at least two usable runs."""
    out: dict[str, dict] = {}
    for m in rows:
        if m.get("variant"):
            continue
        runs = list(m["runs"]) + [r for s in sweep if s["base_method"] == m["base_method"] for r in s["runs"]]
        by_seed: dict = {}
        for r in runs:
            if _gain_kl(r) is not None:
                by_seed.setdefault(r.get("seed"), []).append(r)
        seeds = {s: rs for s, rs in by_seed.items() if len(rs) >= 2}
        if seeds and any(r.get("variant") for rs in seeds.values() for r in rs):
            out[m["method"]] = seeds
    return out


def _read(reader: dict, front: dict, other: dict) -> dict:
    """Row: ``reader`` read off its frontier at ``other``'s KL, on every seed both have."""
    own = {r.get("seed"): r for r in other["runs"] if _gain_kl(r) is not None}
    seeds = sorted((s for s in front if s in own), key=lambda s: (s is None, s))
    row = {"a": reader["method"], "b": other["method"], "seeds": len(seeds), "seed_ids": seeds, "outside": []}
    reads = []
    for s in seeds:
        pts = [_gain_kl(r) for r in front[s]]
        g, k = _gain_kl(own[s])
        rd = matched_read([p[0] for p in pts], [p[1] for p in pts], g, k)
        if rd is None:
            kls = [float(p[1].mean()) for p in pts]
            row["outside"].append(s)
            row.setdefault("ranges", []).append((s, float(k.mean()), min(kls), max(kls)))
        else:
            reads.append(rd)
    if seeds and not row["outside"]:
        row.update(matched_gain(reads))
    return row


def matched_pairs(rows: list[dict], sweep: list[dict], margin: float) -> list[dict]:
    """Every pair of methods whose KLs differ by more than ``KL_RATIO``: one row per direction that has a
    frontier (``status`` "read" or "outside"), or one "no frontier" row; Holm over the read rows."""
    fronts = frontiers(rows, sweep)
    out = []
    for a, b in itertools.combinations([r for r in rows if r.get("gain")], 2):
        ka, kb = a["kl"][0], b["kl"][0]
        if not (ka and kb and math.isfinite(ka) and math.isfinite(kb) and ka > 0 and kb > 0):
            continue
        if max(ka, kb) <= KL_RATIO * min(ka, kb):
            continue
        found = [_read(x, fronts[x["method"]], y) for x, y in ((a, b), (b, a)) if x["method"] in fronts]
        found = [f for f in found if f["seeds"]]
        if not found:
            out.append({"a": a["method"], "b": b["method"], "status": "no frontier", "kl_a": ka, "kl_b": kb})
        for f in found:
            f.update(status="outside" if f["outside"] else "read", kl_a=ka, kl_b=kb, margin=margin)
            if f["status"] == "read":
                # equivalent only if it holds on the chord and at the top of its concave slack too
                f["equivalent"] = tost(f, margin) and tost({**f, "mean": f["mean"] + f["slack"]}, margin)
            out.append(f)
    tested = [o for o in out if o["status"] == "read"]
    for o, p in zip(tested, holm([o["p"] for o in tested])):
        o["p_holm"] = p
        o["p_holm_floor"] = o["p_floor"] and p <= o["p"] * len(tested)
    return out


def _seeds(ids: list) -> str:
    return ("seed " if len(ids) == 1 else "seeds ") + ", ".join(str(s) for s in ids)


def row_verdict(o: dict) -> str:
    """The row's word, in compare_verdict's terms with "at matched KL" added."""
    if o["status"] == "no frontier":
        return "no frontier to read (neither method swept)"
    if o["status"] == "outside":
        where = "; ".join(f"seed {s}: {k:.1f} vs {lo:.1f}–{hi:.1f}" for s, k, lo, hi in o["ranges"])
        return f"outside the swept range ({where})"
    word = _word(o)
    if word == "B > A on the chord only":
        return "inconclusive (B > A on the chord, within the concave slack)"
    return word if word == "inconclusive" else f"{word} at matched KL"


def _word(o: dict) -> str:
    """compare_verdict's word for a read row, except that "B > A" (the frontier's read behind) also needs
    the CI's upper end plus the concave slack below 0: the chord may sit that far below A's frontier."""
    word = _pair_verdict(o)
    if word == "B > A" and not o["ci_high"] + o["slack"] < 0:  # nan slack (two points): no bound either
        return "B > A on the chord only"
    return word


def _named(word: str, a: str, b: str) -> str:
    """'A > B' / 'B > A' with the methods' names."""
    return {"A > B": f"{a} > {b}", "B > A": f"{b} > {a}"}.get(word, word)


def _slack(x: float) -> str:
    return "unbounded (2 points)" if not math.isfinite(x) else f"+{x:.3f}"


def matched_table(found: list[dict]) -> str:
    lines = ["| read off its frontier (A) | at its own setting (B) | seeds | k: B's KL (nats) | A's gain at k | "
             "concave slack | B's gain | A − B at matched KL [95% CI] | p | p (Holm) | verdict |",
             "|" + "---|" * 11]  # fmt: skip
    for o in found:
        seeds = f"{o['seeds']} ({', '.join(map(str, o['seed_ids']))})" if "seed_ids" in o else "—"
        if o["status"] != "read":
            lines.append(f"| {o['a']} | {o['b']} | {seeds} |" + " — |" * 7 + f" {row_verdict(o)} |")
            continue
        mark = " **↑**" if o["ci_low"] > 0 else " **↓**" if o["ci_high"] < 0 else ""
        holm_p = format_p({"p": o["p_holm"], "p_floor": o.get("p_holm_floor")})
        lines.append(f"| {o['a']} | {o['b']} | {seeds} | {o['k']:.2f} | "
                     f"{o['read']:+.3f} | {_slack(o['slack'])} | {o['other']:+.3f} | {o['mean']:+.3f} [{o['ci_low']:+.3f}, {o['ci_high']:+.3f}]"
                     f"{mark} | {format_p(o)} | {holm_p} | {row_verdict(o)} |")  # fmt: skip
    return "\n".join(lines)


def _direction(o: dict) -> str:
    """What one row says, for the verdict sentence."""
    if o["status"] == "outside":
        return f"{o['b']}'s KL is outside {o['a']}'s swept range ({_seeds(o['outside'])})"
    word = _word(o)
    said = "inconclusive" if word == "inconclusive" else _named(word.split(" (")[0], o["a"], o["b"])
    if word == "B > A on the chord only":
        said = f"inconclusive ({o['b']} ahead on the chord, within {o['a']}'s concave slack)"
    said = f"{o['a']} ≈ {o['b']} (TOST ±{o['margin']:g})" if word.startswith("equivalent") else said
    one = ", 1 seed: its CI covers prompts, not training runs" if o["seeds"] == 1 else ""
    return f"{said} with {o['a']} read at {o['b']}'s KL ({o['k']:.1f} nats{one})"


def matched_verdict(found: list[dict], pairs: list[dict]) -> str:
    """One clause per pair: its equal-compute verdict (the between-methods table) beside the matched one;
    the pairs with no frontier to read together at the end."""
    said, unswept, seen = [], [], []
    for o in found:
        key = frozenset((o["a"], o["b"]))
        if key in seen:
            continue
        seen.append(key)
        p = next((p for p in pairs if {p["a"], p["b"]} == key), None)
        eq = "not compared" if p is None else _named(_pair_verdict(p), p["a"], p["b"])
        rows = [r for r in found if frozenset((r["a"], r["b"])) == key]
        if rows[0]["status"] == "no frontier":
            unswept.append(f"{o['a']} vs {o['b']} ({eq} at equal compute)")
        else:
            said.append(f"{o['a']} vs {o['b']}: {eq} at equal compute; at matched KL "
                        + "; ".join(_direction(r) for r in rows))  # fmt: skip
    if unswept:
        said.append(f"no matched-KL verdict where neither method was swept: {', '.join(unswept)}")
    return (f"At matched KL (pairs whose KLs differ by more than {KL_RATIO:g}x; Holm over the matched reads): "
            + ". ".join(said) + ".")  # fmt: skip


def matched_kl_report(
    rows: list[dict], sweep: list[dict], pairs: list[dict], margin: float
) -> tuple[str, list[str]]:
    """(the verdict sentence, the report's "At matched KL" section as lines); both empty when no pair's KLs
    differ by more than ``KL_RATIO``."""
    found = matched_pairs(rows, sweep, margin)
    if not found:
        return "", []
    text = (
        f"Each pair of methods whose mean KLs differ by more than {KL_RATIO:g}x, compared at matched KL. "
        "**Estimand**: the mean over training seeds (with one seed: that training run's value) of A's gold "
        "gain over the base policy read at B's KL on the same seed, minus B's, on the population of prompts; "
        "A's read is the linear interpolation between "
        "its two swept runs around that KL on that seed (the chord of its frontier: where the frontier is "
        "concave the chord lies a little below it, which favours B), never an extrapolation. **Interval**: per "
        "prompt, the interpolated difference linearised in the KL means that set the weights (delta method), "
        "then the same intervals as above: with several seeds a crossed seeds x prompts t interval "
        "(Satterthwaite df), covering training runs and prompts; with one seed a BCa bootstrap over prompts, "
        "which covers the prompts only. **Concave slack**: how far above the chord a concave frontier through "
        "A's points could lie at k (the neighbouring segments' lines extended; unbounded with two points): "
        "A > B read on the chord is conservative for a concave frontier, so it stands; B > A must clear the "
        "slack too (CI upper end + slack < 0), else it is inconclusive, and equivalence must hold at both "
        "ends. A read needs B's KL inside A's swept range on every seed; "
        "p-values are Holm-adjusted over this table's reads; equivalence only by TOST "
        f"at ±{margin:g} gold."
    )
    fronts = frontiers(rows, sweep)
    if fronts:
        text += " Frontiers: " + "; ".join(
            f"{m} ({', '.join(sorted({k for rs in f.values() for r in rs for k in (r.get('variant') or {})}))} "
            f"on {_seeds(sorted(f, key=lambda s: (s is None, s)))})" for m, f in sorted(fronts.items())
        ) + "."  # fmt: skip
    lines = ["## At matched KL", "", text, "", matched_table(found), ""]
    return matched_verdict(found, pairs), lines

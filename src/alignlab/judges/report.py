"""The labelling report: how usable a judge's labels are, measured, next to every labelled dataset.

* ``pairs``, ``invalid`` (unparseable answers: never turned into verdicts), ``ties``, ``decided``.
* ``position_bias_rate``: among pairs asked in both orders with a decided single-order verdict in each,
  how often the verdict flips when the order is swapped (0 = order never matters, 1 = the judge always
  picks the same position). ``first_position_rate``: share of single-order answers that picked the
  response shown first.
* ``gold_accuracy`` and ``gold_kappa`` (Cohen's κ): agreement of the decided verdicts with the gold
  ordering, over pairs where gold is not a tie; ``gold_accuracy_single_order`` is the same for the
  first order alone, to show what averaging both orders bought.
* ``gold_buckets``: the same agreement and κ by |Δgold| (< 0.2, 0.2–0.5, ≥ 0.5), and
  ``gold_accuracy_decidable`` over the pairs with |Δgold| ≥ 0.2 (where the gold ordering is clear);
* ``reliability``: the judge's confidence (``pair_confidence``) in bins against the observed agreement
  with gold; ``kept_vs_agreement``: the agreement and the share of pairs kept at each
  ``judge.min_confidence`` threshold, so the trade is visible before choosing one.
* ``unsure``: ties made by ``judge.min_confidence`` (counted among ``ties``).
* ``length_bias`` (given the texts): how often the judge and gold prefer the longer completion, and the
  agreement by length difference (``alignlab.judges.length_bias``).
* ``calls``, ``cache_hits``, ``seconds`` and the other counters the judge reports.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from pathlib import Path

from alignlab.judges.base import pair_confidence
from alignlab.judges.length_bias import format_length_bias, length_bias
from alignlab.utils.io import write_json

GAP_BUCKETS = ((0.0, 0.2), (0.2, 0.5), (0.5, math.inf))
"""|Δgold| buckets of the agreement table: [lo, hi)."""
DECIDABLE_GAP = 0.2
CONFIDENCE_BINS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0 + 1e-9)
KEEP_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
RECORD_KEYS = (
    "gold_accuracy",
    "gold_kappa",
    "gold_accuracy_decidable",
    "gold_kappa_decidable",
    "length_bias",
    "question",
)
"""What a pipeline record keeps of its labelling report (``label_audit``): what the comparison reports."""


def cohen_kappa(a: Sequence, b: Sequence) -> float | None:
    """Cohen's κ of two equally long label sequences; None when undefined (fewer than one item, or chance
    agreement is 1 because both raters always give the same single label)."""
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa: {len(a)} vs {len(b)} labels")
    n = len(a)
    if n == 0:
        return None
    labels = set(a) | set(b)
    p_o = sum(x == y for x, y in zip(a, b)) / n
    p_e = sum((sum(x == c for x in a) / n) * (sum(y == c for y in b) / n) for c in labels)
    if math.isclose(p_e, 1.0):
        return None
    return (p_o - p_e) / (1 - p_e)


def _single(p: float | None) -> str | None:
    if p is None or p == 0.5:
        return None
    return "first" if p > 0.5 else "second"


def _rate(num: int, den: int) -> float | None:
    return None if den == 0 else num / den


def labelling_report(
    results: Sequence[dict],
    gold_first: Sequence[float] | None = None,
    gold_second: Sequence[float] | None = None,
    stats: dict | None = None,
    mode: str = "pairwise",
    texts: tuple[Sequence[str], Sequence[str]] | None = None,
) -> dict:
    """Measure a judge's labels.

    Args:
        results: per pair, a dict with ``verdict`` (first/second/tie/invalid), ``p_forward`` and ``p_backward``
            (P(first ≻ second) from each order alone; pointwise: P(yes) of each text).
        gold_first: gold score of each pair's first completion (None when the task has no gold reward).
        gold_second: gold score of each pair's second completion.
        stats: the judge's counters (calls, cache hits, seconds, ...), copied into the report.
        mode: ``pairwise`` (order metrics measured) or ``pointwise`` (no order, so no position bias).
        texts: (first completions, second completions) of the pairs, for the length bias (with gold only).
    """
    verdicts = [r["verdict"] for r in results]
    rep: dict = {
        "pairs": len(results),
        "invalid": verdicts.count("invalid"),
        "ties": verdicts.count("tie"),
        "decided": verdicts.count("first") + verdicts.count("second"),
        "mode": mode,
    }
    # position bias: both single-order verdicts decided, do they agree?
    flips = both = picked_a = answered = 0
    if mode == "pairwise":
        for r in results:
            f, b = _single(r.get("p_forward")), _single(r.get("p_backward"))
            for v, a_is in ((f, "first"), (b, "second")):  # in the swapped order option A is the second text
                if v is not None:
                    answered += 1
                    picked_a += v == a_is
            if f is not None and b is not None:
                both += 1
                flips += f != b
    rep["unsure"] = sum(1 for r in results if r.get("unsure"))
    rep["position_bias_rate"] = _rate(flips, both)
    rep["position_bias_pairs"] = both
    rep["first_position_rate"] = _rate(picked_a, answered)
    if gold_first is not None and gold_second is not None:
        if not (len(gold_first) == len(gold_second) == len(results)):
            raise ValueError("gold scores and judge results differ in length")
        gold = ["first" if x > y else "second" if x < y else "tie" for x, y in zip(gold_first, gold_second)]
        idx = [i for i, g in enumerate(gold) if g != "tie" and verdicts[i] in ("first", "second")]
        judge_l, gold_l = [verdicts[i] for i in idx], [gold[i] for i in idx]
        rep["gold_ties"] = gold.count("tie")
        rep["gold_compared"] = len(idx)
        rep["gold_accuracy"] = _rate(sum(x == y for x, y in zip(judge_l, gold_l)), len(idx))
        rep["gold_kappa"] = cohen_kappa(judge_l, gold_l)
        gap = [abs(gold_first[i] - gold_second[i]) for i in range(len(results))]
        rep.update(_audit(results, verdicts, gold, gap, mode))
        if mode == "pairwise":
            single = [(_single(results[i].get("p_forward")), gold[i]) for i in range(len(results))]
            single = [(v, g) for v, g in single if v is not None and g != "tie"]
            rep["gold_accuracy_single_order"] = _rate(sum(v == g for v, g in single), len(single))
        if texts is not None:
            rep["length_bias"] = length_bias(texts[0], texts[1], verdicts, gold_first, gold_second)
    rep.update(stats or {})
    return rep


def _agreement(pairs: list[tuple[str, str]]) -> dict:
    """n, accuracy and κ of (judge verdict, gold verdict) pairs."""
    return {
        "n": len(pairs),
        "accuracy": _rate(sum(v == g for v, g in pairs), len(pairs)),
        "kappa": cohen_kappa([v for v, _ in pairs], [g for _, g in pairs]),
    }


def _audit(results: Sequence[dict], verdicts: list, gold: list, gap: list, mode: str) -> dict:
    """Agreement by |Δgold| bucket, the reliability table and agreement against the share kept."""
    decided = [i for i, g in enumerate(gold) if g != "tie" and verdicts[i] in ("first", "second")]
    buckets = {}
    for lo, hi in GAP_BUCKETS:
        name = f"{lo:g}-{hi:g}" if math.isfinite(hi) else f">={lo:g}"
        buckets[name] = _agreement([(verdicts[i], gold[i]) for i in decided if lo <= gap[i] < hi])
    clear = _agreement([(verdicts[i], gold[i]) for i in decided if gap[i] >= DECIDABLE_GAP])
    # every pair the judge answered (unsure ties included), with its confidence and the side it leans to
    leaning = []
    for i, r in enumerate(results):
        p = r.get("p_first")
        if gold[i] == "tie" or p is None or verdicts[i] == "invalid" or p == 0.5:
            continue
        leaning.append((pair_confidence(r, mode), "first" if p > 0.5 else "second", gold[i], gap[i]))
    reliability = []
    for lo, hi in itertools.pairwise(CONFIDENCE_BINS):
        rows = [(c, v, g) for c, v, g, _ in leaning if lo <= c < hi]
        reliability.append(
            {
                "bin": f"{lo:.1f}-{min(hi, 1.0):.1f}",
                "n": len(rows),
                "mean_confidence": _rate(sum(c for c, _, _ in rows), len(rows)),
                "agreement": _rate(sum(v == g for _, v, g in rows), len(rows)),
            }
        )
    kept = []
    for t in KEEP_THRESHOLDS:
        rows = [(v, g, d) for c, v, g, d in leaning if c >= t]
        wide = [(v, g) for v, g, d in rows if d >= DECIDABLE_GAP]
        n_wide = sum(1 for *_, d in leaning if d >= DECIDABLE_GAP)
        kept.append(
            {
                "min_confidence": t,
                "kept": _rate(len(rows), len(leaning)),
                "agreement": _rate(sum(v == g for v, g, _ in rows), len(rows)),
                "kept_decidable": _rate(len(wide), n_wide),
                "agreement_decidable": _rate(sum(v == g for v, g in wide), len(wide)),
            }
        )
    return {
        "gold_buckets": buckets,
        "gold_accuracy_decidable": clear["accuracy"],
        "gold_kappa_decidable": clear["kappa"],
        "gold_compared_decidable": clear["n"],
        "reliability": reliability,
        "kept_vs_agreement": kept,
    }


def judge_question(judge) -> str | None:
    """What a bound judge is asked about each pair (pairwise: its criterion) or each text (pointwise: its
    yes/no question); None for a judge asked nothing (the gold oracle)."""
    t = getattr(judge, "template", None)
    if t is None:
        return None
    if getattr(t, "constitution", None) is not None:
        c = t.constitution
        return f"a constitution of {len(c.principles)} principle(s) ({c.mode}), e.g. {c.principles[0]!r}"
    if getattr(judge, "mode", "pairwise") == "pointwise":
        return t.question or t.rubric
    return t.rubric


def report_path(dataset_path: str | os.PathLike) -> Path:
    """``pairs.jsonl`` -> ``pairs.report.json`` beside it."""
    p = Path(dataset_path)
    return p.with_name(p.name.split(".")[0] + ".report.json")


def write_report(report: dict, dataset_path: str | os.PathLike) -> Path:
    """Write the report atomically next to the labelled dataset; returns its path."""
    return write_json(report_path(dataset_path), report)


def format_report(report: dict) -> str:
    """The report as a few readable lines for the log."""

    def f(x):
        if x is None:
            return "n/a"
        return f"{x:.3f}" if isinstance(x, float) else str(x)

    lines = [
        f"[label report] pairs={report['pairs']} decided={report['decided']} ties={report['ties']} "
        f"invalid={report['invalid']} unsure={report.get('unsure', 0)} mode={report.get('mode')}",
        f"  position bias: flip rate={f(report.get('position_bias_rate'))} over "
        f"{report.get('position_bias_pairs', 0)} pairs; first-position rate={f(report.get('first_position_rate'))}",
    ]
    if "gold_accuracy" in report:
        lines.append(
            f"  agreement with gold: accuracy={f(report['gold_accuracy'])} kappa={f(report['gold_kappa'])} "
            f"over {report['gold_compared']} pairs (gold ties {report['gold_ties']}); single order "
            f"accuracy={f(report.get('gold_accuracy_single_order'))}"
        )
    if "gold_buckets" in report:
        lines.append(
            f"  |Δgold| >= {DECIDABLE_GAP:g}: accuracy={f(report['gold_accuracy_decidable'])} "
            f"kappa={f(report['gold_kappa_decidable'])} over {report['gold_compared_decidable']} pairs; by bucket: "
            + ", ".join(
                f"{k}: {f(b['accuracy'])} (κ {f(b['kappa'])}, n={b['n']})"
                for k, b in report["gold_buckets"].items()
            )
        )
        lines.append(
            "  reliability (confidence bin: agreement, n): "
            + ", ".join(f"{b['bin']}: {f(b['agreement'])} ({b['n']})" for b in report["reliability"])
        )
        lines.append(
            "  min_confidence -> kept, agreement: "
            + ", ".join(
                f"{k['min_confidence']:g}: {f(k['kept'])}, {f(k['agreement'])}"
                for k in report["kept_vs_agreement"]
            )
        )
    if "length_bias" in report:
        lines.append(format_length_bias(report["length_bias"]))
    keys = ("calls", "queries", "cache_hits", "cache_misses", "seconds", "prompt_tokens", "completion_tokens")
    lines.append("  cost: " + " ".join(f"{k}={f(report[k])}" for k in keys if k in report))
    return "\n".join(lines)

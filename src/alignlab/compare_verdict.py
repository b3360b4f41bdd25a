"""The report's verdict: the paragraph ``alignlab.compare`` writes from its numbers, and each pair's word.

Wording follows the tests, not the hopes: "A > B" only when Holm-significant, "equivalent" only when a
TOST passed (``alignlab.stats.tost``), "inconclusive" otherwise; a CI that contains 0 is never "no gain".
"""

from __future__ import annotations

import math

import numpy as np

ALPHA = 0.05


def _pair_verdict(p: dict) -> str:
    """A > B / B > A when Holm-significant; "equivalent (±m)" when TOST passed; else "inconclusive"."""
    if p["p_holm"] < ALPHA:
        return "A > B" if p["mean"] > 0 else "B > A"
    if p.get("equivalent"):
        return f"equivalent (±{p['margin']:g})"
    return "inconclusive"


def verdict(rows: list[dict], pairs: list[dict]) -> str:
    """A short paragraph made from the numbers: who beat base, who beat whom, what the run cannot resolve."""
    up = [r["method"] for r in rows if r.get("gain") and r["gain"]["ci_low"] > 0]
    down = [r["method"] for r in rows if r.get("gain") and r["gain"]["ci_high"] < 0]
    flat = [r["method"] for r in rows if r.get("gain") and r["method"] not in up + down]
    out = []
    out.append(
        ("Beat the base policy (paired 95% CI above 0): " + ", ".join(up) + ". ") if up
        else "No method beat the base policy with a paired 95% CI above 0. "
    )  # fmt: skip
    if down:
        out.append("Below the base policy: " + ", ".join(down) + ". ")
    if flat:
        out.append("Inconclusive against the base policy at this size (a CI that contains 0 is not evidence of no "
                   "gain): " + ", ".join(flat) + ". ")  # fmt: skip
    sig = [p for p in pairs if p["p_holm"] < ALPHA]
    if sig:
        wins = [f"{p['a']} > {p['b']}" if p["mean"] > 0 else f"{p['b']} > {p['a']}" for p in sig]
        out.append("Between methods (Holm-adjusted p < 0.05): " + "; ".join(wins) + ". ")
    elif pairs:
        out.append(
            f"No difference between two methods is significant after Holm's correction ({len(pairs)} pairs). "
        )
    equiv = [p for p in pairs if p["p_holm"] >= ALPHA and p.get("equivalent")]
    if equiv:
        out.append("Equivalent within ±" + f"{equiv[0]['margin']:g} gold reward (TOST, 90% CI inside the margin): "
                   + "; ".join(f"{p['a']} ≈ {p['b']}" for p in equiv) + ". ")  # fmt: skip
    rest = len(pairs) - len(sig) - len(equiv)
    if rest:
        out.append(f"{rest} pair(s) are inconclusive: neither different (Holm) nor shown equivalent (TOST), "
                   "so the data do not say whether those methods are on par. ")  # fmt: skip
    single = [p for p in pairs if p.get("seeds") == 1]
    if single:
        out.append(f"{'Every pair' if len(single) == len(pairs) else f'{len(single)} of the pairs'} rest(s) on one "
                   "training seed: those CIs cover the held-out prompts, not the spread between training runs. ")  # fmt: skip
    over = [r["method"] for r in rows if r.get("gain") and r.get("second_gain") and r["gain"]["ci_low"] > 0
            and r["second_gain"]["ci_high"] < r["gain"]["ci_low"] / 2]  # fmt: skip
    if over:
        out.append("Gold gains the second scorer shares less than half of (a lexicon-pleasing signature): "
                   + ", ".join(over) + ". ")  # fmt: skip
    kls = [r["kl"][0] for r in rows if r.get("kl") and r["kl"][0] is not None and math.isfinite(r["kl"][0])]
    if len(kls) > 1 and min(kls) > 0 and max(kls) > 2 * min(kls):
        out.append(f"The methods spent very different KL budgets ({min(kls):.1f} to {max(kls):.1f} nats per completion): "
                   "these are gains at equal compute, not at equal KL; a difference between two methods whose KLs "
                   "differ by more than 1.5x should be read at matched KL on the frontier (the sweep section). ")  # fmt: skip
    mdes = [r["mde"] for r in rows if r.get("mde") is not None and math.isfinite(r["mde"])]
    if mdes:
        out.append(f"With this run's size the minimum detectable gain over base (80% power, α = 0.05) is about "
                   f"{float(np.median(mdes)):.3f} gold reward (median over methods).")  # fmt: skip
    return "".join(out).strip()


def audit_cell(runs: list[dict]) -> str:
    """The labeller's agreement with gold, over seeds and per seed (each seed labels its own pairs)."""
    audits = [(r.get("seed"), r.get("label_audit") or {}) for r in runs]
    if runs[0].get("labeller") in (None, "gold"):
        return ""
    acc = [(s, a["gold_accuracy"], a.get("gold_kappa", a.get("cohen_kappa"))) for s, a in audits
           if a.get("gold_accuracy") is not None]  # fmt: skip
    if not acc:
        return "n/a"
    kappas = [k for _, _, k in acc if k is not None]
    text = f"{np.mean([a for _, a, _ in acc]):.0%}" + (f" (κ {np.mean(kappas):+.2f})" if kappas else "")
    if len(acc) > 1:
        text += "; per seed " + ", ".join(f"s{s} {a:.0%}" for s, a, _ in sorted(acc, key=lambda x: str(x[0])))
    return text


def replicate_note(results: list[dict]) -> str:
    """What the intervals over seeds cover, read off the runs: whether each seed drew its own preference
    data (its labeller audit differs between seeds) or all seeds share one draw (identical audits)."""
    import json

    by_labeller: dict = {}
    for r in results:
        if r.get("labeller") is None or not r.get("label_audit") or r.get("variant"):
            continue
        by_labeller.setdefault(r["labeller"], {})[r.get("seed")] = json.dumps(
            r["label_audit"], sort_keys=True
        )
    multi = {k: v for k, v in by_labeller.items() if len(v) > 1}
    if not multi:
        return ""
    if all(len(set(v.values())) == len(v) for v in multi.values()):
        return (
            "**What the intervals cover**: each seed drew its own preference pairs and labels (the labellers' "
            "audits differ between seeds) and trained its own policies, so an interval over seeds covers "
            "the data draw, the labels and training; the held-out prompts and the evaluation's sampling seeds "
            "are common to every method and seed (a paired design), so it covers prompts as a sample of the "
            "test split, not other evaluation sets."
        )
    if all(len(set(v.values())) == 1 for v in multi.values()):
        return (
            "**What the intervals cover**: every seed labelled the same preference pairs (identical labeller "
            "audits on all seeds): an interval over seeds covers training randomness and prompts, "
            "conditional on that one draw of the data and labels."
        )
    return (
        "**What the intervals cover**: some seeds share a draw of the preference data and some do not (the "
        "labellers' audits repeat on some seeds): an interval over seeds partly conditions on the data draw."
    )


def _task_of(r: dict) -> str:
    return str((r.get("eval") or {}).get("task") or r.get("task"))


def task_lines(results: list[dict]) -> list[str]:
    """Per task: its name, its gold and second scorers, and each labeller's question. Records made before
    these were recorded: the scorers as the task's code describes them today (said so), the question as
    not recorded."""
    from alignlab.tasks.describe import scorers_of_task_name

    lines = []
    for task in sorted({_task_of(r) for r in results}):
        runs = [r for r in results if _task_of(r) == task]
        named = next((r for r in runs if "gold_scorer" in r), None)
        sc = (
            {k: named.get(k) for k in ("gold_scorer", "second_scorer")}
            if named
            else scorers_of_task_name(task)
        )
        text = f"Task: **{task}**"
        if sc["gold_scorer"]:
            text += f"; gold scorer: {sc['gold_scorer']}; second scorer: {sc['second_scorer'] or 'none'}"
            if named is None:
                text += " (as the task's code describes them today: these runs predate recording them)"
        lines += [text + ".", ""]
        asked: dict = {}
        for r in sorted(runs, key=lambda r: str(r.get("seed"))):
            if r.get("labeller") not in (None, "gold"):
                asked.setdefault(r["labeller"], set()).add((r.get("label_audit") or {}).get("question"))
        for labeller, questions in sorted(asked.items()):
            known = sorted(" ".join(q.split()) for q in questions if q)  # one line in the report
            what = "; ".join(f"“{q}”" for q in known) if known else "not recorded (runs made before it was)"
            lines += [f"Labeller **{labeller}** was asked: {what}.", ""]
    return lines


def length_bias_section(results: list[dict]) -> list[str]:
    """The labellers' length bias per task (``alignlab.judges.length_bias``): each distinct label set
    counted once (methods and seeds that share one are the same labels), counts pooled over the sets."""
    import json

    from alignlab.judges.length_bias import format_share, pool

    sets: dict = {}
    for r in results:
        lb = (r.get("label_audit") or {}).get("length_bias")
        if r.get("labeller") is not None and lb:
            sets.setdefault((_task_of(r), r["labeller"]), {})[json.dumps(lb, sort_keys=True)] = lb
    if not sets:
        return []
    first = next(iter(next(iter(sets.values())).values()))
    gaps = list(first["agreement_by_gap"])
    unit = first["unit"]
    lines = [
        "## Labeller length bias", "",
        f"Judges are known to prefer longer answers. Lengths in {unit}. *Longer chosen*: among the decided pairs "
        "whose completions differ in length (gold not tied), the share where the labeller's verdict, and the "
        "gold ordering, prefers the longer one; a labeller above gold adds a length preference the gold reward "
        f"does not have. Then the labeller's agreement with gold by |Δ{unit}|. 95% Wilson intervals; each "
        "distinct label set counted once, pooled over seeds.", "",
        "| task | labeller | label sets | longer chosen by labeller | longer chosen by gold | "
        + " | ".join(f"agreement, length gap {g} {unit}" for g in gaps) + " |",
        "|" + "---|" * (5 + len(gaps)),
    ]  # fmt: skip
    for (task, labeller), by_json in sorted(sets.items()):
        p = pool(list(by_json.values()))
        cells = [format_share(p["judge_longer"]), format_share(p["gold_longer"])]
        cells += [format_share(p["agreement_by_gap"].get(g)) for g in gaps]
        lines.append(f"| {task} | {labeller} | {len(by_json)} | " + " | ".join(cells) + " |")
    return [*lines, ""]

"""The comparison report: ``python -m alignlab.compare [roots...] [--out DIR]``.

Reads finished pipeline runs (``result.json``, written by ``alignlab.pipeline``) under the given roots and
writes ``report.md``: per method the gold reward, the **paired gain over the base policy** (per-prompt
differences on the same held-out prompts; 95% CI over seeds x prompts, alignlab.stats.crossed_se), the second scorer's
gain beside it (over-optimisation shows as a gold gain the second scorer does not share), KL, labels and
judge calls, the labeller's audit for judge-labelled methods; every pair of methods' paired difference
with Holm-adjusted p-values; the minimum detectable effect of the run's size; a verdict paragraph made
from those numbers; example completions; ``frontier.png`` and ``curves.png`` (``alignlab.compare_plots``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from alignlab.compare_format import examples, label_of, provenance
from alignlab.compare_matched_kl import matched_kl_report
from alignlab.compare_verdict import _pair_verdict, audit_cell, replicate_note, verdict
from alignlab.report_checks import excluded_lines, read_result, screen_results
from alignlab.stats import (
    format_p,
    holm,
    mde_from_se,
    minimum_detectable_effect,
    paired_gain,
    t_mean_ci,
    tost,
)
from alignlab.utils.errors import cli_app
from alignlab.utils.io import write_text

EQUIVALENCE_MARGIN = 0.1
"""Default TOST margin (gold reward): two methods are called equivalent only when the 90% CI of their paired
difference lies inside ±margin; otherwise a non-significant difference is "inconclusive"."""


def find_results(roots: list[Path], bad: list | None = None) -> list[dict]:
    """Every ``result.json`` under ``roots`` (a run dir or any parent), newest per (method, seed, variant);
    a result file that cannot be read goes into ``bad`` as (path, why) (``alignlab.report_checks``)."""
    found: dict[tuple, dict] = {}
    for root in roots:
        paths = [*Path(root).rglob("result.json"), *Path(root).rglob("*-s[0-9]*.json")]  # + published records
        for path in sorted(set(paths)):
            r, why = read_result(path)
            if why and bad is not None:
                bad.append((path, why))
            elif why:
                print(f"compare: skipping {path}: {why}", file=sys.stderr)
            if r is None:
                continue
            r["_path"] = str(path)
            key = (r["method"], r.get("seed"), json.dumps(r.get("variant", {}), sort_keys=True))
            if key not in found or path.stat().st_mtime >= Path(found[key]["_path"]).stat().st_mtime:
                found[key] = r
    return list(found.values())


def mean_ci(values: list[float], within: list[tuple[float, float]] | None = None) -> tuple[float, float]:
    """Mean and 95% CI half-width over seeds (Student t, scipy); one seed falls back to its own CI."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    m, half = t_mean_ci(v)
    if len(v) == 1 and within and within[0][0] is not None:
        lo, hi = within[0]
        return float(v[0]), float((hi - lo) / 2)
    return m, half


def _per_prompt(ev: dict | None, name: str) -> np.ndarray | None:
    values = ((ev or {}).get("per_prompt") or {}).get(name)
    return None if values is None else np.asarray(values, dtype=float)


def paired_matrix(runs: list[dict], name: str, against=None) -> np.ndarray | None:
    """Seeds x prompts of per-prompt differences: each run minus its own base policy (``against`` None)
    or minus the run of ``against`` (a dict seed -> run) with the same seed."""
    rows = []
    for r in sorted(runs, key=lambda r: r.get("seed") or 0):
        a = _per_prompt(r["eval"], name)
        other = r.get("base_eval") if against is None else (against.get(r.get("seed")) or {}).get("eval")
        b = _per_prompt(other, name)
        if a is None or b is None or a.shape != b.shape:
            continue
        rows.append(a - b)
    return np.stack(rows) if rows else None


def summarise(results: list[dict]) -> list[dict]:
    """One row per method (or sweep point): means over seeds and paired gains over the base policy."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        groups[label_of(r)].append(r)
    rows = []
    for label, rs in sorted(groups.items()):
        ev = [r["eval"] for r in rs]

        def stat(name: str, ev=ev) -> tuple[float, float]:
            return mean_ci(
                [e.get(name) for e in ev], [(e.get(f"{name}_ci_low"), e.get(f"{name}_ci_high")) for e in ev]
            )

        row = {
            "method": label, "base_method": rs[0]["method"], "runs": rs, "seeds": len(rs),
            "labeller": rs[0].get("labeller"), "variant": rs[0].get("variant") or {},
            "gold_reward": stat("gold_reward"), "second_reward": stat("second_reward"), "kl": stat("kl"),
            "win_rate": stat("win_rate"),
            "labels": int(np.mean([r.get("labels_used", 0) or 0 for r in rs])),
            "judge_calls": int(np.mean([r.get("judge_calls", 0) or 0 for r in rs])),
            "wall_time_s": float(np.mean([r.get("wall_time_s", 0.0) or 0.0 for r in rs])),
            "audit": rs[0].get("label_audit") or {}, "tuned": rs[0].get("tuned"),
        }  # fmt: skip
        for name, key in (
            ("gold_reward", "gain"),
            ("second_reward", "second_gain"),
            ("third_reward", "third_gain"),
        ):
            d = paired_matrix(rs, name)
            row[key] = None if d is None else paired_gain(d)
            if key == "gain" and d is not None:  # what a run of this size could have detected
                if d.shape[0] == 1:
                    row["mde"] = minimum_detectable_effect(float(d[0].std(ddof=1)), d.shape[1])
                else:  # from the crossed design's standard error and Satterthwaite df (alignlab.stats)
                    row["mde"] = mde_from_se(row["gain"]["se"], row["gain"]["df"])
        rows.append(row)
    return rows


def split_sweeps(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """The comparison's methods, and the sweep points: rows with a variant (``variant.algo.beta=0.3``) of a
    method that also ran at its own settings. Those are the frontier, reported apart and kept out of the
    between-method tests (a sweep point is the same method again, usually on one seed). A variant whose
    method has no row of its own is a method of the comparison, unless it is ``tuned`` and others are not."""
    own = {r["base_method"] for r in rows if not r.get("variant")}
    mixed = any(not r.get("tuned") for r in rows if not (r.get("variant") and r["base_method"] in own))
    apart = [r for r in rows if r.get("tuned")] if mixed else []  # never tested with untuned ones
    sweep = [r for r in rows if r.get("variant") and (r["base_method"] in own or r in apart)]
    return [r for r in rows if r not in sweep], sweep


def frontier_rows(methods: list[dict], sweep: list[dict]) -> list[dict]:
    """Per swept method: its own setting on the seeds the sweep ran, then each sweep point, with the paired
    difference from the own setting on the same seeds and prompts (unadjusted: these are not verdicts)."""
    out = []
    absent = {s["base_method"] for s in sweep} - {m["base_method"] for m in methods}  # tuned, no default run
    for m in [*methods, *({"base_method": b, "runs": []} for b in sorted(absent))]:
        points = [s for s in sweep if s["base_method"] == m["base_method"]]
        if not points:
            continue
        seeds = {r.get("seed") for p in points for r in p["runs"]}
        own_runs = [r for r in m["runs"] if r.get("seed") in seeds]
        d = paired_matrix(own_runs, "gold_reward")
        kl = mean_ci([r["eval"].get("kl") for r in own_runs],
                     [(r["eval"].get("kl_ci_low"), r["eval"].get("kl_ci_high")) for r in own_runs])  # fmt: skip
        out.append({"method": m["base_method"], "setting": "its own", "seeds": len(own_runs),
                    "gain": None if d is None else paired_gain(d), "kl": kl, "vs_own": None})  # fmt: skip
        against = {r.get("seed"): r for r in own_runs}
        for p in points:
            d_own = paired_matrix(p["runs"], "gold_reward", against=against)
            tag = "tuned: " if p.get("tuned") else ""
            setting = tag + ", ".join(f"{k.split('.')[-1]}={v}" for k, v in sorted(p["variant"].items()))
            out.append({"method": m["base_method"], "setting": setting, "seeds": p["seeds"], "gain": p.get("gain"),
                        "kl": p["kl"], "vs_own": None if d_own is None else paired_gain(d_own)})  # fmt: skip
    return out


def frontier_table(frontier: list[dict]) -> str:
    lines = ["| method | setting | seeds | paired gain over base [95% CI] | KL to ref | − its own setting, "
             "same seeds [95% CI] | p (unadjusted) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for f in frontier:
        vs = f["vs_own"]
        diff, p = ("—", "—") if vs is None else (_ci(vs), format_p(vs))
        lines.append(f"| {f['method']} | {f['setting']} | {f['seeds']} | {_ci(f['gain'])} | {_fmt(f['kl'])} | "
                     f"{diff} | {p} |")  # fmt: skip
    return "\n".join(lines)


def pairwise(rows: list[dict], margin: float = EQUIVALENCE_MARGIN) -> list[dict]:
    """The paired difference in gold reward of every pair of rows (matched seeds, same prompts), with
    Holm-adjusted p-values over all pairs and a TOST equivalence test at ``margin`` (``equivalent``)."""
    out = []
    for a, b in itertools.combinations(rows, 2):
        d = paired_matrix(a["runs"], "gold_reward", against={r.get("seed"): r for r in b["runs"]})
        if d is not None:
            g = paired_gain(d)
            out.append(
                {"a": a["method"], "b": b["method"], **g, "equivalent": tost(g, margin), "margin": margin}
            )
    for o, p in zip(out, holm([o["p"] for o in out])):
        o["p_holm"] = p
        o["p_holm_floor"] = o["p_floor"] and p <= o["p"] * len(out)  # Holm of a floored p is itself a bound
    return out


def _ci(g: dict | None, digits: int = 3) -> str:
    if not g:
        return "n/a"
    mark = " **↑**" if g["ci_low"] > 0 else " **↓**" if g["ci_high"] < 0 else ""
    return f"{g['mean']:+.{digits}f} [{g['ci_low']:+.{digits}f}, {g['ci_high']:+.{digits}f}]{mark}"


def _fmt(pair: tuple[float, float], digits: int = 3) -> str:
    m, h = pair
    if m is None or not math.isfinite(m):
        return "n/a"
    return f"{m:+.{digits}f}" + ("" if not math.isfinite(h) else f" ± {h:.{digits}f}")


def _audit(row: dict) -> str:
    return audit_cell(row["runs"])  # over seeds and per seed (compare_verdict)


def table(rows: list[dict]) -> str:
    third = any(
        r.get("third_gain") for r in rows
    )  # a third scorer (scripts/rescore.py) when the runs have one
    head = ("| method | seeds | gold reward | paired gain over base [95% CI] | second-scorer gain [95% CI] | "
            + ("third-scorer gain [95% CI] | " if third else "")
            + "KL to ref | judge win rate | labels | judge calls | labeller agreement with gold | wall time |")  # fmt: skip
    lines = [head, "|" + "---|" * (11 + third)]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['seeds']} | {_fmt(r['gold_reward'])} | {_ci(r.get('gain'))} | "
            f"{_ci(r.get('second_gain'))} | "
            + (f"{_ci(r.get('third_gain'))} | " if third else "")
            + f"{_fmt(r['kl'])} | {_fmt(r['win_rate'], 2)} | {r['labels']} | "
            f"{r['judge_calls']} | {_audit(r)} | {r['wall_time_s']:.0f} s |"
        )
    return "\n".join(lines)


def pairwise_table(pairs: list[dict]) -> str:
    lines = [
        "| A | B | seeds | A − B gold reward [95% CI] | p | p (Holm) | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in sorted(pairs, key=lambda p: p["p_holm"]):
        lines.append(f"| {p['a']} | {p['b']} | {p.get('seeds', '')} | {_ci(p)} | {format_p(p)} | "
                     f"{format_p({'p': p['p_holm'], 'p_floor': p.get('p_holm_floor')})} | {_pair_verdict(p)} |")  # fmt: skip
    return "\n".join(lines)


def write_report(
    roots: list[Path], out_dir: Path, margin: float = EQUIVALENCE_MARGIN, skip_bad: bool = False
) -> tuple[Path, str]:
    from alignlab.compare_judge import evaluator_lines, judge_report
    from alignlab.compare_plots import curves_plot, frontier_plot
    from alignlab.compare_verdict import length_bias_section, task_lines

    bad: list = []  # unreadable, cut or differently evaluated result files: an error, or with skip_bad left out
    results, bad = screen_results(find_results(roots, bad), bad, skip_bad)
    if not results:
        raise FileNotFoundError(
            f"no finished runs (result.json) under {', '.join(map(str, roots))}; run the pipeline first "
            "(make compare, or python -m alignlab.pipeline method=dpo)"
        )
    if (judged := judge_report(results, bad, out_dir)) is not None:  # no gold reward: the judge's report
        return judged
    rows, sweep = split_sweeps(summarise(results))
    pairs = pairwise([r for r in rows if r.get("gain")], margin)
    frontier = frontier_rows(rows, sweep)
    matched_sentence, matched_section = matched_kl_report(rows, sweep, pairs, margin)
    tab = table(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    frontier_plot(results, out_dir / "frontier.png")
    curves = curves_plot(results, out_dir / "curves.png")
    base = next((r["base_eval"] for r in results if r.get("base_eval")), None)
    where = provenance(results)
    size = ""
    if base:
        seeds = sorted({r.get("seed") for r in results})
        size = (f"{base.get('n')} held-out prompts × {base.get('samples_per_prompt', 1)} samples each, "
                f"{len(seeds)} seed(s) ({', '.join(map(str, seeds))})")  # fmt: skip
    parts = [
        "# alignlab comparison report", "", *task_lines(results),  # task, its scorers, the labellers' questions
        f"{len(results)} runs, {len(rows)} methods{f' and {len(sweep)} sweep point(s)' if sweep else ''}; {size}. Every policy, the base included, is evaluated on "
        "the same held-out prompts with the same sampling seeds. **Paired gain** = mean per-prompt difference "
        "from the base policy, 95% CI: over seeds and prompts (a crossed random-effects t interval, Satterthwaite df) "
        "with several seeds, a BCa bootstrap over prompts with one; **↑**/**↓** mark CIs that exclude "
        "0. The other ± are 95% CIs over seeds (Student t), or the run's own bootstrap CI for one seed. KL is "
        "the Monte-Carlo sequence-level estimate against the reference policy.", "", *excluded_lines(bad), *([note, ""] if (note := replicate_note(results)) else []),
        *([where, ""] if where else []), *evaluator_lines(results),  # what made the headline (compare_judge)
        "## Verdict", "", " ".join(filter(None, [verdict(rows, pairs), matched_sentence])), "", tab, "",
    ]  # fmt: skip
    if base:
        parts += [f"Base policy: gold reward {base['gold_reward']:+.3f} [{base.get('gold_reward_ci_low', float('nan')):+.3f}, "
                  f"{base.get('gold_reward_ci_high', float('nan')):+.3f}].", ""]  # fmt: skip
    parts += length_bias_section(results)  # the labellers' length bias per task (judges.length_bias)
    if pairs:
        parts += ["## Between methods", "", "Paired differences on the same prompts and seeds; p-values from the "
                  "same intervals, Holm-adjusted over all pairs. A pair that is not significant is called equivalent "
                  f"only when a TOST at ±{pairs[0]['margin']:g} gold reward passes, else inconclusive.", "",
                  pairwise_table(pairs), ""]  # fmt: skip
    parts += matched_section
    if frontier:
        parts += ["## Frontier: each method over its swept setting", "", "The sweep points (a method rerun "
                  "with one setting changed) beside the method at its own setting on the same seeds. Outside "
                  "the between-method tests above; on one seed a CI covers the held-out prompts, not the "
                  "spread between training runs, which the main table's seeds show is large for online RL. "
                  "Read them as the shape of each method's reward-KL trade, not as verdicts.", "",
                  frontier_table(frontier), ""]  # fmt: skip
    parts += ["## Reward vs KL", "", "![reward vs KL](frontier.png)", ""]
    if curves:
        parts += ["## Training curves", "", "![training curves](curves.png)", ""]
    ex = examples(results)
    if ex:
        parts += ["## Examples", "", ex]
    parts += ["## Runs", ""] + [f"- `{r['_path']}`" for r in sorted(results, key=lambda r: r["_path"])]
    report = write_text(out_dir / "report.md", "\n".join(parts) + "\n")
    return report, tab + ("\n\n" + verdict(rows, pairs))


@cli_app("alignlab-compare")
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "roots", nargs="*", default=["outputs/pipeline"], help="directories holding finished runs"
    )
    ap.add_argument("--out", default="outputs/report", help="where report.md and the plots go")
    ap.add_argument("--equivalence-margin", type=float, default=EQUIVALENCE_MARGIN,
                    help="TOST margin in gold reward for calling two methods equivalent (default 0.1)")  # fmt: skip
    ap.add_argument("--wandb", action="store_true",
                    help="also log the comparison as one wandb run (offline unless logged in)")  # fmt: skip
    ap.add_argument("--skip-bad", action="store_true",
                    help="leave out result files that cannot be paired (listed in the report) instead of stopping")  # fmt: skip
    a = ap.parse_args(argv)
    try:
        report, tab = write_report([Path(r) for r in a.roots], Path(a.out), a.equivalence_margin, a.skip_bad)
    except FileNotFoundError as e:
        print(f"alignlab-compare: {e}", file=sys.stderr)
        return 2
    print(tab)
    print(f"\nreport: {report}\nplots:  {report.parent / 'frontier.png'}, {report.parent / 'curves.png'}")
    if a.wandb:  # the report's tables and plots as a wandb run (alignlab.compare_wandb)
        from alignlab.compare_wandb import log_comparison

        print(f"wandb:  {log_comparison(Path(a.out), [Path(r) for r in a.roots])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The comparison report of a task without a gold reward, and the evaluator lines of every report.

``alignlab.compare`` hands the whole report over to ``judge_report`` when no run has a gold reward
(``Task.has_gold`` false: real preference data). Each method's headline is then the judge's win rate
against the base policy on the same held-out prompts (``alignlab.win_rate.paired_win_rate``: both
orders, a tie counts 0.5), with its 95% CI (one seed: the run's Student-t CI over prompts; several: a
Student-t CI over the seeds' win rates). No gold reward, gain, between-method gold test or gold verdict
is printed, since none exists. ``evaluator_lines`` (both reports) names what produced the headline
numbers and repeats the pipeline's warning when a method's evaluator judge is the judge that trained it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from alignlab.stats import t_mean_ci


def judged(results: list[dict]) -> bool:
    """Whether no run has a gold reward (the report is the judge's)."""
    return not any((r.get("eval") or {}).get("gold_reward") is not None for r in results)


def evaluator_lines(results: list[dict]) -> list[str]:
    """What produced the headline numbers, and one warning per distinct same-judge warning of the runs."""
    evaluators = sorted(
        {str(r["eval"]["evaluator"]) for r in results if (r.get("eval") or {}).get("evaluator")}
    )
    lines = []
    if evaluators:
        mixed = " (**the runs mix evaluators: their numbers do not compare**)" if len(evaluators) > 1 else ""
        lines += [f"Evaluator of the headline numbers: {'; '.join(f'`{e}`' for e in evaluators)}{mixed}.", ""]
    warned: dict[str, set[str]] = defaultdict(set)
    for r in results:
        if r.get("evaluator_warning"):
            warned[r["evaluator_warning"]].add(r["method"])
    for text, methods in sorted(warned.items()):
        lines += [f"**Warning ({', '.join(sorted(methods))}):** {text}.", ""]
    return lines


def win_rate_row(label: str, runs: list[dict]) -> dict:
    """A method's win rate with its 95% CI, KL, labels, judge calls and wall time, over its seeds."""
    rates = [r["eval"].get("win_rate") for r in runs if r["eval"].get("win_rate") is not None]
    if len(rates) == 1:
        ev = next(r["eval"] for r in runs if r["eval"].get("win_rate") is not None)
        ci = (ev.get("win_rate_ci_low"), ev.get("win_rate_ci_high"))
        mean = rates[0]
    else:
        mean, half = t_mean_ci(rates)
        ci = (mean - half, mean + half) if math.isfinite(half) else (None, None)
    kl, _ = t_mean_ci([r["eval"].get("kl") for r in runs if r["eval"].get("kl") is not None])
    return {"method": label, "seeds": len(runs), "win_rate": mean if rates else None, "ci": ci, "kl": kl,
            "labels": int(np.mean([r.get("labels_used") or 0 for r in runs])),
            "judge_calls": int(np.mean([r.get("judge_calls") or 0 for r in runs])),
            "wall_time_s": float(np.mean([r.get("wall_time_s") or 0.0 for r in runs])),
            "warned": any(r.get("evaluator_warning") for r in runs)}  # fmt: skip


def _rate(row: dict) -> str:
    if row["win_rate"] is None:
        return "n/a"
    lo, hi = row["ci"]
    ci = "" if lo is None else f" [{lo:.3f}, {hi:.3f}]"
    mark = "" if lo is None else " **↑**" if lo > 0.5 else " **↓**" if hi < 0.5 else ""
    return f"{row['win_rate']:.3f}{ci}{mark}"


def win_rate_table(rows: list[dict]) -> str:
    lines = ["| method | seeds | judge win rate vs base [95% CI] | KL to ref | labels | judge calls | wall time |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        kl = "n/a" if not math.isfinite(r["kl"]) else f"{r['kl']:+.3f}"
        lines.append(f"| {r['method']} | {r['seeds']} | {_rate(r)} | {kl} | {r['labels']} | {r['judge_calls']} | "
                     f"{r['wall_time_s']:.0f} s |")  # fmt: skip
    return "\n".join(lines)


def win_rate_verdict(rows: list[dict]) -> str:
    """One sentence per method from its win rate's CI against 0.5 (no gold verdict exists)."""
    out = []
    for r in rows:
        lo, hi = r["ci"]
        if r["win_rate"] is None:
            text = f"{r['method']} has no judge win rate"
        elif lo is not None and lo > 0.5:
            text = f"the judge prefers {r['method']} to the base policy"
        elif hi is not None and hi < 0.5:
            text = f"the judge prefers the base policy to {r['method']}"
        else:
            text = f"the judge cannot tell {r['method']} from the base policy"
        out.append(text + (" (graded by the judge that trained it)" if r["warned"] else "") + ".")
    return " ".join(s[0].upper() + s[1:] for s in out)


def frontier_plot(rows_runs: list[tuple[str, list[dict]]], path: Path) -> Path:
    """The judge's win rate against KL, one point per run with its 95% CI."""
    from alignlab.compare_plots import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for label, runs in rows_runs:
        pts = [r["eval"] for r in runs if r["eval"].get("win_rate") is not None]
        x, y = [e.get("kl") or 0.0 for e in pts], [e["win_rate"] for e in pts]
        err = [[e["win_rate"] - e.get("win_rate_ci_low", e["win_rate"]) for e in pts],
               [e.get("win_rate_ci_high", e["win_rate"]) - e["win_rate"] for e in pts]]  # fmt: skip
        ax.errorbar(x, y, yerr=err, fmt="o", capsize=3, label=label)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="KL to reference", ylabel="judge win rate vs base", title="Judge win rate vs KL")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def judge_report(results: list[dict], bad: list, out_dir: Path) -> tuple[Path, str] | None:
    """The report of runs without a gold reward (None when some run has one: the gold report)."""
    if not judged(results):
        return None
    from alignlab.compare_format import label_of, provenance
    from alignlab.compare_plots import curves_plot
    from alignlab.compare_verdict import task_lines
    from alignlab.report_checks import excluded_lines
    from alignlab.utils.io import write_text

    groups: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        groups[label_of(r)].append(r)
    rows = [win_rate_row(label, runs) for label, runs in sorted(groups.items())]
    out_dir.mkdir(parents=True, exist_ok=True)
    frontier_plot(sorted(groups.items()), out_dir / "frontier.png")
    curves = curves_plot(results, out_dir / "curves.png")
    tab, verdict = win_rate_table(rows), win_rate_verdict(rows)
    where = provenance(results)
    base = next((r["base_eval"] for r in results if r.get("base_eval")), {})
    parts = [
        "# alignlab comparison report", "", *task_lines(results),
        f"{len(results)} runs, {len(rows)} methods; {base.get('n')} held-out prompts × "
        f"{base.get('samples_per_prompt', 1)} samples each. The task has no gold reward, so each policy is "
        "evaluated by a judge: its **win rate against the base policy** on the same held-out prompts with the "
        "same sampling seeds, each pair asked in both orders, a win scoring 1, **a tie 0.5**, a loss 0 "
        "(invalid answers left out). 95% CI: Student t over prompts for one seed, over the seeds' win rates "
        "for several; **↑**/**↓** mark CIs that exclude 0.5. No gold reward, gain or gold verdict exists "
        "for this task.", "", *evaluator_lines(results), *excluded_lines(bad), *([where, ""] if where else []),
        "## Verdict", "", verdict, "", tab, "", "## Judge win rate vs KL", "", "![win rate vs KL](frontier.png)", "",
    ]  # fmt: skip
    if curves:
        parts += ["## Training curves", "", "![training curves](curves.png)", ""]
    from alignlab.compare_format import examples

    ex = examples(results, gold=False)
    if ex:
        parts += ["## Examples", "", ex]
    parts += ["## Runs", ""] + [f"- `{r['_path']}`" for r in sorted(results, key=lambda r: r["_path"])]
    report = write_text(out_dir / "report.md", "\n".join(parts) + "\n")
    return report, tab + "\n\n" + verdict

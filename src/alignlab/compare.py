"""The comparison report: ``python -m alignlab.compare [roots...] [--out DIR]``.

Reads finished pipeline runs (``result.json``, written by ``alignlab.pipeline``) under the given roots,
and writes ``report.md`` with one row per method (mean over seeds with a 95% CI), a reward-vs-KL
frontier plot in the manner of the DPO paper, and training curves. Prints the table.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from alignlab.utils.io import atomic_open, write_text

# Student-t 97.5% quantiles for small numbers of seeds (df = n - 1).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def find_results(roots: list[Path]) -> list[dict]:
    """Every ``result.json`` under ``roots`` (a run dir or any parent), newest per (method, seed, variant)."""
    found: dict[tuple, dict] = {}
    for root in roots:
        for path in sorted(Path(root).rglob("result.json")):
            try:
                r = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as e:
                print(f"compare: skipping unreadable {path} ({e})", file=sys.stderr)
                continue
            if "method" not in r or "eval" not in r:
                continue
            r["_path"] = str(path)
            key = (r["method"], r.get("seed"), json.dumps(r.get("variant", {}), sort_keys=True))
            if key not in found or path.stat().st_mtime >= Path(found[key]["_path"]).stat().st_mtime:
                found[key] = r
    return list(found.values())


def mean_ci(values: list[float], within: list[tuple[float, float]] | None = None) -> tuple[float, float]:
    """Mean and 95% CI half-width over seeds (Student t); one seed falls back to its own bootstrap CI."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size == 1:
        if within and within[0][0] is not None:
            lo, hi = within[0]
            return float(v[0]), float((hi - lo) / 2)
        return float(v[0]), float("nan")
    half = _T975.get(v.size - 1, 1.96) * v.std(ddof=1) / math.sqrt(v.size)
    return float(v.mean()), float(half)


def _label(r: dict) -> str:
    variant = r.get("variant") or {}
    return r["method"] + (
        "" if not variant else " (" + ", ".join(f"{k}={v}" for k, v in sorted(variant.items())) + ")"
    )


def summarise(results: list[dict]) -> list[dict]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        groups[_label(r)].append(r)
    rows = []
    for label, rs in sorted(groups.items()):
        ev = [r["eval"] for r in rs]

        def stat(name: str, ev=ev) -> tuple[float, float]:
            return mean_ci(
                [e.get(name) for e in ev], [(e.get(f"{name}_ci_low"), e.get(f"{name}_ci_high")) for e in ev]
            )

        rows.append(
            {
                "method": label,
                "seeds": len(rs),
                "gold_reward": stat("gold_reward"),
                "second_reward": stat("second_reward"),
                "kl": stat("kl"),
                "win_rate": stat("win_rate"),
                "labels": int(np.mean([r.get("labels_used", 0) or 0 for r in rs])),
                "judge_calls": int(np.mean([r.get("judge_calls", 0) or 0 for r in rs])),
                "wall_time_s": float(np.mean([r.get("wall_time_s", 0.0) or 0.0 for r in rs])),
            }
        )
    return rows


def _fmt(pair: tuple[float, float], digits: int = 3) -> str:
    m, h = pair
    if m is None or not math.isfinite(m):
        return "n/a"
    return f"{m:+.{digits}f}" + ("" if not math.isfinite(h) else f" ± {h:.{digits}f}")


def table(rows: list[dict]) -> str:
    head = "| method | seeds | gold reward | second scorer | KL to ref | judge win rate | labels | judge calls | wall time |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['seeds']} | {_fmt(r['gold_reward'])} | {_fmt(r['second_reward'])} | "
            f"{_fmt(r['kl'])} | {_fmt(r['win_rate'], 2)} | {r['labels']} | {r['judge_calls']} | {r['wall_time_s']:.0f} s |"
        )
    return "\n".join(lines)


def frontier_plot(results: list[dict], path: Path) -> Path:
    """Gold reward against KL to the reference, one point per run, error bars = each run's 95% CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    labels = sorted({_label(r) for r in results})
    colours = plt.get_cmap("tab10")
    for i, label in enumerate(labels):
        rs = [r for r in results if _label(r) == label]
        xs = [r["eval"].get("kl") or 0.0 for r in rs]
        ys = [r["eval"]["gold_reward"] for r in rs]
        yerr = [
            [y - (r["eval"].get("gold_reward_ci_low") or y) for y, r in zip(ys, rs)],
            [(r["eval"].get("gold_reward_ci_high") or y) - y for y, r in zip(ys, rs)],
        ]
        xerr = [
            [x - (r["eval"].get("kl_ci_low") or x) for x, r in zip(xs, rs)],
            [(r["eval"].get("kl_ci_high") or x) - x for x, r in zip(xs, rs)],
        ]
        ax.errorbar(
            xs, ys, yerr=yerr, xerr=xerr, fmt="o", color=colours(i % 10), label=label, capsize=3, alpha=0.85
        )
    base = [r.get("base_eval") for r in results if r.get("base_eval")]
    if base:
        b = base[0]
        ax.axhline(b["gold_reward"], color="grey", linestyle="--", linewidth=1, label="base policy")
    ax.set_xlabel("KL(π ‖ π_ref) per completion (nats, Monte-Carlo)")
    ax.set_ylabel("mean gold reward (held-out prompts)")
    ax.set_title("Reward vs KL frontier")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    with atomic_open(path, "wb", encoding=None) as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return path


def _read_curve(csv_path: Path, metric: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    with open(csv_path) as f:
        for row in csv.DictReader(f):
            if row.get(metric):
                xs.append(float(row.get("step") or len(xs)))
                ys.append(float(row[metric]))
    return xs, ys


def curves_plot(results: list[dict], path: Path) -> Path | None:
    """Training curves of each run's training stages (``curves`` entries: csv path + metric)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = []
    for r in results:
        for c in r.get("curves", []):
            p = Path(c["csv"])
            if p.exists():
                xs, ys = _read_curve(p, c["metric"])
                if xs:
                    series.append((f"{_label(r)} s{r.get('seed')}: {c['stage']}", c["metric"], xs, ys))
    if not series:
        return None
    metrics = sorted({s[1] for s in series})
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.6), dpi=110, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for name, m, xs, ys in series:
            if m == metric:
                ax.plot(xs, ys, label=name, linewidth=1.2)
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    with atomic_open(path, "wb", encoding=None) as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return path


def write_report(roots: list[Path], out_dir: Path) -> tuple[Path, str]:
    results = find_results(roots)
    if not results:
        raise FileNotFoundError(
            f"no finished runs (result.json) under {', '.join(map(str, roots))}; run the pipeline first "
            "(make compare, or python -m alignlab.pipeline method=dpo)"
        )
    rows = summarise(results)
    tab = table(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    frontier_plot(results, out_dir / "frontier.png")
    curves = curves_plot(results, out_dir / "curves.png")
    base = next((r["base_eval"] for r in results if r.get("base_eval")), None)
    parts = [
        "# alignlab comparison report",
        "",
        f"{len(results)} runs, {len(rows)} methods. Gold reward, second scorer and KL are measured on held-out "
        "prompts; ± is the 95% CI over seeds (Student t), or the run's own bootstrap CI when there is one seed. "
        "KL is the Monte-Carlo sequence-level estimate against the reference policy.",
        "",
        tab,
        "",
    ]
    if base:
        parts += [
            f"Base policy: gold reward {base['gold_reward']:+.3f} "
            f"[{base.get('gold_reward_ci_low', float('nan')):+.3f}, {base.get('gold_reward_ci_high', float('nan')):+.3f}].",
            "",
        ]
    parts += ["![reward vs KL](frontier.png)", ""]
    if curves:
        parts += ["![training curves](curves.png)", ""]
    parts += ["Runs:", ""] + [f"- `{r['_path']}`" for r in sorted(results, key=lambda r: r["_path"])]
    report = write_text(out_dir / "report.md", "\n".join(parts) + "\n")
    return report, tab


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "roots", nargs="*", default=["outputs/pipeline"], help="directories holding finished runs"
    )
    ap.add_argument("--out", default="outputs/report", help="where report.md and the plots go")
    a = ap.parse_args(argv)
    try:
        report, tab = write_report([Path(r) for r in a.roots], Path(a.out))
    except FileNotFoundError as e:
        print(f"alignlab-compare: {e}", file=sys.stderr)
        return 2
    print(tab)
    print(f"\nreport: {report}\nplot:   {report.parent / 'frontier.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

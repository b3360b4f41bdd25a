"""The comparison's figures: the reward-vs-KL frontier and the training curves (``alignlab.compare``)."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from alignlab.utils.io import atomic_open


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_open(path, "wb", encoding=None) as f:
        fig.savefig(f, format="png")
    _plt().close(fig)
    return path


def _sweep_value(r: dict) -> float:
    v = r.get("variant") or {}
    return (
        float(next(iter(v.values())))
        if len(v) == 1 and isinstance(next(iter(v.values())), (int, float))
        else 0.0
    )


def sweep_lines(rs: list[dict]) -> dict:
    """The frontier line(s) of one method: per seed that a sweep point (a run with a variant) ran on, that
    seed's runs, the method's own setting included, as (kl, gold reward, text) in order of KL. Other seeds'
    runs of the own setting are points, not on a line (they are not the sweep). Empty: no sweep."""
    if len({_sweep_value(r) for r in rs}) < 2 or not any(r.get("variant") for r in rs):
        return {}
    lines = {}
    for seed in sorted({r.get("seed") or 0 for r in rs if r.get("variant")}):
        pts = [((r["eval"].get("kl") or 0.0), r["eval"]["gold_reward"],
                ", ".join(str(v) for v in (r.get("variant") or {}).values()) or "own")
               for r in rs if (r.get("seed") or 0) == seed]  # fmt: skip
        lines[seed] = sorted(pts)
    return lines


def frontier_plot(results: list[dict], path: Path) -> Path:
    """Gold reward against KL, one point per run with its 95% CIs; a method's sweep (a beta or
    KL-coefficient variant) joined in order of KL through the runs of the seed it ran on, the method's own
    setting included ("own"), as in the DPO paper's Fig. 2."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    by_method: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        by_method[r["method"]].append(r)
    colours = plt.get_cmap("tab10")
    for i, (method, rs) in enumerate(sorted(by_method.items())):
        xs = [r["eval"].get("kl") or 0.0 for r in rs]
        ys = [r["eval"]["gold_reward"] for r in rs]
        yerr = [[y - (r["eval"].get("gold_reward_ci_low") or y) for y, r in zip(ys, rs)],
                [(r["eval"].get("gold_reward_ci_high") or y) - y for y, r in zip(ys, rs)]]  # fmt: skip
        xerr = [[max(0.0, x - (r["eval"].get("kl_ci_low") or x)) for x, r in zip(xs, rs)],
                [max(0.0, (r["eval"].get("kl_ci_high") or x) - x) for x, r in zip(xs, rs)]]  # fmt: skip
        lines = sweep_lines(rs)
        seeds = ", ".join(map(str, lines))
        ax.errorbar(xs, ys, yerr=yerr, xerr=xerr, fmt="o", color=colours(i % 10), capsize=3, alpha=0.85,
                    label=method + (f" (sweep: line through seed {seeds})" if lines else ""))  # fmt: skip
        for pts in lines.values():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", color=colours(i % 10), alpha=0.85)
            for x, y, text in pts:
                ax.annotate(text, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    base = next((r["base_eval"] for r in results if r.get("base_eval")), None)
    if base:
        ax.axhline(base["gold_reward"], color="grey", linestyle="--", linewidth=1, label="base policy")
    ax.set_xlabel("KL(π ‖ π_ref) per completion (nats, Monte-Carlo)")
    ax.set_ylabel("mean gold reward (held-out prompts)")
    ax.set_title("Reward vs KL frontier")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, path)


def read_curve(csv_path: Path, metric: str) -> tuple[list[float], list[float]]:
    """(steps, values) of ``metric`` in a Lightning CSV log."""
    xs, ys = [], []
    with open(csv_path) as f:
        for row in csv.DictReader(f):
            if row.get(metric):
                xs.append(float(row.get("step") or len(xs)))
                ys.append(float(row[metric]))
    return xs, ys


def _points(c: dict) -> tuple[list[float], list[float]]:
    if c.get("points") is not None:
        return [p[0] for p in c["points"]], [p[1] for p in c["points"]]
    if Path(c["csv"]).exists():
        return read_curve(Path(c["csv"]), c["metric"])
    return [], []


def curve_bands(results: list[dict]) -> dict[str, dict[str, dict]]:
    """{panel: {method: band}}: each method's (and sweep point's) curves over its seeds, x in training
    samples seen (step x ``samples_per_step``): ``x``, the ``mean`` over the seeds, the band ``low``/``high``
    (min and max over the seeds), ``seeds``, and ``scaled`` (x in samples, not steps). Seeds are put on one
    grid, the union of their x, each by linear interpolation inside its own range only."""
    import numpy as np

    runs: dict[tuple[str, str], list] = defaultdict(list)
    for r in results:
        label = r["method"] + (
            " " + ", ".join(f"{v}" for v in r["variant"].values()) if r.get("variant") else ""
        )
        for c in r.get("curves", []):
            xs, ys = _points(c)
            if xs:
                per = float(c.get("samples_per_step") or 1)
                panel = c.get("panel") or c["metric"]
                runs[(panel, label)].append(
                    (np.asarray(xs) * per, np.asarray(ys, dtype=float), bool(c.get("samples_per_step")))
                )
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for (panel, label), curves in sorted(runs.items()):
        grid = np.unique(np.concatenate([x for x, _, _ in curves]))
        # (seeds, len(grid)): NaN outside a seed's own range
        ys = np.stack([np.where((grid >= x.min()) & (grid <= x.max()), np.interp(grid, x, y), np.nan)
                       for x, y, _ in curves])  # fmt: skip
        out[panel][label] = {"x": grid, "mean": np.nanmean(ys, axis=0), "low": np.nanmin(ys, axis=0),
                             "high": np.nanmax(ys, axis=0), "seeds": len(curves),
                             "scaled": all(s for _, _, s in curves)}  # fmt: skip
    return dict(out)


def curves_plot(results: list[dict], path: Path) -> Path | None:
    """One panel per curve kind (``panel`` of each ``curves`` entry, e.g. reward-model score vs judge
    score never share an axis), x in training samples seen; per method its mean over seeds, with the band
    from the lowest to the highest seed shaded, one colour per method in every panel."""
    bands = curve_bands(results)
    if not bands:
        return None
    plt = _plt()
    labels = sorted({m for panel in bands.values() for m in panel})
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(labels)}
    fig, axes = plt.subplots(1, len(bands), figsize=(4.6 * len(bands), 3.6), dpi=110, squeeze=False)
    for ax, (panel, methods) in zip(axes[0], sorted(bands.items())):
        for label, b in methods.items():
            n = b["seeds"]
            ax.plot(b["x"], b["mean"], marker="o", markersize=3, linewidth=1.4, color=colours[label],
                    label=f"{label} (mean of {n} seeds, band min-max)" if n > 1 else f"{label} (1 seed)")  # fmt: skip
            if n > 1:
                ax.fill_between(b["x"], b["low"], b["high"], color=colours[label], alpha=0.2, linewidth=0)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("training samples seen" if all(b["scaled"] for b in methods.values()) else "step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, path)

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


def frontier_plot(results: list[dict], path: Path) -> Path:
    """Gold reward against KL, one point per run with its 95% CIs; the points of one method's sweep (a
    beta or KL-coefficient variant) joined in the order of the swept value, as in the DPO paper's Fig. 2."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    by_method: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        by_method[r["method"]].append(r)
    colours = plt.get_cmap("tab10")
    for i, (method, rs) in enumerate(sorted(by_method.items())):
        rs = sorted(rs, key=lambda r: (_sweep_value(r), r.get("seed") or 0))
        xs = [r["eval"].get("kl") or 0.0 for r in rs]
        ys = [r["eval"]["gold_reward"] for r in rs]
        yerr = [[y - (r["eval"].get("gold_reward_ci_low") or y) for y, r in zip(ys, rs)],
                [(r["eval"].get("gold_reward_ci_high") or y) - y for y, r in zip(ys, rs)]]  # fmt: skip
        xerr = [[max(0.0, x - (r["eval"].get("kl_ci_low") or x)) for x, r in zip(xs, rs)],
                [max(0.0, (r["eval"].get("kl_ci_high") or x) - x) for x, r in zip(xs, rs)]]  # fmt: skip
        swept = len({_sweep_value(r) for r in rs}) > 1
        ax.errorbar(xs, ys, yerr=yerr, xerr=xerr, fmt="o-" if swept else "o", color=colours(i % 10),
                    label=method + (" (sweep)" if swept else ""), capsize=3, alpha=0.85)  # fmt: skip
        if swept:
            for x, y, r in zip(xs, ys, rs):
                ax.annotate(", ".join(f"{v}" for v in (r.get("variant") or {}).values()), (x, y), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")  # fmt: skip
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


def curves_plot(results: list[dict], path: Path) -> Path | None:
    """One panel per curve kind (``panel`` of each ``curves`` entry, e.g. reward-model score vs judge
    score never share an axis), x in training samples seen (step x ``samples_per_step``), with markers."""
    plt = _plt()
    series = []
    for r in results:
        for c in r.get("curves", []):
            if c.get("points") is not None:
                xs, ys = [p[0] for p in c["points"]], [p[1] for p in c["points"]]
            elif Path(c["csv"]).exists():
                xs, ys = read_curve(Path(c["csv"]), c["metric"])
            else:
                continue
            if xs:
                per = float(c.get("samples_per_step") or 1)
                label = f"{r['method']} s{r.get('seed')}" + (f" {r['variant']}" if r.get("variant") else "")
                series.append((c.get("panel") or c["metric"], label, [x * per for x in xs], ys,
                               bool(c.get("samples_per_step"))))  # fmt: skip
    if not series:
        return None
    panels = sorted({s[0] for s in series})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), dpi=110, squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for _panel, label, xs, ys, _ in (s for s in series if s[0] == panel):
            ax.plot(xs, ys, marker="o", markersize=3, label=label, linewidth=1.2)
        scaled = all(s[4] for s in series if s[0] == panel)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("training samples seen" if scaled else "step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, path)

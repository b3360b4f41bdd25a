"""``alignlab.compare --wandb``: the comparison as one wandb run, where users look.

The run holds what ``report.md`` holds: each of its tables as a ``wandb.Table`` (``tables/verdict``, the
main table; ``tables/between_methods``; ``tables/frontier``; ``tables/examples``), a ``methods`` table with
one row per method and its numbers as numbers (mean, 95% CI low and high), the reward-vs-KL frontier as a
native scatter plot over it, and ``frontier.png`` and ``curves.png`` as images. It reads the report the
compare command has just written, so the run shows exactly the report's numbers. Offline
(``WANDB_MODE=offline``, or not logged in) it lands in ``<out>/wandb/offline-run-*``; ``wandb sync`` uploads it.
"""

from __future__ import annotations

import re
from pathlib import Path

_NUM = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?"
_PLUS_MINUS = re.compile(rf"^({_NUM})\s*±\s*({_NUM})")  # "+0.123 ± 0.045"
_INTERVAL = re.compile(rf"^({_NUM})\s*\[({_NUM}),\s*({_NUM})\]")  # "+0.123 [+0.010, +0.240] **↑**"
_PLAIN = re.compile(rf"^({_NUM})(?:\s*s)?$")  # "3", "+0.123", "12 s"


def _cells(line: str) -> list[str]:
    inner = line.strip()[1:-1] if line.strip().endswith("|") else line.strip()[1:]
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]


def _slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", heading.split(":")[0].strip().lower()).strip("_") or "report"


def markdown_tables(text: str) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Every table of a markdown report as {section: (columns, rows)}, the section named after the ``##``
    heading above it. Tables of one section with the same columns, each under a bold label (the examples,
    one per prompt: ``**Prompt 1:** ...``), become one, with that label as a first column ``part``."""
    found: dict[str, list[tuple[str, list[str], list[list[str]]]]] = {}
    section, before, lines = "report", "", text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = _slug(line[3:])
        elif line.startswith("|") and i + 1 < len(lines) and set(lines[i + 1].strip()) <= set("|-: "):
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            found.setdefault(section, []).append((before, _cells(line), rows))
            continue
        elif line.strip():
            before = line.strip()
        i += 1
    out = {}
    for section, tables in found.items():
        labelled = all(t[0].startswith("**") for t in tables) and len({tuple(t[1]) for t in tables}) == 1
        if not labelled:
            for k, (_, cols, rows) in enumerate(tables):
                out[section if k == 0 else f"{section}_{k + 1}"] = (cols, rows)
        else:
            out[section] = (["part", *tables[0][1]], [[part, *r] for part, _, rs in tables for r in rs])
    return out


def parse_stat(cell: str) -> tuple[float | None, float | None, float | None]:
    """(mean, ci_low, ci_high) of a report cell: ``m ± h``, ``m [lo, hi]``, a plain number, else Nones."""
    cell = cell.replace("**", "").strip()
    if m := _PLUS_MINUS.match(cell):
        mean, half = float(m[1]), float(m[2])
        return mean, mean - half, mean + half
    if m := _INTERVAL.match(cell):
        return float(m[1]), float(m[2]), float(m[3])
    if m := _PLAIN.match(cell):
        return float(m[1]), None, None
    return None, None, None


# the main table's columns, as numbers: report column -> name
_STATS = {
    "gold reward": "gold_reward",
    "paired gain over base [95% CI]": "gain",
    "second-scorer gain [95% CI]": "second_gain",
    "KL to ref": "kl",
    "judge win rate": "win_rate",
}


def method_rows(columns: list[str], rows: list[list[str]]) -> tuple[list[str], list[list]]:
    """The main table as numbers, one row per method: seeds, then each statistic's mean, CI low, CI high."""
    names = ["method", "seeds"] + [f"{n}{s}" for n in _STATS.values() for s in ("", "_ci_low", "_ci_high")]
    data = []
    for r in rows:
        cell = dict(zip(columns, r))
        seeds = parse_stat(cell.get("seeds", ""))[0]
        values: list = [cell.get("method", ""), None if seeds is None else int(seeds)]
        for col in _STATS:
            values += list(parse_stat(cell.get(col, "")))
        data.append(values)
    return names, data


def log_comparison(
    out_dir: Path, roots: list[Path], project: str = "alignlab", name: str | None = None
) -> Path:
    """Log ``out_dir``'s report (written by ``alignlab.compare``) as one wandb run; returns its directory."""
    import wandb

    from alignlab.loggers import resolve_wandb_mode, wandb_settings

    report = out_dir / "report.md"
    tables = markdown_tables(report.read_text())
    run = wandb.init(
        project=project,
        job_type="compare",
        name=name or f"compare-{out_dir.resolve().name}",
        dir=str(out_dir),
        mode=resolve_wandb_mode("auto"),
        config={"roots": [str(r) for r in roots], "report": str(report)},
        settings=wandb_settings(console="off", system_metrics=False),
    )
    try:
        logged: dict = {f"tables/{k}": wandb.Table(columns=c, data=rows) for k, (c, rows) in tables.items()}
        if "verdict" in tables:
            cols, data = method_rows(*tables["verdict"])
            methods = wandb.Table(columns=cols, data=data)
            logged["methods"] = methods
            logged["frontier_plot"] = wandb.plot.scatter(methods, "kl", "gold_reward", title="Reward vs KL")
        for png in ("frontier.png", "curves.png"):
            if (out_dir / png).exists():
                logged[png.removesuffix(".png")] = wandb.Image(str(out_dir / png))
        run.log(logged)
        verdict = report.read_text().split("## Verdict", 1)[-1].split("\n|", 1)[0].strip()
        run.summary["verdict"] = verdict
        return Path(run.dir).parent
    finally:
        run.finish()

"""The report's small shared formatting: a run's row label, a table cell, the runs' provenance line. Used
by the gold report (``alignlab.compare``) and the no-gold report (``alignlab.compare_judge``), so that
neither imports the other."""

from __future__ import annotations


def label_of(r: dict) -> str:
    variant = r.get("variant") or {}
    name = r["method"] + (" tuned" if r.get("tuned") else "")  # alignlab.tune's final runs: kept apart
    return name + (
        "" if not variant else " (" + ", ".join(f"{k}={v}" for k, v in sorted(variant.items())) + ")"
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip() or "(empty)"


def provenance(results: list[dict]) -> str:
    """Where the runs trained and in what precision (records made before these fields: not stated); a
    comparison whose runs mix precisions or machines says so, since that is a difference beside the method."""
    precisions = sorted({r["precision"] for r in results if r.get("precision")})
    machines = sorted({
        ", ".join(str(x) for x in (m.get("cpu"), f"{m.get('cores')} cores", m.get("gpu")) if x)
        for m in (r.get("machine") for r in results) if m
    })  # fmt: skip
    if not precisions and not machines:
        return ""
    unknown = sum(1 for r in results if not r.get("precision"))
    text = f"Trained in {' and '.join(precisions) or 'an unrecorded precision'} on {'; '.join(machines) or 'an unrecorded machine'}"
    if unknown:
        text += f" ({unknown} run(s) recorded neither)"
    text += "."
    if len(precisions) > 1 or len(machines) > 1:
        text += " **The runs mix precisions or machines: that difference lies beside the methods'.**"
    return text


def examples(results: list[dict], n: int = 4, gold: bool = True) -> str:
    """The same held-out prompts: the base policy's completion and each method's (its first seed), with
    each completion's gold reward when ``gold`` (a task without one: completions only)."""
    firsts: dict[str, dict] = {}
    for r in sorted(results, key=lambda r: (label_of(r), r.get("seed") or 0)):
        firsts.setdefault(label_of(r), r)
    base = next((r.get("examples", {}).get("base") for r in firsts.values() if r.get("examples")), None)
    if not base:
        return ""
    head = (
        ["| policy | completion | gold |", "|---|---|---|"]
        if gold
        else ["| policy | completion |", "|---|---|"]
    )

    def row(label: str, ex: dict) -> str:
        return f"| {label} | {_cell(ex['completion'])} |" + (f" {ex['gold']:+.2f} |" if gold else "")

    lines = []
    for i, ex in enumerate(base[:n]):
        lines += [f"**Prompt {i + 1}:** `{ex['prompt']}`", "", *head, row("base", ex)]
        for label, r in firsts.items():
            pol = (r.get("examples") or {}).get("policy") or []
            if i < len(pol) and pol[i]["prompt"] == ex["prompt"]:
                lines.append(row(label, pol[i]))
        lines.append("")
    return "\n".join(lines)

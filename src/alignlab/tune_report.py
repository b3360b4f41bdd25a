"""The tuning report: ``python -m alignlab.tune_report SOURCE... [--out DIR]`` (``alignlab.tune`` writes it too).

Per method searched by ``alignlab.tune``: the search space, every trial's validation objective, a plot of
the objective by trial with the best so far (``tuning-<method>.png``), the chosen configuration, the final
runs' test gold reward, and the tuning cost: the CPU-seconds of the stages the trials ran (a stage shared
by trials counts once, in the trial that built it) and their judge calls, beside the final runs'. Written
as ``tuning.md`` into ``--out`` (``tune.report_dir``: the tuned results directory).

A SOURCE is a directory holding ``<method>.json`` records (``tune.record_dir``: trials, choice, final runs)
and/or ``<method>.db`` Optuna studies (``tune.storage_dir``); a method's record wins over its study (it
also holds the final runs). A study's trials carry their cost as user attributes ``cpu_s``, ``judge_calls``.
The tuned-vs-default gain with its CI is ``alignlab.compare``'s (docs/tuning.md).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from alignlab.utils.errors import MissingPathError, cli_app
from alignlab.utils.io import write_text


# -- what a search left behind ------------------------------------------------------------------------------
def best_trial(rows: list[dict]) -> dict:
    """The selection rule: the finished trial with the highest validation objective (ties: the earliest)."""
    done = [r for r in rows if r["state"] == "COMPLETE"]
    return max(done, key=lambda r: (r["value"], -r["number"]))


def describe(dist) -> str:
    """An Optuna distribution as the report shows it: ``log [0.0001, 0.003]``, ``[0.1, 0.3]``, ``{1, 2, 4}``."""
    if hasattr(dist, "choices"):
        return "{" + ", ".join(str(c) for c in dist.choices) + "}"
    log = getattr(dist, "log", None) or type(dist).__name__.endswith("LogUniformDistribution")
    step = getattr(dist, "step", None) or getattr(dist, "q", None)
    text = f"[{dist.low:g}, {dist.high:g}]" + (f" step {step:g}" if step not in (None, 1) else "")
    return ("log " if log else "") + text


def from_record(rec: dict, source: str) -> dict:
    """A method's search from its ``alignlab.tune`` record (``<tune.record_dir>/<method>.json``)."""
    from optuna.distributions import json_to_distribution

    space = {
        k: describe(json_to_distribution(json.dumps(v))) for k, v in (rec.get("space_json") or {}).items()
    }
    trials = [{k: t.get(k) for k in ("number", "state", "value", "params", "cpu_s", "judge_calls")}
              for t in rec.get("trials", [])]  # fmt: skip
    return {"method": rec["method"], "source": source, "space": space or dict(rec.get("space") or {}),
            "trials": trials, "best": rec.get("best"), "final": rec.get("final") or [],
            "n_trials": rec.get("n_trials"), "final_cost": _final_cost(rec.get("final") or [])}  # fmt: skip


def from_study(path: Path, method: str) -> dict:
    """A method's search from its Optuna study alone (``<tune.storage_dir>/<method>.db``): no final runs."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=method, storage=f"sqlite:///{path}")
    trials, space = [], {}
    for t in study.trials:
        space.update({k: describe(d) for k, d in t.distributions.items()})
        trials.append({"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
                       "cpu_s": t.user_attrs.get("cpu_s"), "judge_calls": t.user_attrs.get("judge_calls")})  # fmt: skip
    done = [t for t in trials if t["state"] == "COMPLETE"]
    return {"method": method, "source": str(path), "space": space, "trials": trials,
            "best": best_trial(trials) if done else None, "final": [], "n_trials": None,
            "final_cost": None}  # fmt: skip


def _final_cost(final: list[dict]) -> dict | None:
    if not final:
        return None
    return {"cpu_s": round(sum(f.get("cpu_s") or 0 for f in final), 1),
            "judge_calls": sum(f.get("judge_calls") or 0 for f in final)}  # fmt: skip


def collect(sources: list[Path]) -> dict[str, dict]:
    """Every method's search under ``sources``: records first, then studies of methods without a record."""
    found: dict[str, dict] = {}
    for src in sources:
        for path in sorted(Path(src).glob("*.json")):
            rec = json.loads(path.read_text())
            if isinstance(rec, dict) and "trials" in rec and "method" in rec:
                found.setdefault(rec["method"], from_record(rec, str(path)))
    for src in sources:
        for path in sorted(Path(src).glob("*.db")):
            if path.stem not in found:
                found[path.stem] = from_study(path, path.stem)
    return found


# -- the numbers -------------------------------------------------------------------------------------------
def best_so_far(trials: list[dict]) -> list[float | None]:
    """Per trial in order of number: the highest objective of the finished trials up to it (None before any)."""
    out, best = [], None
    for t in sorted(trials, key=lambda t: t["number"]):
        if t["state"] == "COMPLETE" and t["value"] is not None and (best is None or t["value"] > best):
            best = float(t["value"])
        out.append(best)
    return out


def search_cost(trials: list[dict]) -> dict:
    """CPU-seconds and judge calls of the stages the trials ran; ``unrecorded``: trials without a cost
    (a failed trial, or a study trial from before costs were recorded)."""
    return {"cpu_s": round(sum(float(t.get("cpu_s") or 0) for t in trials), 1),
            "judge_calls": sum(int(t.get("judge_calls") or 0) for t in trials),
            "unrecorded": sum(1 for t in trials if t.get("cpu_s") is None)}  # fmt: skip


def objective_plot(search: dict, path: Path) -> Path:
    """Objective by trial (finished trials as points, failed ones marked on the axis) and the best so far."""
    from alignlab.compare_plots import _plt, _save

    plt = _plt()
    trials = sorted(search["trials"], key=lambda t: t["number"])
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=120)
    done = [t for t in trials if t["state"] == "COMPLETE" and t["value"] is not None]
    ax.plot([t["number"] for t in done], [t["value"] for t in done], "o", label="trial objective")
    xs = [t["number"] for t in trials]
    best = [math.nan if b is None else b for b in best_so_far(trials)]
    ax.step(xs, best, where="post", color="black", label="best so far")
    failed = [t["number"] for t in trials if t["state"] != "COMPLETE"]
    if failed:
        ax.plot(failed, [min([t["value"] for t in done], default=0.0)] * len(failed), "x", color="red",
                label="failed / unfinished")  # fmt: skip
    chosen = search.get("best")
    if chosen:
        ax.plot([chosen["number"]], [chosen["value"]], "*", markersize=14, color="tab:orange", label="chosen")
    ax.xaxis.get_major_locator().set_params(integer=True)  # trials are numbered
    ax.set_xlabel("trial")
    ax.set_ylabel("validation objective")
    ax.set_title(f"{search['method']}: objective by trial")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, path)


# -- the report ---------------------------------------------------------------------------------------------
def _num(x, digits: int = 4) -> str:
    return "—" if x is None else f"{x:+.{digits}f}" if isinstance(x, float) else str(x)


def _cpu(x) -> str:
    return "—" if x is None else f"{float(x):.0f}"


def method_section(search: dict, png: str) -> list[str]:
    m, trials, best = search["method"], sorted(search["trials"], key=lambda t: t["number"]), search["best"]
    cost = search_cost(trials)
    lines = [f"## {m}", "", f"Source: `{search['source']}`.", "", "| searched | range |", "|---|---|"]
    lines += [f"| `{k}` | {v} |" for k, v in search["space"].items()]
    lines += ["", "| trial | state | objective (val) | best so far | CPU-s | judge calls | params |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for t, b in zip(trials, best_so_far(trials)):
        params = ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                           for k, v in sorted((t["params"] or {}).items()))  # fmt: skip
        lines.append(f"| {t['number']} | {t['state']} | {_num(t['value'])} | {_num(b)} | {_cpu(t['cpu_s'])} | "
                     f"{_num(t['judge_calls'])} | {params} |")  # fmt: skip
    lines += ["", f"![{m}: objective by trial]({png})", ""]
    if best:
        chosen = best.get("variant") or best.get("params") or {}
        lines += [f"Chosen: trial {best['number']} (validation objective {best['value']:+.4f}): "
                  + ", ".join(f"`{k}={v}`" for k, v in sorted(chosen.items())) + ".", ""]  # fmt: skip
    else:
        lines += ["No finished trial yet: nothing chosen.", ""]
    if search["final"]:
        lines += ["Final runs (test prompts): " + ", ".join(
            f"seed {f['seed']} gold {f['gold_reward']:+.3f}" for f in search["final"]) + ".", ""]  # fmt: skip
    lines += [f"Search cost: {cost['cpu_s']:.0f} CPU-s, {cost['judge_calls']} judge calls"
              + (f" ({cost['unrecorded']} trial(s) without a recorded cost)" if cost["unrecorded"] else "")
              + "."]  # fmt: skip
    return [*lines, ""]


def cost_table(searches: dict[str, dict]) -> list[str]:
    lines = ["| method | trials finished | search CPU-s | search judge calls | final CPU-s | final judge calls "
             "| total CPU-s |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for m, s in searches.items():
        c, f = search_cost(s["trials"]), s["final_cost"] or {}
        done = sum(1 for t in s["trials"] if t["state"] == "COMPLETE")
        total = c["cpu_s"] + (f.get("cpu_s") or 0)
        lines.append(f"| {m} | {done}{'/' + str(s['n_trials']) if s['n_trials'] else ''} | {c['cpu_s']:.0f} | "
                     f"{c['judge_calls']} | {_cpu(f.get('cpu_s'))} | {_num(f.get('judge_calls'))} | {total:.0f} |")  # fmt: skip
    return lines


def write_report(sources: list[Path], out_dir: Path) -> Path:
    """``tuning.md`` and one ``tuning-<method>.png`` per method into ``out_dir``; returns the markdown's path."""
    searches = collect(sources)
    if not searches:
        raise MissingPathError(
            f"no tuning records (<method>.json) or studies (<method>.db) in {', '.join(map(str, sources))}; "
            "run python -m alignlab.tune comparison=tuned_quick first, or name tune.record_dir"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = ["# Tuning report", "",
             "Per method: the searched space, every trial's validation objective (gold reward less the KL "
             "penalty past the budget), the best so far, the chosen configuration and the cost. The test "
             "prompts are used only by the final runs.", "", "## Cost", "", *cost_table(searches), ""]  # fmt: skip
    for m, s in searches.items():
        png = f"tuning-{m}.png"
        objective_plot(s, out_dir / png)
        parts += method_section(s, png)
    return write_text(out_dir / "tuning.md", "\n".join(parts))


@cli_app("alignlab-tune-report")
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "sources", nargs="+", help="directories with <method>.json records or <method>.db studies"
    )
    ap.add_argument(
        "--out", default=None, help="where tuning.md and the plots go (default: the first source)"
    )
    a = ap.parse_args(argv)
    sources = [Path(s) for s in a.sources]
    for s in sources:
        if not s.is_dir():
            raise MissingPathError(f"{s}: no such directory; name tune.record_dir or tune.storage_dir")
    print(f"report: {write_report(sources, Path(a.out) if a.out else sources[0])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

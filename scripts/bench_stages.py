"""Each stage of ``make compare`` in fp32 and in bf16-mixed: the quick comparison run once per precision.

    python scripts/bench_stages.py             # runs both (about 35 min on a 2-core CPU), then the table
    python scripts/bench_stages.py --collect   # only the table, from runs already under outputs/

Each precision runs ``python -m alignlab.pipeline --multirun comparison=quick seed=0`` (what ``make compare``
runs: five methods, two jobs at once, one thread each) with ``ALIGNLAB_CPU_PRECISION`` set and its own
``paths.log_dir`` (``outputs/stages-<precision>``), so no stage of one is a cache hit of the other, the tuned
judge included (its key holds the precision it trained in). Then, both precisions side by side, the stages
the five methods lack: PPO (``method=rlhf``) and two rounds of a 40-step SFT run (``experiment=sft_smollm2``). The stage times are the pipeline's own (the
``stages`` of each job's ``result.json``; cached stages left out). Writes ``bench/stages.json`` and prints a
markdown table: per stage the seconds in each precision and their ratio. One run per precision, not
repeated: the two jobs that share the CPU differ between the runs, so read small ratios (within ~10%) as
noise. On a CPU without native bf16 it refuses to run (bf16 there is an emulation, tens of times slower).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = ("32-true", "bf16-mixed")


def _env(precision: str) -> dict:
    env = {**os.environ, "ALIGNLAB_CPU_PRECISION": precision, "OMP_NUM_THREADS": "1"}
    env.setdefault("WANDB_MODE", "offline")
    return env


def _pipeline(precision: str, root: Path, *extra: str) -> list[str]:
    """The quick comparison's command (seed 0) writing under ``root/stages-<precision>``."""
    return [sys.executable, "-m", "alignlab.pipeline", "--multirun", "comparison=quick", "seed=0", *extra,
            f"paths.log_dir={root / f'stages-{precision}'}"]  # fmt: skip


def _show(precision: str, cmd: list[str]) -> None:
    print("+", f"ALIGNLAB_CPU_PRECISION={precision}", " ".join(cmd[1:]), flush=True)


def run(precision: str, root: Path) -> float:
    """make compare in ``precision``; its wall seconds."""
    cmd = _pipeline(precision, root)
    _show(precision, cmd)
    start = time.perf_counter()
    subprocess.run(cmd, env=_env(precision), cwd=REPO, check=True)
    return time.perf_counter() - start


def run_side_by_side(cmds: dict[str, list[str]]) -> dict[str, float]:
    """One command per precision, both at once (one thread each, so both see the same load): wall seconds."""
    start, procs, out = time.perf_counter(), {}, {}
    for precision, cmd in cmds.items():
        _show(precision, cmd)
        procs[precision] = subprocess.Popen(cmd, env=_env(precision), cwd=REPO, stdout=subprocess.DEVNULL)
    for precision, proc in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"bench_stages: {' '.join(cmds[precision][1:])} failed ({proc.returncode})")
        out[precision] = time.perf_counter() - start
    return out


def extra_stages(root: Path, sft_rounds: int = 2) -> dict[str, list[float]]:
    """Stages make compare's five methods lack, both precisions side by side: PPO (``method=rlhf``: its
    reward model is the rloo run's, cached) and an SFT run (``experiment=sft_smollm2``, 40 steps; the
    process's wall time, model load included), ``sft_rounds`` times. Appends PPO to each run's results."""
    run_side_by_side({p: _pipeline(p, root, "method=rlhf", "hydra.launcher.n_jobs=1") for p in PRECISIONS})
    sft: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for r in range(sft_rounds):
        cmds = {p: [sys.executable, "-m", "alignlab.train", "experiment=sft_smollm2", f"trainer.precision={p}",
                    "trainer.max_steps=40", "trainer.val_check_interval=20", "logger=none",
                    "trainer.enable_progress_bar=false", f"hydra.run.dir={root / f'stages-{p}' / 'sft' / str(r)}"]
                for p in PRECISIONS}  # fmt: skip
        for p, wall in run_side_by_side(cmds).items():
            sft[p].append(wall)
    return sft


def collect(precision: str, root: Path) -> dict[str, list[float]]:
    """Stage name (method-qualified where the stage's work differs by method) -> seconds of each run."""
    out: dict[str, list[float]] = defaultdict(list)
    for path in sorted((root / f"stages-{precision}" / "compare" / "quick").glob("*/result.json")):
        rec = json.loads(path.read_text())
        if rec.get("precision") not in (None, precision):
            raise SystemExit(f"{path} trained in {rec['precision']}, not {precision}")
        for s in rec.get("stages", []):
            if s.get("cached"):
                continue
            name = s["stage"]
            if name in ("rloo", "dpo", "labels", "reward_model"):  # the work differs by the method's labels
                name = f"{name} ({rec['method']})"
            out[name].append(float(s["seconds"]))
    return dict(out)


def table(stages: dict[str, dict[str, list[float]]], walls: dict[str, float | None]) -> str:
    lines = ["| stage (method) | fp32 s | bf16-mixed s | fp32 / bf16 |", "|---|---|---|---|"]
    a, b = stages.get(PRECISIONS[0], {}), stages.get(PRECISIONS[1], {})
    for name in sorted(set(a) | set(b)):
        ta, tb = sum(a.get(name, [])), sum(b.get(name, []))
        ratio = f"{ta / tb:.2f}x" if ta and tb else "n/a"
        n = max(len(a.get(name, [])), len(b.get(name, [])))
        lines.append(f"| {name}{f' (sum of {n} runs)' if n > 1 else ''} | {ta:.1f} | {tb:.1f} | {ratio} |")
    if all(walls.get(p) for p in PRECISIONS):
        wa, wb = walls[PRECISIONS[0]], walls[PRECISIONS[1]]
        lines.append(f"| **whole comparison (wall)** | {wa:.0f} | {wb:.0f} | {wa / wb:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--collect", action="store_true", help="only read runs already under --root")
    ap.add_argument("--root", default=str(REPO / "outputs"), help="where the two runs' outputs go")
    ap.add_argument("--out", default=str(REPO / "bench" / "stages.json"))
    ap.add_argument("--walls", help="with --collect: the two runs' wall seconds, fp32,bf16, as timed")
    ap.add_argument("--sft-32", help="with --collect: the fp32 SFT rounds' wall seconds, as timed (a,b)")
    ap.add_argument("--sft-bf16", help="with --collect: the bf16 SFT rounds' wall seconds, as timed")
    a = ap.parse_args(argv)
    root = Path(a.root)
    sys.path.insert(0, str(REPO / "src"))
    from alignlab.pipeline_record import machine_summary
    from alignlab.utils.precision import cpu_has_bf16

    walls: dict[str, float | None] = dict.fromkeys(PRECISIONS)
    if not a.collect:
        if not cpu_has_bf16():
            print("bench_stages: this CPU has no native bf16 (AVX512-BF16 / AMX): nothing to compare")
            return 0
        for p in PRECISIONS:
            walls[p] = run(p, root)
        sft = extra_stages(root)
    else:
        sft = {
            p: [float(x) for x in (getattr(a, "sft_" + p.split("-")[0]) or "").split(",") if x]
            for p in PRECISIONS
        }
    stages = {p: collect(p, root) for p in PRECISIONS}
    for p in PRECISIONS:
        if sft[p]:
            stages[p]["sft (one process: 40 steps, model load included)"] = sft[p]
    if not any(stages.values()):
        print(f"bench_stages: no runs under {root}/stages-<precision>; run without --collect first")
        return 2
    if a.collect and a.walls:
        walls = dict(zip(PRECISIONS, (float(w) for w in a.walls.split(","))))
    result = {"command": "python " + " ".join(["scripts/bench_stages.py", *(argv if argv is not None else sys.argv[1:])]),
              "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_summary(), "stages_s": stages,
              "wall_s": walls}  # fmt: skip
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(table(stages, walls))
    print(f"\nwrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

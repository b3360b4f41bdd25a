"""Score finished runs with their task's third scorer, without sampling them again.

    python scripts/rescore.py RUNS_DIR --out DIR [--cache-dir PATH] [--archive PATH]

Reads every result record ``RUNS_DIR/*.json`` (what ``alignlab.pipeline`` publishes), and for each one
writes ``DIR/<same name>``: the record unchanged, plus ``eval.per_prompt.third_reward`` and
``base_eval.per_prompt.third_reward``. The completions come from the record (``eval.completions``: prompt
order, the ``samples_per_prompt`` samples of a prompt side by side), the prompts from the record's task
(``eval.task``, its default config; the first ``eval.n`` prompts of ``eval.split``, as the evaluation
took them), and the scorer is the task's ``third_scores``. As in ``alignlab.evaluate``, a prompt's value
is the mean of its k samples' scores, rounded to 6 decimals. The input files are never modified.

Every record is checked before anything is scored: a record without completions (written before
evaluations kept them), a completion count that is not n x k, or a task without a third scorer stops the
script with one line naming the file and field, exit 2.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np

from alignlab.utils.errors import UserError, cli_app

SIDES = ("eval", "base_eval")
PROG = "rescore"


class RescoreError(UserError):
    """A record or an argument the script cannot use; the message is the one line the user reads."""


def load_task(name: str, cache_dir: str | None, archive: str | None):
    """The task a record names, built from its default config (``conf/task/<name>.yaml``)."""
    from alignlab.tasks import compose_task

    overrides = {"cache_dir": cache_dir}
    if archive:
        overrides["archive"] = archive
    return compose_task(name, **overrides)


def check_side(path: Path, record: dict, side: str) -> tuple[str, str, int, int, list[str]]:
    """(task, split, n, k, completions) of ``record[side]``, or a RescoreError naming what is wrong."""
    ev = record.get(side)
    if not isinstance(ev, dict):
        raise RescoreError(f"{path}: no `{side}` section; give result records of finished runs")
    texts = ev.get("completions")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise RescoreError(
            f"{path}: `{side}.completions` is missing (a record written before evaluations kept their "
            "completions); rerun its evaluation, or leave the file out of RUNS_DIR"
        )
    for key in ("task", "split", "n"):
        if key not in ev:
            raise RescoreError(
                f"{path}: `{side}.{key}` is missing; give records written by alignlab.evaluate"
            )
    n, k = int(ev["n"]), int(ev.get("samples_per_prompt") or 1)
    if len(texts) != n * k:
        raise RescoreError(
            f"{path}: `{side}.completions` has {len(texts)} texts, but n={n} prompts x samples_per_prompt={k} "
            f"= {n * k}; the record is inconsistent, rerun its evaluation"
        )
    return str(ev["task"]), str(ev["split"]), n, k, texts


def per_prompt(scores, n: int, k: int) -> list[float]:
    """Each prompt's mean over its k samples (samples of a prompt side by side), rounded as evaluate does."""
    values = np.asarray(scores, dtype=np.float64).reshape(n, k).mean(axis=1)  # (n,)
    return [round(float(x), 6) for x in values]


def rescore(
    runs_dir: Path, out_dir: Path, cache_dir: str | None = None, archive: str | None = None
) -> list[Path]:
    """Write the rescored copies; returns their paths. Raises RescoreError before scoring on bad input."""
    if not runs_dir.is_dir():
        raise RescoreError(
            f"RUNS_DIR {runs_dir} is not a directory; give the folder holding the *.json records"
        )
    if out_dir.resolve() == runs_dir.resolve():
        raise RescoreError(
            f"--out {out_dir} is RUNS_DIR itself; give another folder (the records stay unchanged)"
        )
    paths = sorted(runs_dir.glob("*.json"))
    if not paths:
        raise RescoreError(f"RUNS_DIR {runs_dir} holds no *.json result records")
    # 1. read and check every record first: nothing is scored unless all of them can be
    jobs = []
    for path in paths:
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise RescoreError(f"{path}: not JSON ({e.msg}, line {e.lineno}); give result records") from None
        if not isinstance(record, dict):
            raise RescoreError(f"{path}: not a result record (a JSON object); give result records")
        jobs.append((path, record, {side: check_side(path, record, side) for side in SIDES}))
    tasks = {}
    for path, _, sides in jobs:
        for side, (name, *_rest) in sides.items():
            if name not in tasks:
                task = load_task(name, cache_dir, archive)
                scorer = getattr(task, "third_scores", None)  # not every task has one
                if scorer is None or scorer([], []) is None:
                    raise RescoreError(
                        f"{path}: `{side}.task` is {name!r}, which has no third scorer; nothing to add"
                    )
                tasks[name] = task
    # 2. score and write the copies
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path, record, sides in jobs:
        new = copy.deepcopy(record)
        for side, (name, split, n, k, texts) in sides.items():
            task = tasks[name]
            prompts = task.prompts(split)[:n]
            if len(prompts) < n:
                raise RescoreError(
                    f"{path}: `{side}.n`={n}, but task {name!r} has {len(prompts)} {split} prompts"
                )
            scores = task.third_scores([p for p in prompts for _ in range(k)], texts)
            new[side].setdefault("per_prompt", {})["third_reward"] = per_prompt(scores, n, k)
        target = out_dir / path.name
        target.write_text(json.dumps(new, indent=1) + "\n")
        written.append(target)
        means = ", ".join(f"{s} {np.mean(new[s]['per_prompt']['third_reward']):+.3f}" for s in SIDES)
        print(f"{path.name}: third_reward {means}")
    return written


@cli_app(PROG)
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("runs_dir", type=Path, help="folder of result records (*.json)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the rescored copies")
    parser.add_argument(
        "--cache-dir", help="the tasks' cache root (default: $ALIGNLAB_CACHE or ~/.cache/alignlab)"
    )
    parser.add_argument("--archive", help="a local source archive for tasks that fetch one on first use")
    args = parser.parse_args(argv)
    written = rescore(args.runs_dir, args.out, args.cache_dir, args.archive)
    print(f"{len(written)} records written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

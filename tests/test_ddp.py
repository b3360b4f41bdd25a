"""Scale-out goes through Lightning strategies: two CPU processes (gloo) train every algorithm end to end,
and two-process DPO follows the one-process loss curve when the global batch is the same."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, app_env

DDP = ["trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]


def _train(args: list[str], tmp_path: Path, run: str) -> tuple[Path, str]:
    env = app_env(tmp_path)
    out = tmp_path / run
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "alignlab.train",
            *args,
            "trainer.enable_progress_bar=false",
            f"hydra.run.dir={out}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out, proc.stdout + proc.stderr


def test_sft_ddp_two_cpu_processes(tmp_path):
    out, text = _train(
        ["experiment=sft_tiny", *DDP, "trainer.max_steps=10", "trainer.val_check_interval=5", "logger=csv"],
        tmp_path,
        "run",
    )
    assert "GLOBAL_RANK: 1" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 10 and metrics["val/loss"] < 5.9


@pytest.mark.slow
@pytest.mark.parametrize(
    "experiment,steps,metric",
    [
        ("reward_tiny", ["trainer.max_steps=10", "trainer.val_check_interval=5"], "val/accuracy"),
        # online RL: every rank samples rollouts from its own prompts; metrics are all-reduced, and the
        # running reward statistics and adaptive KL coefficient are computed from all ranks' rollouts
        (
            "ppo_tiny",
            [
                "trainer.max_steps=8",
                "data.batch_size=4",
                "trainer.val_check_interval=1",
                "algo.reward_normalize=true",
                "algo.kl_target=1.0",
            ],
            "val/score",
        ),
        (
            "rloo_tiny",
            [
                "trainer.max_steps=4",
                "data.batch_size=4",
                "trainer.val_check_interval=2",
                "algo.reward_normalize=true",
                "algo.kl_target=1.0",
            ],
            "val/score",
        ),
    ],
)
def test_ddp_two_cpu_processes(experiment, steps, metric, tmp_path):
    out, text = _train(
        [
            f"experiment={experiment}",
            *DDP,
            *steps,
            "trainer.limit_val_batches=1",
            "logger=csv",
            "callbacks=none",
        ],
        tmp_path,
        "run",
    )
    assert "GLOBAL_RANK: 1" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == int(steps[0].split("=")[1])
    assert math.isfinite(metrics[metric])
    assert (out / "policy" / "config.json").exists()


def _val_curve(run: Path) -> dict[int, float]:
    with open(run / "csv" / "metrics.csv") as f:
        return {int(r["step"]): float(r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss")}


def test_dpo_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    """Global batch 8: one process x 8 rows, or two processes x 4 rows. Without shuffling, Lightning's
    DistributedSampler deals rows round-robin, so each step's two half-batches are exactly the one
    process's batch; DDP averages the two ranks' gradients of their mean losses = the gradient of the mean
    over all 8. The validation loss (all-reduced over the ranks' halves of the validation set) after every
    2 steps and the final weights must then agree up to float reduction order."""
    common = [
        "experiment=dpo_tiny",
        "+data.shuffle=false",
        "trainer.max_steps=8",
        "trainer.val_check_interval=2",
        "logger=csv",
        "callbacks=none",
        "trainer.gradient_clip_val=null",
    ]
    one, _ = _train([*common, "data.batch_size=8"], tmp_path, "one")
    two, text = _train([*common, "data.batch_size=4", *DDP], tmp_path, "two")
    assert "GLOBAL_RANK: 1" in text
    a, b = _val_curve(one), _val_curve(two)
    assert sorted(a) == sorted(b) and len(a) == 4, (a, b)
    first = a[min(a)]
    assert a[max(a)] < first - 0.01, a  # it learned something, so the comparison means something
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=2e-4), (step, a, b)
    from safetensors.torch import load_file

    wa, wb = (load_file(str(r / "policy" / "model.safetensors")) for r in (one, two))
    assert wa.keys() == wb.keys()
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst < 1e-4, worst

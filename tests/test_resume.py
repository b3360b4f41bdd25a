"""Kill-and-resume: every stage is started as a real command, SIGKILLed mid-run, started again with the
same command, and must end where an uninterrupted run ends.

* training (SFT, reward model, DPO, PPO, RLOO): killed once ``checkpoints/last.ckpt`` exists; the same
  command (it carries ``ckpt_path=last``, a no-op on a fresh run) continues from the checkpoint: same
  final step, the scheduler's learning rate exactly where the uninterrupted run's is, metrics within
  noise (the tolerances are a few times the seed-to-seed spread measured on these runs).
* labelling and evaluation: killed after a few sampling batches are journaled; the rerun samples only
  the remaining batches and writes byte-identical data sets and metrics.
* pipeline: killed inside the policy stage; the rerun reuses the finished stages and resumes the policy
  stage from its checkpoint.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from conftest import REPO, app_env


def _env(tmp_path: Path) -> dict:
    return app_env(tmp_path)  # ALIGNLAB_CACHE is shared by the killed, resumed and reference runs


def start(args: list[str], tmp_path: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", *args], cwd=REPO, env=_env(tmp_path), stdout=f, stderr=subprocess.STDOUT
        )


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], log: Path, timeout: float = 300) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds (it must still be running then)."""
    t0 = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            pytest.fail(
                f"the run ended (rc {proc.returncode}) before the kill point:\n{log.read_text()[-3000:]}"
            )
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail(f"no kill point within {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def run(args: list[str], tmp_path: Path, log: Path, timeout: float = 600) -> str:
    proc = start(args, tmp_path, log)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    text = log.read_text()
    assert rc == 0, text[-4000:]
    return text


def journal_batches(path: Path) -> int:
    """Finished batches in a sampling journal (header line excluded)."""
    if not path.exists():
        return 0
    return max(0, sum(1 for line in path.read_text(errors="replace").splitlines() if line.endswith("}")) - 1)


# -- training stages ---------------------------------------------------------------------------------------
# name -> (overrides, final step, {metric: absolute tolerance})
# The resumed run continues the interrupted epoch at the batch it stopped at (the datamodule's resumable
# sampler), so a deterministic run (SFT: no dropout, no sampling) ends bit-identical to the uninterrupted
# one. Where tolerances are looser they cover what a restart may still change (e.g. the order of float
# reductions, RNG draws outside the checkpointed state). That the rerun really continued from the
# checkpoint (and did not quietly start over) is checked separately: Lightning's restore line, the
# saved step, the "resuming epoch" line and the scheduler's learning rate, a function of the step count.
TRAIN = {
    "sft": (["experiment=sft_tiny", "callbacks.checkpoint.every_n_train_steps=10"], 40, {"val/loss": 1e-5}),
    "reward": (
        ["experiment=reward_tiny", "callbacks.checkpoint.every_n_train_steps=20"],
        60,
        {"val/loss": 0.1, "val/accuracy": 0.13},
    ),
    # full fine-tune, reference = frozen copy rebuilt from the model config
    "dpo": (
        [
            "experiment=dpo_tiny",
            "algo.precompute_ref_logps=false",
            "callbacks.checkpoint.every_n_train_steps=10",
        ],
        40,
        {"val/loss": 0.3},
    ),
    # LoRA, reference log-probs precomputed and read back from the cache on resume
    "dpo_lora_precompute": (
        ["experiment=dpo_tiny", "peft=lora", "callbacks.checkpoint.every_n_train_steps=10"],
        40,
        {"val/loss": 0.3},
    ),
    "ppo": (
        ["experiment=ppo_tiny", "callbacks.checkpoint.every_n_train_steps=40", "algo.log_samples_every=1000"],
        120,
        {"val/score": 0.15},
    ),
    "rloo": (
        ["experiment=rloo_tiny", "callbacks.checkpoint.every_n_train_steps=10"],
        30,
        {"val/score": 0.15},
    ),
    # full fine-tune + precomputed reference: on resume DPOModule.on_fit_start fingerprints the policy
    # *after* Lightning restored the trained weights, misses the first run's cache and refuses to start
    "dpo_full_precompute": (
        ["experiment=dpo_tiny", "callbacks.checkpoint.every_n_train_steps=10"],
        40,
        {"val/loss": 0.3},
    ),
}
FAST = {"sft"}


def _train_resume(name: str, tmp_path: Path) -> None:
    overrides, final_step, tolerances = TRAIN[name]
    common = [
        "alignlab.train",
        *overrides,
        "logger=csv",
        "trainer.enable_progress_bar=false",
        "ckpt_path=last",
    ]
    killed_dir, straight_dir = tmp_path / "killed", tmp_path / "straight"
    log = tmp_path / "killed.log"
    last = killed_dir / "checkpoints" / "last.ckpt"

    # 1. start, SIGKILL once the first checkpoint is on disk
    proc = start([*common, f"hydra.run.dir={killed_dir}"], tmp_path, log)
    kill_when(proc, last.exists, log)
    assert not (killed_dir / "metrics.json").exists()
    saved_step = torch.load(last, weights_only=True, map_location="cpu")["global_step"]
    assert 0 < saved_step < final_step

    # 2. the same command again: continues from the checkpoint
    text = run([*common, f"hydra.run.dir={killed_dir}"], tmp_path, tmp_path / "resumed.log")
    assert "Restoring states from the checkpoint path" in text, text[-3000:]
    resumed = json.loads((killed_dir / "metrics.json").read_text())

    # 3. an uninterrupted run of the same command
    run([*common, f"hydra.run.dir={straight_dir}"], tmp_path, tmp_path / "straight.log")
    straight = json.loads((straight_dir / "metrics.json").read_text())

    assert resumed["global_step"] == straight["global_step"] == final_step
    lr = [k for k in straight if k.startswith("lr-")]
    for k in lr:  # the scheduler continued from the saved step, not from 0
        assert resumed[k] == pytest.approx(straight[k], rel=1e-6), k
    for metric, tol in tolerances.items():
        assert abs(resumed[metric] - straight[metric]) <= tol, (metric, resumed[metric], straight[metric])


PARAMS = [n if n in FAST else pytest.param(n, marks=[pytest.mark.slow]) for n in TRAIN]


@pytest.mark.parametrize("name", PARAMS)
def test_training_stage_resumes_after_sigkill(name, tmp_path):
    _train_resume(name, tmp_path)


# -- labelling and evaluation --------------------------------------------------------------------------------
def _sampling_resume(app: str, args: list[str], journal_name: str, outputs: list[str], tmp_path: Path):
    killed_dir, straight_dir = tmp_path / "killed", tmp_path / "straight"
    log = tmp_path / "killed.log"
    journal = killed_dir / journal_name
    proc = start([app, *args, f"hydra.run.dir={killed_dir}"], tmp_path, log)
    kill_when(proc, lambda: journal_batches(journal) >= 4, log)
    done_before = journal_batches(journal)
    assert not any((killed_dir / o).exists() for o in outputs)

    text = run([app, *args, f"hydra.run.dir={killed_dir}"], tmp_path, tmp_path / "resumed.log")
    assert f"resuming: {done_before} finished batch(es)" in text, text[-3000:]
    assert not journal.exists()  # dropped once the outputs are written
    run([app, *args, f"hydra.run.dir={straight_dir}"], tmp_path, tmp_path / "straight.log")
    return killed_dir, straight_dir


def _rows(path: Path, drop: tuple[str, ...] = ()) -> list[dict]:
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


def test_label_resumes_sampling_after_sigkill(tmp_path):
    args = [
        "task=sentiment_toy",
        "model=tiny",
        "judge=gold",
        "keep_ties=true",  # the random model's completions mostly tie on VADER
        "split=train",
        "n_prompts=24",
        "batch_size=1",
        "sampling.max_new_tokens=32",
        "progress=false",
    ]
    killed, straight = _sampling_resume(
        "alignlab.label", args, ".pairs.sampling.journal.jsonl", ["pairs.jsonl", "samples.jsonl"], tmp_path
    )
    assert (killed / "samples.jsonl").read_bytes() == (straight / "samples.jsonl").read_bytes()
    assert _rows(killed / "pairs.jsonl") == _rows(straight / "pairs.jsonl")
    assert len(_rows(killed / "samples.jsonl")) == 24


def test_evaluate_resumes_after_sigkill(tmp_path):
    args = [
        "task=sentiment_toy",
        "model=tiny",
        "split=train",
        "n_prompts=24",
        "batch_size=1",
        "sampling.max_new_tokens=32",
        "n_bootstrap=200",
    ]
    killed, straight = _sampling_resume(
        "alignlab.evaluate", args, ".evaluate.journal.jsonl", ["metrics.json", "samples.jsonl"], tmp_path
    )
    assert (killed / "samples.jsonl").read_bytes() == (straight / "samples.jsonl").read_bytes()
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (killed, straight))
    a.pop("completions_per_s"), b.pop("completions_per_s")  # wall time
    assert a == b and a["n"] == 24


# -- pipeline ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_pipeline_resumes_the_stage_it_was_killed_in(tmp_path):
    art = tmp_path / "artifacts"
    steps = [
        "trainer.max_steps=20",
        "data.batch_size=4",
        "trainer.val_check_interval=10",
        "data.max_length=32",
        "data.max_prompt_length=16",
        "callbacks.checkpoint.every_n_train_steps=5",
    ]
    dpo = [f"++profile.dpo.{x}" for x in steps]  # the profile's structured DPO budget
    args = ["alignlab.pipeline", "profile=tiny", "method=dpo", "wandb.enabled=false", *dpo]
    log = tmp_path / "killed.log"
    proc = start([*args, f"artifacts_dir={art}", f"hydra.run.dir={tmp_path}/run"], tmp_path, log)
    kill_when(proc, lambda: any(art.glob("dpo/*/checkpoints/last.ckpt")), log)
    assert (art / "samples").exists() and not list(art.glob("dpo/*/DONE.json"))

    text = run([*args, f"artifacts_dir={art}", f"hydra.run.dir={tmp_path}/run"], tmp_path, tmp_path / "r.log")
    assert "dpo: resuming from" in text and "Restoring states from the checkpoint path" in text
    assert "samples      cached" in text and "labels       cached" in text and "dpo          done" in text
    resumed = json.loads((tmp_path / "run" / "result.json").read_text())

    run(
        [*args, f"artifacts_dir={tmp_path}/art2", f"hydra.run.dir={tmp_path}/run2"],
        tmp_path,
        tmp_path / "s.log",
    )
    straight = json.loads((tmp_path / "run2" / "result.json").read_text())
    (rs,) = [s for s in resumed["stages"] if s["stage"] == "dpo"]
    (ss,) = [s for s in straight["stages"] if s["stage"] == "dpo"]
    assert abs(rs["info"]["val/loss"] - ss["info"]["val/loss"]) <= 0.3
    assert resumed["base_eval"] == {
        **straight["base_eval"],
        "completions_per_s": resumed["base_eval"]["completions_per_s"],
    }

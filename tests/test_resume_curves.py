"""Curves survive a kill and resume (issue 30, item 6).

A training run is SIGKILLed once its first checkpoint is on disk and started again with the same command
(``ckpt_path=last``). Its ``csv/metrics.csv`` must then hold the whole curve, the rows before the resumed
step included and none twice, equal to an uninterrupted run's (SFT on the tiny model is deterministic:
tests/test_resume.py shows the resumed run ends bit-identical); the curve the pipeline puts in result.json
(read from that file) must be whole; and the resumed wandb run (offline) must carry the killed run's id.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from test_resume import kill_when, run, start

STEPS = 24
EVERY = 6  # a checkpoint every EVERY steps
COMMON = [
    "alignlab.train",
    "experiment=sft_tiny",
    "logger=csv_wandb",
    "logger.wandb.system_metrics=false",
    "logger.wandb.console=off",
    f"trainer.max_steps={STEPS}",
    "trainer.val_check_interval=12",
    "trainer.log_every_n_steps=2",
    f"callbacks.checkpoint.every_n_train_steps={EVERY}",
    "trainer.enable_progress_bar=false",
    "ckpt_path=last",
]


def _rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _series(rows: list[dict], metric: str) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r[metric])) for r in rows if r.get(metric)]


def _run_ids(run_dir: Path) -> list[str]:
    return [p.name.rsplit("-", 1)[1] for p in sorted((run_dir / "wandb").glob("offline-run-*")) if p.is_dir()]


@pytest.fixture
def offline_wandb(monkeypatch):
    import test_resume

    base = test_resume._env
    monkeypatch.setattr(test_resume, "_env", lambda tmp: {**base(tmp), "WANDB_MODE": "offline"})


def test_resumed_run_keeps_its_whole_curve_and_wandb_run(tmp_path, offline_wandb):
    from alignlab.pipeline_record import curve

    killed, straight = tmp_path / "killed", tmp_path / "straight"
    last = killed / "checkpoints" / "last.ckpt"

    # 1. killed after the first checkpoint, once a later step is logged (Lightning logs a step's row just
    # after that step's checkpoint is written; a kill in those milliseconds loses that one row), then the
    # same command again
    def after_checkpoint() -> bool:
        rows = _series(_rows(killed), "train/loss") if last.exists() else []
        return bool(rows) and rows[-1][0] > EVERY

    log = tmp_path / "killed.log"
    kill_when(start([*COMMON, f"hydra.run.dir={killed}"], tmp_path, log), after_checkpoint, log, timeout=900)
    before = _series(_rows(killed), "train/loss")
    assert EVERY < before[-1][0] < STEPS
    first_ids = _run_ids(killed)
    text = run([*COMMON, f"hydra.run.dir={killed}"], tmp_path, tmp_path / "resumed.log")
    assert "Restoring states from the checkpoint path" in text, text[-3000:]

    # 2. an uninterrupted run of the same command
    run([*COMMON, f"hydra.run.dir={straight}"], tmp_path, tmp_path / "straight.log")

    a, b = _rows(killed), _rows(straight)
    for metric in ("train/loss", "val/loss", "lr-AdamW"):
        got, want = _series(a, metric), _series(b, metric)
        assert [s for s, _ in got] == [s for s, _ in want], (metric, got, want)  # every step, once
        assert [v for _, v in got] == pytest.approx([v for _, v in want], abs=1e-5), metric
    assert len(a) == len(b)
    assert _series(a, "train/loss")[0][0] < before[-1][0]  # the rows before the resume were kept

    # 3. the curve the pipeline records in result.json is read from that file: whole as well
    cfg = OmegaConf.create(
        {"algo": {"_target_": "alignlab.modules.reward.RewardModule"}, "data": {"batch_size": 4}}
    )
    pts = curve({"stage": "sft", "dir": str(killed)}, cfg)["points"]
    want = curve({"stage": "sft", "dir": str(straight)}, cfg)["points"]
    assert [p[0] for p in pts] == [p[0] for p in want] and len(pts) == STEPS // 2
    assert [p[1] for p in pts] == pytest.approx([p[1] for p in want], abs=1e-4)

    # 4. the resumed wandb run is the killed one, continued (wandb sync merges runs of one id)
    ids = _run_ids(killed)
    assert len(first_ids) == 1 and len(ids) == 2 and set(ids) == set(first_ids), (first_ids, ids)


def test_csv_log_of_a_resumed_run_continues_the_earlier_file(tmp_path):
    """The same in-process, in seconds: a run logs steps 0-9 and dies (no finalize); the run resumed
    from the checkpoint at step 6 logs 6-11, with a new column. Rows 0-5 stay, 6-9 are the new run's."""
    from alignlab.loggers import make_csv_logger

    first = make_csv_logger(str(tmp_path))
    for s in range(10):
        first.log_metrics({"train/loss": float(s)}, step=s)  # written as logged
    second = make_csv_logger(str(tmp_path))
    for s in range(6, 12):
        second.log_metrics({"train/loss": 100.0 + s, "val/loss": 1.0}, step=s)
    rows = _rows(tmp_path)
    assert _series(rows, "train/loss") == [(s, float(s)) for s in range(6)] + [
        (s, 100.0 + s) for s in range(6, 12)
    ]
    assert _series(rows, "val/loss") == [(s, 1.0) for s in range(6, 12)]


def test_wandb_logger_of_a_resumed_run_reuses_its_run_id(tmp_path):
    from alignlab.loggers import make_wandb_logger

    fresh = make_wandb_logger(save_dir=str(tmp_path), mode="disabled")._wandb_init
    assert fresh.get("id") is None and fresh.get("resume") is None
    for name in ("offline-run-20261203_101500-aaaa1111", "offline-run-20261203_121500-bbbb2222"):
        (tmp_path / "wandb" / name).mkdir(parents=True)
    again = make_wandb_logger(save_dir=str(tmp_path), mode="disabled")._wandb_init
    assert (again["id"], again["resume"]) == ("bbbb2222", "allow")  # the newest attempt's run

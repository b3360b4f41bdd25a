"""Loggers: a training run's wandb run holds the whole redacted config and the curves, grouped and typed as
asked; stage runs stay apart from a wandb agent's sweep run; console and system metrics are settings."""

from __future__ import annotations

import pytest
import wandb

from alignlab.loggers import log_stage_run, make_wandb_logger, offline_runs, outside_sweep_run
from alignlab.train import train
from alignlab.utils.config import REDACTED
from conftest import compose


def test_wandb_run_has_whole_config_curves_group_and_job_type(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("MY_API_KEY", "sk-wandb-secret-24680")
    cfg = compose(
        [
            "experiment=sft_tiny",
            "logger=wandb",
            "logger.wandb.group=compare-dpo-vs-rlhf",
            "logger.wandb.job_type=policy",
            "logger.wandb.system_metrics=false",
            f"paths.output_dir={tmp_path}",
            "trainer.max_steps=4",
            "trainer.val_check_interval=2",
            "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false",
            "+extra.api_key=sk-wandb-secret-24680",
        ]
    )
    train(cfg)
    wandb.teardown()  # the wandb service writes the run file out when it stops
    (run,) = offline_runs(tmp_path / "wandb")
    assert (run.group, run.job_type, run.project) == ("compare-dpo-vs-rlhf", "policy", "alignlab")
    # the whole resolved config, not only the datamodule's arguments
    assert run.config["algo"]["optimizer"]["lr"] == pytest.approx(3e-3)
    assert run.config["trainer"]["max_steps"] == 4
    assert run.config["model"]["source"] == "tiny"
    assert run.config["seed"] == 0
    assert run.config["extra"]["api_key"] == REDACTED
    assert "hydra" not in run.config
    losses = [row["train/loss"] for row in run.history if "train/loss" in row]
    assert len(losses) >= 2 and all(isinstance(x, float) for x in losses)
    assert "val/loss" in run.summary


def test_console_and_system_metrics_are_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    on = make_wandb_logger(save_dir=str(tmp_path))._wandb_init["settings"]
    assert on.console != "off" and on.x_disable_stats is False  # on by default ("auto" resolves to a mode)
    off = make_wandb_logger(save_dir=str(tmp_path), console="off", system_metrics=False)
    assert (off._wandb_init["settings"].console, off._wandb_init["settings"].x_disable_stats) == ("off", True)
    cfg = compose(["logger=wandb", f"paths.output_dir={tmp_path}"])
    assert cfg.logger.wandb.console == "auto" and cfg.logger.wandb.system_metrics is True


def test_stage_runs_stay_out_of_the_agents_sweep_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_RUN_ID", "sweeprun01")
    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep0001")
    wandb.teardown()
    try:
        with outside_sweep_run():
            stage = wandb.init(project="p", dir=str(tmp_path))
            stage_id, stage_sweep = stage.id, stage.sweep_id
            stage.finish()
        summary = wandb.init(project="p", dir=str(tmp_path))
        summary_id, summary_sweep = summary.id, summary.sweep_id
        summary.finish()
    finally:
        wandb.teardown()
    assert stage_id != "sweeprun01" and not stage_sweep
    assert (summary_id, summary_sweep) == ("sweeprun01", "sweep0001")


def test_stage_run_without_lightning_logger(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_RUN_ID", "sweeprun02")
    config = {"judge": {"name": "gold", "api_key": "sk-stage-secret-1357"}, "seed": 3}
    log_stage_run(tmp_path, config, {"gold_accuracy": 0.75, "note": "text"}, group="cmp", job_type="label")
    wandb.teardown()
    (run,) = offline_runs(tmp_path)
    assert (run.group, run.job_type) == ("cmp", "label") and run.run_id != "sweeprun02"
    assert run.config["seed"] == 3 and run.config["judge"]["api_key"] == REDACTED
    assert run.summary["gold_accuracy"] == 0.75 and "note" not in run.summary

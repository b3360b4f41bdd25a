"""One check for "does this run log to wandb" (alignlab.loggers.wandb_loggers), used by the samples
callback, the RL rollout tables and the train app's wandb.finish: a subclass of Lightning's WandbLogger
counts too (the class-name comparison it replaces missed subclasses)."""

from __future__ import annotations

from lightning.pytorch.loggers import CSVLogger, WandbLogger

from alignlab.loggers import wandb_loggers


class TeamLogger(WandbLogger):
    """A user's own subclass, e.g. one that adds team defaults."""


def test_wandb_loggers_keeps_wandb_and_its_subclasses_only(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    csv = CSVLogger(tmp_path)
    plain = WandbLogger(save_dir=str(tmp_path), offline=True)
    team = TeamLogger(save_dir=str(tmp_path), offline=True)
    assert wandb_loggers([csv, plain, team]) == [plain, team]
    assert wandb_loggers([csv]) == []


def test_the_callers_use_the_one_check():
    import inspect

    from alignlab import train
    from alignlab.callbacks import samples
    from alignlab.modules import rl_state

    for module in (train, samples, rl_state):
        source = inspect.getsource(module)
        assert "wandb_loggers(" in source and '"WandbLogger"' not in source, module.__name__

"""Every experiment, debug and hparams_search config composes; the cheap parts instantiate."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF, compose

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
DEBUG = sorted(p.stem for p in (CONF / "debug").glob("*.yaml"))
TRAINERS = sorted(p.stem for p in (CONF / "trainer").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(name, tmp_path):
    lines = (CONF / "experiment" / f"{name}.yaml").read_text().splitlines()
    header = lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))]  # the comment block
    assert header[0].strip() == "# @package _global_"
    assert any(f"experiment={name}" in line for line in header), "name the command on top of the file"
    cfg = compose([f"experiment={name}", f"paths.output_dir={tmp_path}"])
    assert cfg.algo._target_.startswith("alignlab.")
    # everything but user-supplied paths (???) resolves
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    spec = instantiate(cfg.model)
    assert spec.source in ("tiny", "smollm2_135m", "hf")


@pytest.mark.parametrize("name", DEBUG)
def test_debug_composes(name, tmp_path):
    cfg = compose(["experiment=sft_tiny", f"debug={name}", f"paths.output_dir={tmp_path}"])
    OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("name", TRAINERS)
def test_trainer_configs_compose(name, tmp_path):
    cfg = compose([f"trainer={name}", f"paths.output_dir={tmp_path}"])
    assert cfg.trainer._target_ == "lightning.pytorch.trainer.Trainer"


def test_default_config_is_bundled_lora_sft(tmp_path):
    cfg = compose([f"paths.output_dir={tmp_path}"])
    assert cfg.model.source == "smollm2_135m" and cfg.peft.r > 0 and cfg.algo._target_.endswith("SFTModule")
    assert cfg.logger.wandb.mode == "auto"
    assert not Path(cfg.paths.cache_dir).resolve().is_relative_to(Path(__file__).resolve().parents[1])


def test_contradictory_config_fails_with_keys(tmp_path):
    from alignlab.train import train
    from alignlab.utils.config import ConfigError

    cfg = compose(["model=hf", f"paths.output_dir={tmp_path}", "model.name_or_path=null"])
    with pytest.raises(ConfigError, match="model.name_or_path"):
        train(cfg)


def test_unknown_key_is_rejected(tmp_path):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="no_such_key"):
        compose(["experiment=sft_tiny", "trainer.no_such_key=1"])


def test_manual_optimisation_rejects_trainer_clipping(tmp_path):
    from alignlab.train import train
    from alignlab.utils.config import ConfigError

    cfg = compose(["experiment=ppo_tiny", "trainer.gradient_clip_val=1.0", f"paths.output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"trainer.gradient_clip_val=null"):
        train(cfg)


def test_readme_column_mapping_override_composes(tmp_path):
    """The README's `data.columns={prompt: instruction, completion: output}` must compose (struct config)."""
    cfg = compose(
        [
            "data=sft",
            "data.train_path=x.jsonl",
            "data.columns={prompt: instruction, completion: output}",
            f"paths.output_dir={tmp_path}",
        ]
    )
    assert dict(cfg.data.columns) == {"prompt": "instruction", "completion": "output"}
    cfg = compose(
        [
            "data=preference",
            "data.train_path=x.jsonl",
            "data.columns.chosen=a",
            f"paths.output_dir={tmp_path}",
        ]
    )
    assert cfg.data.columns.chosen == "a" and cfg.data.columns.rejected is None


@pytest.mark.parametrize("app", ["train", "pipeline"])
def test_runs_started_in_the_same_second_get_their_own_run_dirs(app, monkeypatch):
    """Hydra's run and sweep directories carry microseconds: two identical runs started in the same second
    (here the clock is frozen at one second, its microseconds moving) do not share one directory."""
    import datetime as dt

    import hydra.core.utils

    ticks = iter(range(1, 1000))

    class Clock(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return dt.datetime(2026, 12, 3, 14, 0, 0, next(ticks))

    monkeypatch.setattr(hydra.core.utils, "datetime", Clock)
    dirs = []
    for _ in range(2):
        cfg = compose([], app, return_hydra_config=True)
        dirs.append((str(cfg.hydra.run.dir), str(cfg.hydra.sweep.dir)))
    assert dirs[0][0] != dirs[1][0] and dirs[0][1] != dirs[1][1], dirs
    assert all("2026-12-03_14-00-00" in d for pair in dirs for d in pair)  # still sorted by start time

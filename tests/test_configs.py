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

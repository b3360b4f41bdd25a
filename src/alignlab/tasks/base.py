"""The task interface, and the one way to build a task: from its ``conf/task/<name>.yaml`` config.

A new task is a ``Task`` subclass plus a config in ``conf/task/`` whose ``_target_`` names it; the
algorithms never change. Every app builds its task with ``build_task(cfg.task)``: the same config gives
the same object within a process, so the prompts, the gold reward and the judge's rubric of one run
always come from one task.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

_BUILT: dict[str, Task] = {}


class Task:
    """Prompts (train/val/test), a gold reward and a judge rubric."""

    name: str = "task"
    rubric: str = ""
    """What a judge LLM is asked to prefer (used by RLAIF judges)."""

    def prompt_file(self, split: str) -> str:
        """Path of a JSONL file of ``{"prompt": ...}`` rows for ``split`` (train, val or test)."""
        raise NotImplementedError

    def prompts(self, split: str) -> list[str]:
        """The prompt strings of ``split``."""
        raise NotImplementedError

    def gold_scores(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """Ground-truth reward of each completion, shape (N,)."""
        raise NotImplementedError

    def second_scores(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray | None:
        """An independent second scorer, reported beside the gold one (None if the task has none)."""
        return None


def build_task(cfg: Any) -> Task:
    """The task of a ``conf/task`` config (``{_target_: ..., **kwargs}``); a ``Task`` passes through.

    Built once per distinct config in a process, so every component of a run shares one object.
    """
    if isinstance(cfg, Task):
        return cfg
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, dict) or "_target_" not in cfg:
        from alignlab.utils.config import ConfigError

        raise ConfigError(
            f"a task must be a conf/task config with a _target_ (got {cfg!r}); choose one with task=<name>, "
            "e.g. task=sentiment"
        )
    key = json.dumps(cfg, sort_keys=True, default=str)
    if key not in _BUILT:
        from hydra.utils import instantiate

        _BUILT[key] = instantiate(cfg)
    return _BUILT[key]


def compose_task(name: str, **overrides: Any) -> Task:
    """Build ``conf/task/<name>.yaml`` outside a Hydra app (CLIs, notebooks), with key overrides."""
    from omegaconf import OmegaConf

    from alignlab.utils.hydra import CONF_DIR

    cfg = OmegaConf.load(f"{CONF_DIR}/task/{name}.yaml")
    for k, v in overrides.items():
        if v is not None:
            cfg[k] = v
    if "cache_dir" in cfg and OmegaConf.is_interpolation(cfg, "cache_dir"):
        cfg.cache_dir = None  # ${paths.cache_dir} has no `paths` here: the task's default cache
    return build_task(cfg)


TASK_URL = "task://"


def resolve_task_paths(data_cfg: Any, task: Task | None) -> None:
    """Replace every ``task://SPLIT`` value of a data config by the task's prompt file of that split."""
    from omegaconf import open_dict

    from alignlab.utils.config import ConfigError

    for key in list(data_cfg.keys()):
        value = data_cfg.get(key)
        if not (isinstance(value, str) and value.startswith(TASK_URL)):
            continue
        split = value[len(TASK_URL) :]
        if task is None:
            raise ConfigError(
                f"data.{key}={value} reads the run's task, but no task is set; add task=<name> "
                "(e.g. task=sentiment)"
            )
        if "@" in split or "/" in split or not split:
            raise ConfigError(f"data.{key}={value}: expected task://SPLIT (train, val or test)")
        with open_dict(data_cfg):
            data_cfg[key] = task.prompt_file(split)

"""What a task's scorers are, in words, for run records and the comparison report.

A scorer's name is the task's own ``gold_scorer`` / ``second_scorer`` attribute when it sets one, else the
first line of the docstring of its ``gold_scores`` / ``second_scores`` method, without the shape and range
the house style puts there ("VADER compound of each completion (or prompt + completion)"). A task that
keeps ``Task.second_scores`` (no second scorer) has none. ``scorers_of_task_name`` reads a task's class
from ``conf/task/<name>.yaml`` without building it (no data is prepared): the report's fallback for
records made before the names were recorded.
"""

from __future__ import annotations

from typing import Any

from alignlab.tasks.base import Task

_METHODS = {"gold_scorer": "gold_scores", "second_scorer": "second_scores"}


def scorer_name(task: Any, key: str) -> str | None:
    """``key`` (``gold_scorer`` or ``second_scorer``) of a task object or class, None when it has none."""
    own = getattr(task, key, None)
    if isinstance(own, str) and own:
        return own
    cls = task if isinstance(task, type) else type(task)
    method = getattr(cls, _METHODS[key], None)
    if method is None or method is getattr(Task, _METHODS[key]):
        return None
    doc = (method.__doc__ or "").strip().splitlines()
    if not doc:
        return cls.__name__ + "." + _METHODS[key]
    return doc[0].split(", shape")[0].strip().rstrip(".")


def scorers(task: Any) -> dict[str, str | None]:
    """``{"gold_scorer": ..., "second_scorer": ...}`` of a task object or class."""
    return {key: scorer_name(task, key) for key in _METHODS}


def scorers_of_task_name(name: str) -> dict[str, str | None]:
    """The scorers of ``conf/task/<name>.yaml``'s class as the code describes them today (the class is
    imported, not built); both None when the name has no config or its class cannot be imported."""
    import importlib

    from omegaconf import OmegaConf

    from alignlab.utils.hydra import CONF_DIR

    none = dict.fromkeys(_METHODS)
    path = f"{CONF_DIR}/task/{name}.yaml"
    try:
        cfg = OmegaConf.load(path)
        while "_target_" not in cfg and cfg.get("defaults"):  # a task that only picks another (default.yaml)
            cfg = OmegaConf.load(f"{CONF_DIR}/task/{cfg.defaults[0]}.yaml")
        module, _, attr = str(cfg["_target_"]).rpartition(".")
        cls = getattr(importlib.import_module(module), attr)
    except Exception:  # a name from another checkout, a task outside the package: not stated
        return none
    return scorers(cls) if isinstance(cls, type) and issubclass(cls, Task) else none

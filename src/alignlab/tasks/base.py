"""The task interface. A new task is a small module that subclasses ``Task`` and registers itself,
plus a config in ``conf/task/``; the algorithms never change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

_REGISTRY: dict[str, Callable[..., Task]] = {}


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


def register_task(name: str):
    def deco(factory):
        _REGISTRY[name] = factory
        return factory

    return deco


def get_task(name: str, **kwargs) -> Task:
    if name not in _REGISTRY:
        import importlib

        try:  # tasks live in alignlab.tasks.<name>
            importlib.import_module(f"alignlab.tasks.{name}")
        except ModuleNotFoundError:
            pass
    if name not in _REGISTRY:
        raise KeyError(f"unknown task {name!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name](**kwargs)

"""The task's gold reward as a reward function (the oracle: an upper bound for learned rewards)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from alignlab.rewards.base import RewardFunction


class GoldReward(RewardFunction):
    """Scores completions with ``Task.gold_scores`` of the run's task."""

    def __init__(self, task: Any = None):
        """
        Args:
            task: the run's task: its ``conf/task`` config (``${task}`` in the reward config, built once per
                process by ``alignlab.tasks.build_task``) or a ``Task``.
        """
        from alignlab.tasks import build_task
        from alignlab.utils.config import ConfigError

        if task is None:
            raise ConfigError(
                "the gold reward needs the run's task: add task=<name> to the command "
                "(conf/task, or your own: docs/tasks.md)"
            )
        self.task = build_task(task)
        from alignlab.evaluator import GOLD_TARGETS, has_gold, no_gold_error

        if not has_gold(self.task):  # a task without a gold reward: one line, the fix
            raise no_gold_error(self.task, *GOLD_TARGETS["alignlab.rewards.gold.GoldReward"])
        self.name = f"gold[{self.task.name}]"

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        return torch.as_tensor(self.task.gold_scores(list(prompts), list(completions)), dtype=torch.float32)

"""The task's gold reward as a reward function (the oracle: an upper bound for learned rewards)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from alignlab.rewards.base import RewardFunction


class GoldReward(RewardFunction):
    """Scores completions with ``Task.gold_scores`` of a registered task."""

    def __init__(self, task: str = "sentiment", task_kwargs: dict | None = None):
        """
        Args:
            task: registered task name (``alignlab.tasks.get_task``).
            task_kwargs: keyword arguments for the task's constructor.
        """
        from alignlab.tasks.base import get_task

        self.task = get_task(task, **dict(task_kwargs or {}))
        self.name = f"gold[{task}]"

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        return torch.as_tensor(self.task.gold_scores(list(prompts), list(completions)), dtype=torch.float32)

"""Learning-rate schedules: transformers' schedule functions behind the factories the configs name
(``_target_: alignlab.utils.schedules.warmup_cosine``, ``_partial_: true``), so the config keys stay
``warmup_steps`` / ``total_steps`` / ``min_ratio`` whichever implementation is underneath."""

from __future__ import annotations

import torch


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int = 0, total_steps: int = 1000, min_ratio: float = 0.1
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base LR (the first step already at 1/``warmup_steps`` of it, never 0),
    then cosine decay to ``min_ratio`` x base LR at ``total_steps`` (keep it at ``trainer.max_steps``:
    the cosine rises again after it). transformers'
    ``get_cosine_with_min_lr_schedule_with_warmup_lr_rate``."""
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup_lr_rate

    return get_cosine_with_min_lr_schedule_with_warmup_lr_rate(
        optimizer,
        num_warmup_steps=int(warmup_steps),
        num_training_steps=max(int(total_steps), 1),
        min_lr_rate=float(min_ratio),
    )


def constant(optimizer: torch.optim.Optimizer, warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up as in ``warmup_cosine``, then the base LR (a cosine whose floor is 1)."""
    return warmup_cosine(optimizer, warmup_steps=warmup_steps, total_steps=warmup_steps + 1, min_ratio=1.0)

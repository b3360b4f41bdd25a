"""Stop a run at the first non-finite loss, naming the step, before a bad update is checkpointed."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite."""


class NanGuard(L.Callback):
    """Checks every loss before its backward pass; on NaN/inf raises with the step and the last good checkpoint.

    The check runs before the optimiser step, so no update is made from a bad loss, and checkpoints
    (written by ``ModelCheckpoint`` at its cadence) all predate it. Manual optimisation (PPO, RLOO) is
    covered too: ``manual_backward`` calls the same hook.
    """

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        value = float(loss.detach())
        if math.isfinite(value):
            return
        ckpt = _last_checkpoint(trainer)
        where = f"the last good checkpoint is {ckpt}" if ckpt else "no checkpoint was written before it"
        raise NonFiniteLossError(
            f"non-finite training loss ({value}) at step {trainer.global_step}; {where}. "
            "Lower the learning rate, check the data, or resume with ckpt_path=<checkpoint>."
        )


def _last_checkpoint(trainer: L.Trainer) -> str | None:
    cb = trainer.checkpoint_callback
    if cb is None:
        return None
    for cand in (getattr(cb, "last_model_path", ""), getattr(cb, "best_model_path", "")):
        if cand and Path(cand).exists():
            return cand
    return None

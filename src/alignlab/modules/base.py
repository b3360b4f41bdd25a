"""What every alignlab LightningModule shares: the policy, optimiser wiring and lean checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch

from alignlab.models.peft import is_peft


class PolicyModule(L.LightningModule):
    """Holds a (possibly LoRA-wrapped) causal LM as ``self.policy``.

    Checkpoints hold only the trainable parameters (the adapter under LoRA) plus optimiser, scheduler
    and loop state; the frozen base is rebuilt from the model config, so a checkpoint of a LoRA run is
    megabytes, not the whole model.
    """

    # frozen base weights are not in our checkpoints, so loading is not strict
    strict_loading = False

    def __init__(
        self, policy, tokenizer, optimizer: Callable | None = None, scheduler: Callable | None = None
    ):
        super().__init__()
        self.policy = policy
        self.tokenizer = tokenizer
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler

    # -- optimisation -------------------------------------------------------------------------
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self):
        params = self.trainable_parameters()
        if not params:
            raise RuntimeError("no trainable parameters: check peft / model settings")
        opt = (
            self.optimizer_factory(params=params)
            if self.optimizer_factory
            else torch.optim.AdamW(params, lr=1e-4)
        )
        if self.scheduler_factory is None:
            return opt
        sched = self.scheduler_factory(optimizer=opt)
        if isinstance(sched, dict):  # already a Lightning scheduler dict
            return {"optimizer": opt, "lr_scheduler": sched}
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- checkpoints ------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = {n for n, p in self.named_parameters() if p.requires_grad}
        keep |= {n for n, _ in self.named_buffers() if not n.startswith("policy.")}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def save_policy(self, directory: str | Path) -> Path:
        """Write the policy for reuse: the adapter (LoRA) or full weights, plus the tokenizer."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.policy.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        return directory

    @property
    def uses_lora(self) -> bool:
        return is_peft(self.policy)

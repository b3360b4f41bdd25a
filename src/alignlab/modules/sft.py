"""Supervised fine-tuning: next-token loss on completion tokens only."""

from __future__ import annotations

import torch

from alignlab.losses.sft import masked_nll
from alignlab.models.logprobs import token_logprobs
from alignlab.modules.base import PolicyModule


class SFTModule(PolicyModule):
    """SFT on (prompt, completion) batches; logs ``train/loss``, ``val/loss`` and ``val/ppl``."""

    def __init__(self, policy, tokenizer, optimizer=None, scheduler=None):
        """
        Args:
            policy: the causal LM (LoRA-wrapped or not), built by the entry point.
            tokenizer: its tokenizer.
            optimizer: partial optimiser factory taking ``params``.
            scheduler: partial scheduler factory taking ``optimizer`` (optional).
        """
        super().__init__(policy, tokenizer, optimizer, scheduler)

    def _loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        logps, mask = token_logprobs(
            self.policy, batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
        )
        return masked_nll(logps, mask), mask.sum()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, ntok = self._loss(batch)
        bs = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/tokens", ntok.float(), reduce_fx="sum", batch_size=bs)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_nll = torch.zeros((), device=self.device)
        self._val_tok = torch.zeros((), device=self.device)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, ntok = self._loss(batch)
        self._val_nll += loss.detach() * ntok
        self._val_tok += ntok

    def on_validation_epoch_end(self) -> None:
        # token-weighted over the whole validation set, summed across processes
        nll = self.trainer.strategy.reduce(self._val_nll, reduce_op="sum")
        tok = self.trainer.strategy.reduce(self._val_tok, reduce_op="sum")
        loss = nll / tok.clamp(min=1)
        self.log("val/loss", loss, prog_bar=True)
        self.log("val/ppl", torch.exp(loss.clamp(max=50.0)))

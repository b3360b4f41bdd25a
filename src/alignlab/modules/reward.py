"""Reward model (``algo=reward``): a causal-LM backbone with a scalar head (``alignlab.models.heads``),
trained with Bradley–Terry."""

from __future__ import annotations

from pathlib import Path

import torch

from alignlab.losses.reward import bradley_terry_loss, calibration_bins, preference_accuracy
from alignlab.models.heads import (
    ScalarHead,
    backbone,
    hidden_size,
    plain_spec,
    save_reward_head,
    sequence_scores,
)
from alignlab.models.logprobs import attention_kind, shared_prompt_hidden, shared_prompt_layout
from alignlab.modules.base import PolicyModule
from alignlab.utils.errors import ConfigError
from alignlab.utils.io import atomic_open


class RewardModule(PolicyModule):
    """Bradley–Terry reward model; logs ``train|val/accuracy``, ``val/margin``, ``val/ece`` and writes a
    calibration figure (``<run>/calibration/step_N.png``) after each validation."""

    def __init__(
        self,
        policy,
        tokenizer,
        optimizer=None,
        scheduler=None,
        margin: float = 0.0,
        soft_labels: bool = True,
        center_rewards_coef: float = 0.0,
        calibration_num_bins: int = 10,
        plot_calibration: bool = True,
        base_model=None,
        prompt_format: dict | None = None,
    ):
        """
        Args:
            policy: the backbone causal LM (LoRA-wrapped or not), built by the entry point.
            tokenizer: its tokenizer.
            optimizer: partial optimiser factory taking ``params``.
            scheduler: partial scheduler factory taking ``optimizer`` (optional).
            margin: gap the chosen reward must clear, d = r_c - r_r - margin (0 = plain Bradley–Terry).
            soft_labels: use ``p_chosen`` from the data as a soft target (cross-entropy); off = hard labels.
            center_rewards_coef: weight of mean((r_c + r_r)^2), which keeps rewards centred on 0 (0 disables).
            calibration_num_bins: bins of the calibration curve and ECE.
            plot_calibration: write the calibration PNG after each validation.
            base_model: the model spec (``${model}``), saved so a reward function can rebuild the backbone.
            prompt_format: how the training pairs were encoded (``use_chat_template``, ``system_prompt``,
                ``max_length``, ``max_prompt_length``; the algo config takes them from ``data``), saved so
                a reward function encodes its texts the same way.
        """
        super().__init__(policy, tokenizer, optimizer, scheduler)
        if calibration_num_bins < 2:
            raise ConfigError(f"algo.calibration_num_bins must be >= 2 (got {calibration_num_bins})")
        self.head = ScalarHead(hidden_size(policy))
        self.margin = margin
        self.soft_labels = soft_labels
        self.center_rewards_coef = center_rewards_coef
        self.calibration_num_bins = calibration_num_bins
        self.plot_calibration = plot_calibration
        self.base_model = plain_spec(base_model)
        self.prompt_format = dict(prompt_format or {})

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return sequence_scores(self.policy, self.head, input_ids, attention_mask)

    def _pair_scores(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        n = batch["chosen_input_ids"].shape[0]
        kind = attention_kind(self.policy)
        layout = shared_prompt_layout(batch) if kind in ("sdpa", "eager") else None
        if layout is not None:
            # one row per pair, the prompt run once: prompt | chosen | rejected (same scores)
            hidden = shared_prompt_hidden(backbone(self.policy), layout, kind)  # (B, W, H)
            rows = torch.arange(n, device=hidden.device).repeat(2)  # (2B,)
            scores = self.head(hidden[rows, layout.last_positions()])  # (2B,)
            return scores[:n], scores[n:]
        ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])  # (2B, T)
        mask = torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]])
        scores = self.score(ids, mask)
        return scores[:n], scores[n:]

    def _loss(self, batch: dict):
        chosen, rejected = self._pair_scores(batch)
        p = batch.get("p_chosen") if self.soft_labels else None
        loss = bradley_terry_loss(chosen, rejected, p, self.margin)
        if self.center_rewards_coef:
            loss = loss + self.center_rewards_coef * ((chosen + rejected) ** 2).mean()
        return loss, chosen, rejected, p

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, chosen, rejected, p = self._loss(batch)
        bs = chosen.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/accuracy", preference_accuracy(chosen.detach(), rejected.detach(), p), batch_size=bs)
        self.log("train/margin", (chosen - rejected).detach().mean(), batch_size=bs)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val: list[tuple[torch.Tensor, ...]] = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, chosen, rejected, _ = self._loss(batch)
        self.log("val/loss", loss, batch_size=chosen.shape[0], sync_dist=True)
        p = batch.get("p_chosen", torch.ones_like(chosen)).float()
        self._val.append((chosen.detach().float(), rejected.detach().float(), p))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        chosen, rejected, p = (torch.cat(x) for x in zip(*self._val))
        d = chosen - rejected
        self.log("val/accuracy", preference_accuracy(chosen, rejected, p), sync_dist=True)
        self.log("val/margin", d.mean(), sync_dist=True)
        self.log("val/reward_mean", torch.cat([chosen, rejected]).mean(), sync_dist=True)
        # calibration: both orders of each pair, the P(first > second) = sigma(d - margin) that training
        # fits, against the label
        fit = d - self.margin
        probs = torch.sigmoid(torch.cat([fit, -fit])).cpu()
        targets = torch.cat([p, 1 - p]).cpu()
        pred, emp, count, ece = calibration_bins(probs, targets, self.calibration_num_bins)
        self.log("val/ece", ece.to(self.device), sync_dist=True)
        self._val_reward_stats = (
            torch.cat([chosen, rejected]).mean().item(),
            torch.cat([chosen, rejected]).std().item(),
        )
        trainer = self._trainer
        if (
            self.plot_calibration
            and trainer is not None
            and trainer.is_global_zero
            and not trainer.sanity_checking
        ):
            path = Path(trainer.default_root_dir) / "calibration" / f"step_{trainer.global_step:06d}.png"
            _plot_calibration(path, pred, emp, count, ece.item(), trainer.global_step)

    def save_policy(self, directory: str | Path) -> Path:
        """Backbone (adapter or full weights) + tokenizer, the head, and ``reward_config.json``."""
        directory = super().save_policy(directory)
        fmt = self.prompt_format
        stats = getattr(self, "_val_reward_stats", None)
        save_reward_head(
            directory,
            self.head,
            {
                "peft": self.uses_lora,
                "base_model": self.base_model,
                "use_chat_template": fmt.get("use_chat_template", "auto"),
                "system_prompt": fmt.get("system_prompt"),
                "max_length": int(fmt.get("max_length") or 512),
                "max_prompt_length": int(fmt.get("max_prompt_length") or 256),
                "val_reward_mean": stats[0] if stats else None,
                "val_reward_std": stats[1] if stats else None,
            },
        )
        return directory


def _plot_calibration(path: Path, pred, emp, count, ece: float, step: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keep = count > 0
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect")
    ax.plot(pred[keep].numpy(), emp[keep].numpy(), "o-", label=f"reward model (ECE {ece:.3f})")
    ax.set_xlabel("predicted P(first preferred)")
    ax.set_ylabel("empirical P(first preferred)")
    ax.set_title(f"calibration, step {step}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with atomic_open(path, "wb", encoding=None) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)

"""Reward model (``algo=reward``): a causal-LM backbone with a scalar head, trained with Bradley–Terry.

The score of a sequence is the head applied to the last hidden state of its last real token (found from
the attention mask: pad == eos for many tokenizers, so never from ``ids != pad``).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from torch import nn

from alignlab.losses.reward import bradley_terry_loss, calibration_bins, preference_accuracy
from alignlab.losses.rl import last_index
from alignlab.models.logprobs import attention_kind, shared_prompt_hidden, shared_prompt_layout
from alignlab.models.peft import is_peft
from alignlab.modules.base import PolicyModule
from alignlab.utils.io import atomic_open, write_json

HEAD_FILE = "reward_head.safetensors"
CONFIG_FILE = "reward_config.json"


def backbone(model) -> nn.Module:
    """The transformer under the LM head (LoRA layers, when present, stay in place)."""
    inner = model.get_base_model() if is_peft(model) else model
    return inner.base_model


def last_hidden_state(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, T, H) final hidden states, without computing the vocabulary logits."""
    out = backbone(model)(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    )
    return out.last_hidden_state


def hidden_size(model) -> int:
    cfg = model.config
    return int(getattr(cfg, "hidden_size", None) or cfg.n_embd)


class ScalarHead(nn.Module):
    """hidden (..., H) -> scalar (...,), kept in float32 whatever the backbone's dtype."""

    def __init__(self, hidden: int):
        super().__init__()
        self.summary = nn.Linear(hidden, 1)
        nn.init.normal_(self.summary.weight, std=1.0 / math.sqrt(hidden + 1))
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1)


def sequence_scores(
    model, head: ScalarHead, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Scalar score of each sequence, read at its last real token: (B, T) -> (B,)."""
    hidden = last_hidden_state(model, input_ids, attention_mask)  # (B, T, H)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    return head(hidden[rows, last_index(attention_mask)])


def _plain(obj):
    """JSON-able copy of a model spec (dataclass / DictConfig / dict)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if obj is None:
        return None
    if dataclasses.is_dataclass(obj):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, dict):
        return {k: _plain(v) if isinstance(v, (dict, DictConfig, ListConfig)) else v for k, v in obj.items()}
    return obj


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
        """
        super().__init__(policy, tokenizer, optimizer, scheduler)
        if calibration_num_bins < 2:
            raise ValueError(f"algo.calibration_num_bins must be >= 2 (got {calibration_num_bins})")
        self.head = ScalarHead(hidden_size(policy))
        self.margin = margin
        self.soft_labels = soft_labels
        self.center_rewards_coef = center_rewards_coef
        self.calibration_num_bins = calibration_num_bins
        self.plot_calibration = plot_calibration
        self.base_model = _plain(base_model)

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
        # calibration: both orders of each pair, predicted P(first > second) against the label
        probs = torch.sigmoid(torch.cat([d, -d])).cpu()
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
        from safetensors.torch import save

        directory = super().save_policy(directory)
        head = {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        with atomic_open(directory / HEAD_FILE, "wb", encoding=None) as f:
            f.write(save(head))
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        hp = getattr(dm, "hparams", {}) or {}
        stats = getattr(self, "_val_reward_stats", None)
        write_json(
            directory / CONFIG_FILE,
            {
                "format": "alignlab-reward-model",
                "hidden_size": hidden_size(self.policy),
                "peft": self.uses_lora,
                "base_model": self.base_model,
                "use_chat_template": hp.get("use_chat_template", "auto"),
                "system_prompt": hp.get("system_prompt"),
                "max_length": int(hp.get("max_length", 512)),
                "max_prompt_length": int(hp.get("max_prompt_length", 256)),
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

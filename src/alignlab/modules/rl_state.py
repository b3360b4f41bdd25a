"""What an online-RL run carries between its steps: a batch of rollouts, and the KL coefficient."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from alignlab.losses.rl import adaptive_kl_coef
from alignlab.utils.errors import ConfigError
from alignlab.utils.io import write_jsonl


# -- KL coefficient ---------------------------------------------------------------------------------------
class KLController:
    """Fixed KL coefficient, or Ziegler et al.'s adaptive one when ``target`` is set."""

    def __init__(self, kl_coef: float, target: float | None = None, horizon: int = 10000):
        if kl_coef < 0:
            raise ConfigError(f"algo.kl_coef must be >= 0 (got {kl_coef})")
        if target is not None and (target <= 0 or horizon <= 0):
            raise ConfigError(f"algo.kl_target ({target}) and algo.kl_horizon ({horizon}) must be positive")
        self.value, self.target, self.horizon = float(kl_coef), target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        if self.target is not None:
            self.value = adaptive_kl_coef(self.value, current_kl, self.target, self.horizon, n_steps)

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


# -- one batch of rollouts ----------------------------------------------------------------------------------
@dataclass
class Rollout:
    prompts: list[str]
    completions: list[str]
    query_responses: torch.Tensor  # (B, P + L) left-padded prompt, right-padded completion
    attention_mask: torch.Tensor  # (B, P + L)
    context_length: int  # P
    responses: torch.Tensor  # (B, L)
    response_mask: torch.Tensor  # (B, L) float
    stopped: torch.Tensor  # (B,) bool: ended with EOS
    raw_scores: torch.Tensor  # (B,) the reward function's scores
    scores: torch.Tensor  # (B,) after normalisation, clipping and the missing-EOS penalty
    logprobs: torch.Tensor | None  # (B, L) under the rollout policy (None until a fused forward sets it)
    ref_logprobs: torch.Tensor  # (B, L) under the reference
    kl: torch.Tensor | None  # (B, L) per-token KL estimate, 0 on padding (set with ``logprobs``)
    engine_logprobs: torch.Tensor | None = None  # (B, L) the sampling engine's (vLLM), None in-process
    is_weights: torch.Tensor | None = None  # (B, L) truncated IS weights pi_trainer / pi_engine, or None

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)

    def index(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """The tensors of a minibatch (rows ``idx``)."""
        return {
            k: getattr(self, k)[idx]
            for k in ("query_responses", "attention_mask", "responses", "response_mask", "logprobs")
        }


def write_samples(trainer, r: Rollout, n: int) -> None:
    """The first ``n`` rollouts of ``r`` as ``<run>/samples/rollouts_<step>.jsonl`` (+ a wandb table)."""
    rows = [
        {
            "step": trainer.global_step,
            "prompt": r.prompts[i],
            "completion": r.completions[i],
            "score": float(r.raw_scores[i]),
            "kl": float(r.kl[i].sum()),
            "stopped": bool(r.stopped[i]),
        }
        for i in range(min(n, len(r.prompts)))
    ]
    write_jsonl(
        Path(trainer.default_root_dir) / "samples" / f"rollouts_{trainer.global_step:06d}.jsonl", rows
    )
    from alignlab.loggers import wandb_loggers

    for lg in wandb_loggers(trainer.loggers):
        cols = list(rows[0])
        lg.log_table(key="samples", columns=cols, data=[[row[c] for c in cols] for row in rows])

"""A trained reward model (``algo=reward``'s ``<run>/policy`` directory) as a reward function."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from alignlab.models.heads import load_reward_model, sequence_scores
from alignlab.rewards.base import RewardFunction


class RewardModelReward(RewardFunction):
    """Scores (prompt, completion) texts with a trained Bradley–Terry reward model.

    Texts are encoded exactly as the reward model's training pairs were (same chat template, EOS after
    the completion), so the policy's tokenizer does not need to match the reward model's.
    """

    def __init__(self, path: str, batch_size: int = 16, dtype: str = "auto", standardize: bool = False):
        """
        Args:
            path: the reward model directory (``<reward run>/policy``).
            batch_size: sequences per forward pass.
            dtype: backbone dtype (``auto``, ``float32``, ``bfloat16``).
            standardize: subtract the mean and divide by the std of the reward model's validation scores.
        """
        from alignlab.data.tokenize import Formatter

        self.model, self.head, self.tokenizer, self.config = load_reward_model(path, dtype)
        self.batch_size = batch_size
        self.standardize = standardize
        if standardize and self.config.get("val_reward_std") is None:
            raise ValueError(
                f"{path}: reward_config.json has no validation statistics; set standardize=false"
            )
        self.formatter = Formatter(
            self.tokenizer,
            self.config.get("use_chat_template", "auto"),
            self.config.get("system_prompt"),
            self.config.get("max_prompt_length", 256),
            self.config.get("max_length", 512),
            "truncate",
        )
        self.name = f"reward_model[{Path(path).name}]"

    def to(self, device) -> RewardModelReward:
        self.model.to(device)
        self.head.to(device)
        return self

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        from alignlab.data.collate import join

        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        device = next(self.head.parameters()).device
        out = []
        for i in range(0, len(prompts), self.batch_size):
            p_ids = [self.formatter.prompt_ids(p) for p in prompts[i : i + self.batch_size]]
            c_ids = [
                self.formatter.completion_ids(c, len(p))
                for p, c in zip(p_ids, completions[i : i + self.batch_size])
            ]
            ids, mask, _ = join(p_ids, c_ids, self.tokenizer.pad_token_id)
            out.append(sequence_scores(self.model, self.head, ids.to(device), mask.to(device)).float().cpu())
        scores = torch.cat(out) if out else torch.zeros(0)
        if self.standardize:
            scores = (scores - self.config["val_reward_mean"]) / max(self.config["val_reward_std"], 1e-6)
        return scores

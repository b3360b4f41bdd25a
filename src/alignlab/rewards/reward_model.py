"""A trained reward model (``algo=reward``'s ``<run>/policy`` directory) as a reward function."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from alignlab.rewards.base import RewardFunction


def load_reward_model(path: str | Path, dtype: str = "auto"):
    """Rebuild (backbone, head, tokenizer, config) from a directory written by ``RewardModule.save_policy``."""
    from safetensors.torch import load_file

    from alignlab.models.loader import ModelSpec, prepare_tokenizer
    from alignlab.modules.reward import CONFIG_FILE, HEAD_FILE, ScalarHead

    path = Path(path).expanduser()
    cfg_file = path / CONFIG_FILE
    if not cfg_file.exists():
        raise FileNotFoundError(
            f"{path} is not a reward model directory (no {CONFIG_FILE}); train one with "
            "`python -m alignlab.train algo=reward ...` and point at its <output_dir>/policy"
        )
    cfg = json.loads(cfg_file.read_text())
    base = cfg.get("base_model")
    if base:  # rebuild the base from its spec, then put the trained weights on it
        spec = ModelSpec(**{**base, "dtype": dtype})
        lm = spec.load()
        tokenizer = lm.tokenizer
        if (path / "adapter_config.json").exists():
            from peft import PeftModel

            model = PeftModel.from_pretrained(lm.model, str(path))
        else:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=spec.resolved_dtype())
    else:  # no spec recorded: the directory loads on its own (adapter_config names its base)
        lm = ModelSpec(source="hf", name_or_path=str(path), dtype=dtype).load()
        model, tokenizer = lm.model, lm.tokenizer
    prepare_tokenizer(tokenizer)
    head = ScalarHead(int(cfg["hidden_size"]))
    head.load_state_dict(load_file(str(path / HEAD_FILE)))
    model.eval()
    head.eval()
    for p in list(model.parameters()) + list(head.parameters()):
        p.requires_grad_(False)
    return model, head, tokenizer, cfg


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
        from alignlab.modules.reward import sequence_scores

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

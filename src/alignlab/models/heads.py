"""Scalar heads on a causal LM's hidden states (reward model, PPO's value head) and the reward-model
directory format.

A sequence's score is the head applied to the last hidden state of its last real token (found from the
attention mask: pad == eos for many tokenizers, so never from ``ids != pad``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch
from torch import nn

from alignlab.models.peft import is_peft

HEAD_FILE = "reward_head.safetensors"
CONFIG_FILE = "reward_config.json"
FORMAT = "alignlab-reward-model"


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


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of ``mask`` (B, T) -> (B,); 0 for an empty row."""
    pos = torch.arange(mask.shape[-1], device=mask.device)
    return (pos * (mask > 0)).argmax(-1)


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


# -- the reward-model directory: backbone (adapter or full weights) + tokenizer, head, config ---------
def plain_spec(obj):
    """JSON-able copy of a model spec (dataclass / DictConfig / dict)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if obj is None:
        return None
    if dataclasses.is_dataclass(obj):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, dict):
        return {
            k: plain_spec(v) if isinstance(v, (dict, DictConfig, ListConfig)) else v for k, v in obj.items()
        }
    return obj


def save_reward_head(directory: str | Path, head: ScalarHead, config: dict) -> None:
    """Write the head and ``reward_config.json`` (``config`` plus the format tag and the head's width)
    beside a backbone saved in ``directory``."""
    from safetensors.torch import save

    from alignlab.utils.io import atomic_open, write_json

    directory = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    with atomic_open(directory / HEAD_FILE, "wb", encoding=None) as f:
        f.write(save(state))
    width = int(head.summary.in_features)
    write_json(directory / CONFIG_FILE, {"format": FORMAT, "hidden_size": width, **config})


def load_reward_model(path: str | Path, dtype: str = "auto"):
    """Rebuild (backbone, head, tokenizer, config) from a directory written by ``save_reward_head`` beside
    its backbone (``RewardModule.save_policy``); everything frozen, in eval mode."""
    from safetensors.torch import load_file

    from alignlab.models.loader import ModelSpec, prepare_tokenizer

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

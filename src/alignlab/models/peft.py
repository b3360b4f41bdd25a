"""LoRA through peft; the reference policy is the same model with the adapter disabled."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

# Sensible per-architecture targets: attention and MLP projections.
DEFAULT_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
}


@dataclass
class LoraSpec:
    """LoRA adapter settings (peft)."""

    r: int = 16
    """Rank of the update."""
    alpha: int = 32
    """Scaling numerator: the update is scaled by alpha / r."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    target_modules: list[str] | None = field(default=None)
    """Module names to adapt; None picks the defaults for the architecture."""


def apply_peft(model, spec: LoraSpec | None):
    """Wrap ``model`` with a LoRA adapter (base weights frozen), or return it unchanged for full fine-tuning."""
    if spec is None:
        return model
    from peft import LoraConfig, PeftModel, get_peft_model

    if isinstance(model, PeftModel):  # a saved adapter was loaded: keep training it
        return model
    mtype = getattr(model.config, "model_type", "")
    targets = list(spec.target_modules) if spec.target_modules else DEFAULT_TARGETS.get(mtype)
    if not targets:
        raise ValueError(
            f"no default LoRA targets for model_type={mtype!r}; set peft.target_modules=[...] "
            "to the names of its linear layers"
        )
    cfg = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
        fan_in_fan_out=(mtype == "gpt2"),
    )
    return get_peft_model(model, cfg)


def is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)


@contextlib.contextmanager
def reference_mode(model):
    """Run ``model`` as the reference policy: adapter disabled (LoRA), no gradient."""
    with torch.no_grad():
        if is_peft(model):
            with model.disable_adapter():
                yield model
        else:
            yield model


def trainable_state_dict(model) -> dict[str, torch.Tensor]:
    """Only the parameters that train (the adapter under LoRA): what a checkpoint needs."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

"""LoRA on an architecture without default targets: peft's "all-linear", not an error."""

from __future__ import annotations

import torch

from alignlab.models.peft import DEFAULT_TARGETS, LoraSpec, apply_peft


def test_unknown_architecture_gets_all_linear_targets():
    from transformers import PhiConfig, PhiForCausalLM

    assert "phi" not in DEFAULT_TARGETS
    cfg = PhiConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    model = PhiForCausalLM(cfg)
    linear = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    wrapped = apply_peft(model, LoraSpec(r=4, alpha=8))
    adapted = {
        n.split(".lora_A")[0].removeprefix("base_model.model.")
        for n, _ in wrapped.named_parameters()
        if ".lora_A." in n
    }
    assert adapted == linear - {"lm_head"}  # every linear layer but the output layer
    assert {"model.layers.0.self_attn.q_proj", "model.layers.1.mlp.fc2"} <= adapted
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)

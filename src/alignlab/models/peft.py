"""LoRA through peft; the reference policy is the same model with the adapter disabled."""

from __future__ import annotations

import contextlib
import weakref
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


def _plain_lora_layers(model) -> list | None:
    """``(layer, adapter)`` for each peft LoRA layer of ``model`` with an active, unmerged plain weight
    adapter, or None when anything is not foldable into the base weight exactly: the adapter off or
    merged, several active adapters, DoRA or another LoRA variant, a LoRA bias, embedding or conv LoRA,
    a quantized or sharded base weight, or modules_to_save / trainable tokens (which disabling the
    adapter would switch off too)."""
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import AuxiliaryTrainingWrapper
    from transformers.pytorch_utils import Conv1D

    layers = []
    for m in model.modules():
        if isinstance(m, AuxiliaryTrainingWrapper):
            return None
        if not isinstance(m, BaseTunerLayer):
            continue
        if type(m) is not LoraLinear or m.merged or m.disable_adapters or len(m.active_adapters) != 1:
            return None
        name = m.active_adapters[0]
        if name not in m.lora_A:  # no update here for the active adapter
            continue
        if name in m.lora_variant or m.use_dora.get(name, False) or m.lora_bias.get(name, False):
            return None
        base = m.get_base_layer()
        w = getattr(base, "weight", None)
        if not isinstance(base, (torch.nn.Linear, Conv1D)) or type(w) is not torch.nn.Parameter:
            return None
        if type(w.data) is not torch.Tensor or not w.is_floating_point() or w.is_meta:
            return None
        layers.append((m, name))
    return layers or None


# folded weights, one buffer per adapted base layer, reused by every sampling call: allocating them afresh
# each call cost several times the fold itself on CPU (SmolLM2-135M: 0.77 s vs 0.13 s per call)
_FOLDED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fold(layer, name: str) -> torch.Tensor:
    """``W + scale * B A`` of one LoRA layer (in the base weight's layout and dtype), in its buffer."""
    w = layer.get_base_layer().weight
    a, b = layer.lora_A[name].weight, layer.lora_B[name].weight  # (r, in), (out, r)
    if layer.fan_in_fan_out:  # GPT-2 Conv1D stores (in, out): the update is (B A)^T = A^T B^T
        a, b = b.T, a.T
    buf = _FOLDED.get(layer)
    if buf is None or buf.shape != w.shape or buf.dtype != w.dtype or buf.device != w.device:
        buf = _FOLDED[layer] = torch.empty_like(w, requires_grad=False)
    return torch.addmm(w.detach(), b.to(w.dtype), a.to(w.dtype), alpha=layer.scaling[name], out=buf)


@contextlib.contextmanager
def merged_adapter(model):
    """Run a LoRA ``model`` as its adapted policy with plain weights, for sampling under ``torch.no_grad``:
    each LoRA wrapper is swapped out of its parent for its base layer, holding ``W + scale * B A`` as a
    frozen parameter, so decoding skips the per-layer adapter calls (and the wrappers' own overhead).

    Memory: the folded weights live in buffers kept for the model's lifetime (one extra copy of the
    adapted weights, about the size of the model's linear layers), because allocating them afresh each
    call cost more than the adapter calls it saves. On exit (also on an exception) the wrappers and the
    original weight parameters are put back (the same tensors, bit-identical: nothing is merged in
    place) and every ``requires_grad`` flag is as before. Yields the model unchanged (adapter path) when it
    is not a peft model, grad is enabled, or a layer cannot be folded exactly (see
    ``_plain_lora_layers``). With lora dropout in training mode the merged model samples without that
    dropout."""
    layers = _plain_lora_layers(model) if is_peft(model) and not torch.is_grad_enabled() else None
    if layers is None:
        yield model
        return
    parent_of = {id(c): (m, attr) for m in model.modules() for attr, c in m.named_children()}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    swapped = []
    try:
        for layer, name in layers:
            base = layer.get_base_layer()
            parent, attr = parent_of[id(layer)]
            swapped.append((parent, attr, layer, base, base.weight))
            base.weight = torch.nn.Parameter(_fold(layer, name), requires_grad=False)
            setattr(parent, attr, base)
        yield model
    finally:
        for parent, attr, layer, base, weight in reversed(swapped):
            base.weight = weight
            setattr(parent, attr, layer)
        for p, flag in flags:
            p.requires_grad_(flag)

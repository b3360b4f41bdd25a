"""Token and sequence log-probabilities: the one forward machinery every algorithm shares.

``token_logprobs`` runs the transformer over every position but the vocabulary head only over the
positions that carry loss (completion tokens): prompt and padding positions never get (V,)-wide logits.
For SmolLM2-135M the head (576 x 49152) is about a fifth of the forward FLOPs per position, and the
log-softmax over the vocabulary is the largest activation, so skipping those rows saves both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# config attributes of HF causal LMs whose forward transforms the head's output (soft-capping, scaling):
# such models take the plain path (full forward), which is always exact
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def gather_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) for each position without materialising a full log-softmax copy.

    logits (..., V), labels (...) -> (...). Uses ``logit[label] - logsumexp(logits)``.
    """
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)  # (...)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy of the categorical given by ``logits`` (B, T, V) -> (B, T)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def split_head(model) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(backbone, LM head) of a HF causal LM (LoRA-wrapped or not), or None when the logits are not
    ``head(backbone(...).last_hidden_state)`` (no separate backbone, or a post-head transform)."""
    from alignlab.models.peft import is_peft

    inner = model.get_base_model() if is_peft(model) else model
    get_head = getattr(inner, "get_output_embeddings", None)
    head = get_head() if get_head is not None else None
    body = getattr(inner, "base_model", inner)
    if head is None or body is inner:
        return None
    cfg = getattr(inner, "config", None)
    if any(getattr(cfg, name, None) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS):
        return None
    return body, head


def _full_token_logprobs(model, input_ids, attention_mask, mask, temperature):
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    logits = out.logits[:, :-1]  # (B, T-1, V)
    if temperature != 1.0:
        logits = logits / temperature
    return gather_logprobs(logits, input_ids[:, 1:]) * mask, logits


def token_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    loss_mask: torch.Tensor,
    temperature: float = 1.0,
    return_logits: bool = False,
):
    """Log-probs of each next token under ``model``, computed only where ``loss_mask`` is set.

    input_ids, attention_mask, loss_mask: (B, T). Returns (B, T-1) log-probs of tokens 1..T-1 (0 where
    the shifted mask is 0) and the shifted mask (B, T-1); with ``return_logits`` also the full
    (B, T-1, V) logits (that path runs the head everywhere).
    """
    mask = loss_mask[:, 1:].to(torch.float32)  # (B, T-1)
    parts = None if return_logits else split_head(model)
    if parts is None:
        logps, logits = _full_token_logprobs(model, input_ids, attention_mask, mask, temperature)
        return (logps, mask, logits) if return_logits else (logps, mask)
    body, head = parts
    # 1. transformer over every position (the same call the causal LM makes before its head)
    hidden = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    # 2. the head only on positions whose next token carries loss: (N, H) -> (N, V)
    keep = mask.bool()  # (B, T-1)
    logits = head(hidden[:, :-1][keep])  # (N, V)
    if temperature != 1.0:
        logits = logits / temperature
    picked = gather_logprobs(logits, input_ids[:, 1:][keep])  # (N,)
    # 3. back to (B, T-1), zeros elsewhere
    logps = torch.zeros(mask.shape, dtype=picked.dtype, device=picked.device).masked_scatter(keep, picked)
    return logps, mask


def sequence_logps(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    loss_mask: torch.Tensor,
    average: bool = False,
) -> torch.Tensor:
    """Sum (or mean, with ``average``) of completion-token log-probs per sequence: (B,)."""
    logps, mask = token_logprobs(model, input_ids, attention_mask, loss_mask)
    total = logps.sum(-1)
    if average:
        return total / mask.sum(-1).clamp(min=1)
    return total

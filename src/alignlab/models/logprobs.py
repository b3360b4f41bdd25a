"""Token and sequence log-probabilities: the one forward machinery every algorithm shares."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gather_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) for each position without materialising a full log-softmax copy.

    logits (B, T, V), labels (B, T) -> (B, T). Uses ``logit[label] - logsumexp(logits)``.
    """
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy of the categorical given by ``logits`` (B, T, V) -> (B, T)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def token_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    loss_mask: torch.Tensor,
    temperature: float = 1.0,
    return_logits: bool = False,
):
    """Log-probs of each next token under ``model``.

    input_ids, attention_mask, loss_mask: (B, T). Returns (B, T-1) log-probs of tokens 1..T-1 and the
    shifted mask (B, T-1); with ``return_logits`` also the (B, T-1, V) logits.
    """
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    logits = out.logits[:, :-1]  # (B, T-1, V)
    if temperature != 1.0:
        logits = logits / temperature
    labels = input_ids[:, 1:]  # (B, T-1)
    mask = loss_mask[:, 1:].to(logits.dtype if logits.is_floating_point() else torch.float32)
    logps = gather_logprobs(logits, labels) * mask
    if return_logits:
        return logps, mask, logits
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

"""GRPO and its loss variants: group-relative advantages, the clipped surrogate with separate lower and
upper clip ranges, the k3 KL term, and the three loss aggregations that distinguish the variants.

- GRPO (Shao et al. 2024, DeepSeekMath): advantages (r_i - mean(r)) / std(r) within each prompt's group
  of k samples; loss averaged over each sequence's tokens, then over the sequences.
- Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-like training"): no std scaling; token losses summed
  and divided by a constant (B x the maximum completion length), so neither long nor short completions
  are favoured by the normalisation.
- DAPO (Yu et al. 2025): clip-higher (epsilon_high > epsilon_low), token losses averaged over every token
  of the batch, and dynamic sampling (groups whose rewards are all equal carry no signal: dropped).

Pure functions of tensors. Shapes: ``B`` sequences (``P`` prompts x ``k`` samples, the k samples of a
prompt contiguous), ``L`` completion tokens; masks are 1 on real completion tokens and 0 on padding.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from alignlab.losses.rl import kl_estimate, masked_mean

LOSS_AGGREGATIONS = ("grpo", "dr_grpo", "dapo")


# -- advantages and dynamic sampling ------------------------------------------------------------------
def _groups(x: torch.Tensor, k: int) -> torch.Tensor:
    if k < 2 or x.dim() != 1 or x.numel() % k:
        raise ValueError(f"{tuple(x.shape)} rewards are not a whole number of groups of k={k} >= 2")
    return x.reshape(-1, k)  # (P, k)


def group_advantages(
    rewards: torch.Tensor, k: int, scale_rewards: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """Group-relative advantages: A_i = r_i - mean_j(r_j) over the k samples of the same prompt, divided
    by the group's standard deviation (Bessel-corrected) plus ``eps`` when ``scale_rewards`` (GRPO; Dr. GRPO
    leaves it out). rewards: (P * k,). Returns (P * k,); a group whose rewards are all equal gets 0.
    """
    grouped = _groups(rewards, k)  # (P, k)
    adv = grouped - grouped.mean(-1, keepdim=True)
    if scale_rewards:
        adv = adv / (grouped.std(-1, keepdim=True) + eps)
    return adv.reshape(-1)


def informative_groups(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """DAPO's dynamic-sampling filter: True for every row whose group's k rewards are not all equal (a
    group with equal rewards has zero advantages and only dilutes the batch). rewards: (P * k,) -> bool."""
    grouped = _groups(rewards, k)  # (P, k)
    varied = grouped.amax(-1) > grouped.amin(-1)  # (P,)
    return varied.repeat_interleave(k)


# -- the clipped surrogate -------------------------------------------------------------------------------
class SurrogateOutput(NamedTuple):
    per_token: torch.Tensor
    """(B, L) -min(ratio * A, clip(ratio, 1 - epsilon_low, 1 + epsilon_high) * A)."""
    ratio: torch.Tensor
    """(B, L) pi / pi_old (detached)."""
    clipped_low: torch.Tensor
    """(B, L) bool: A < 0 and ratio < 1 - epsilon_low (the clipped branch is taken: no gradient)."""
    clipped_high: torch.Tensor
    """(B, L) bool: A > 0 and ratio > 1 + epsilon_high."""


def clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    epsilon_low: float | None = 0.2,
    epsilon_high: float | None = 0.2,
) -> SurrogateOutput:
    """PPO's clipped surrogate per token with separate clip ranges (DAPO's clip-higher when
    epsilon_high > epsilon_low); ``None`` leaves that side unclipped. logprobs, old_logprobs: (B, L);
    advantages: (B,) one per sequence, shared by its tokens."""
    ratio = torch.exp(logprobs - old_logprobs.detach())  # (B, L)
    adv = advantages.detach().to(logprobs.dtype)[:, None]  # (B, 1)
    low = -torch.inf if epsilon_low is None else 1.0 - epsilon_low
    high = torch.inf if epsilon_high is None else 1.0 + epsilon_high
    clipped = torch.clamp(ratio, low, high)
    per_token = -torch.minimum(ratio * adv, clipped * adv)
    r = ratio.detach()
    return SurrogateOutput(per_token, r, (r < low) & (adv < 0), (r > high) & (adv > 0))


# -- aggregation -----------------------------------------------------------------------------------------
def aggregate_loss(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    loss_aggregation: str = "grpo",
    constant: float | None = None,
    num_sequences: int | None = None,
    num_tokens: float | None = None,
) -> torch.Tensor:
    """Reduce per-token losses (B, L) to a scalar:

    - ``grpo``: (1/N) sum_i (1/|o_i|) sum_t l_it            (sequence mean, then batch mean)
    - ``dr_grpo``: (1/(N * C)) sum_i sum_t l_it               (token sum over a constant; C = ``constant``)
    - ``dapo``: (1/T) sum_i sum_t l_it                       (token mean over the batch)

    N = ``num_sequences`` and T = ``num_tokens`` default to this batch's (B and mask.sum()); pass the
    whole rollout batch's when ``per_token`` is one chunk of it, so the chunks' losses add up to the
    batch's. ``constant`` defaults to L (the padded completion width).
    """
    m = mask.to(per_token.dtype)
    n = per_token.shape[0] if num_sequences is None else num_sequences
    if loss_aggregation == "grpo":
        return masked_mean(per_token, m, dim=-1).sum() / max(n, 1)
    if loss_aggregation == "dr_grpo":
        c = per_token.shape[-1] if constant is None else constant
        return (per_token * m).sum() / (max(n, 1) * c)
    if loss_aggregation == "dapo":
        t = m.sum() if num_tokens is None else num_tokens
        return (per_token * m).sum() / max(float(t), 1.0)
    raise ValueError(
        f"algo.loss_aggregation={loss_aggregation!r}: choose one of {', '.join(LOSS_AGGREGATIONS)}"
    )


# -- the GRPO objective ----------------------------------------------------------------------------------
class GRPOLossOutput(NamedTuple):
    loss: torch.Tensor
    """The aggregated objective: surrogate + beta * k3 KL (scalar)."""
    pg_loss: torch.Tensor
    """The aggregated surrogate alone (detached)."""
    kl: torch.Tensor
    """Token mean of the k3 estimate of KL(pi || pi_ref) (detached; 0 without a reference)."""
    clipfrac_low: torch.Tensor
    """Share of tokens clipped below (ratio < 1 - epsilon_low with A < 0)."""
    clipfrac_high: torch.Tensor
    """Share of tokens clipped above (ratio > 1 + epsilon_high with A > 0)."""
    ratio: torch.Tensor
    """Token mean of pi / pi_old."""


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon_low: float | None = 0.2,
    epsilon_high: float | None = 0.2,
    beta: float = 0.0,
    loss_aggregation: str = "grpo",
    constant: float | None = None,
    num_sequences: int | None = None,
    num_tokens: float | None = None,
    weights: torch.Tensor | None = None,
) -> GRPOLossOutput:
    """GRPO's per-token objective, aggregated (``aggregate_loss``):

    l_it = -min(ratio_it * A_i, clip(ratio_it, 1 - epsilon_low, 1 + epsilon_high) * A_i) + beta * k3_it,
    k3_it = pi_ref/pi - log(pi_ref/pi) - 1 (Schulman's unbiased, non-negative estimator; DeepSeekMath eq. 4).

    logprobs (with gradient), old_logprobs (the rollout policy's), ref_logprobs, mask, weights: (B, L);
    advantages: (B,). ``weights`` (truncated importance weights of engine rollouts) multiply the surrogate
    term per token. With ``beta=0`` (or no ``ref_logprobs``) the KL term is left out.
    """
    s = clipped_surrogate(logprobs, old_logprobs, advantages, epsilon_low, epsilon_high)
    pg = s.per_token if weights is None else s.per_token * weights.detach()
    kl = torch.zeros_like(pg)
    if ref_logprobs is not None:
        kl = kl_estimate(logprobs, ref_logprobs.detach(), "k3")
    per_token = pg + beta * kl if beta else pg
    agg = dict(
        loss_aggregation=loss_aggregation,
        constant=constant,
        num_sequences=num_sequences,
        num_tokens=num_tokens,
    )
    loss = aggregate_loss(per_token, mask, **agg)
    return GRPOLossOutput(
        loss,
        aggregate_loss(pg.detach(), mask, **agg),
        masked_mean(kl.detach(), mask),
        masked_mean(s.clipped_low.to(logprobs.dtype), mask),
        masked_mean(s.clipped_high.to(logprobs.dtype), mask),
        masked_mean(s.ratio, mask),
    )

"""Policy-gradient math for RLHF: masked statistics, GAE, the PPO clipped losses, KL estimators,
the KL-penalised reward, the RLOO baseline and REINFORCE.

Every function is a pure function of tensors (no ``self``, no logging). Shapes: ``B`` sequences, ``L``
completion tokens; masks are 1 on real completion tokens and 0 on padding.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


# -- masked statistics ------------------------------------------------------------------------------
def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1 (over everything, or along ``dim``)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over the masked positions (Bessel-corrected when ``unbiased``)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n < 2:
            return torch.zeros_like(var)
        var = var * n / (n - 1)
    return var


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Normalise ``x`` to unit variance (and zero mean, with ``shift_mean``) over the masked positions.

    Positions outside the mask are returned as 0.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


# -- advantages ---------------------------------------------------------------------------------------
def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over right-padded completions.

    rewards, values, mask: (B, L). The value after the last real token is 0 (the episode ends there).
    delta_t = r_t + gamma * V_{t+1} - V_t;  A_t = delta_t + gamma * lam * A_{t+1}.
    Returns (advantages, returns), both (B, L) and 0 outside the mask; returns = advantages + values.
    """
    if rewards.shape != values.shape or rewards.shape != mask.shape:
        raise ValueError(
            f"rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and mask "
            f"{tuple(mask.shape)} must have the same (B, L) shape"
        )
    m = mask.to(values.dtype)
    rewards, values = rewards * m, values * m
    length = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(last_gae)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = (delta + gamma * lam * last_gae) * m[:, t]
        advantages[:, t] = last_gae
    returns = (advantages + values) * m
    return advantages, returns


def rloo_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024): r_i minus the mean of the
    other k-1 samples of the same prompt.

    rewards: (P * k,) with the k samples of each prompt contiguous. Returns (P * k,).
    """
    if k < 2:
        raise ValueError(f"the leave-one-out baseline needs k >= 2 samples per prompt (got k={k})")
    if rewards.numel() % k:
        raise ValueError(f"{rewards.numel()} rewards are not a whole number of groups of k={k}")
    grouped = rewards.reshape(-1, k)  # (P, k)
    baseline = (grouped.sum(-1, keepdim=True) - grouped) / (k - 1)
    return (grouped - baseline).reshape(-1)


def group_std_normalize(advantages: torch.Tensor, k: int, eps: float = 1e-8) -> torch.Tensor:
    """Divide each prompt's k advantages by their own standard deviation (GRPO-style scaling; a group
    whose samples all scored the same keeps advantages of 0).

    advantages: (P * k,) with the k samples of each prompt contiguous. Returns (P * k,).
    """
    if k < 2 or advantages.numel() % k:
        raise ValueError(f"{advantages.numel()} advantages are not a whole number of groups of k={k} >= 2")
    grouped = advantages.reshape(-1, k)  # (P, k)
    return (grouped / (grouped.std(-1, keepdim=True) + eps)).reshape(-1)


# -- losses --------------------------------------------------------------------------------------------
class PGLossOutput(NamedTuple):
    pg_loss: torch.Tensor
    """Clipped surrogate loss (scalar)."""
    clipfrac: torch.Tensor
    """Share of tokens where the clipped branch was taken."""
    approx_kl: torch.Tensor
    """0.5 * mean((log pi - log pi_old)^2): how far this update moved from the rollout policy."""
    ratio: torch.Tensor
    """Mean importance ratio pi / pi_old."""


def pg_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float = 0.2,
    weights: torch.Tensor | None = None,
) -> PGLossOutput:
    """PPO clipped surrogate (Schulman et al. 2017), per token, averaged over the mask.

    loss = mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))), ratio = exp(logp - old_logp);
    ``weights`` (B, L), when given, multiply each token's term (truncated importance weights of rollouts
    an inference engine sampled: min(pi_old / pi_engine, cap)) without changing the average's denominator.
    """
    logratio = logprobs - old_logprobs
    ratio = torch.exp(logratio)
    pg_losses = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    per_token = torch.maximum(pg_losses, pg_losses2)
    if weights is not None:
        per_token = per_token * weights.detach()
    loss = masked_mean(per_token, mask)
    clipfrac = masked_mean((pg_losses2 > pg_losses).to(logprobs.dtype), mask)
    approx_kl = 0.5 * masked_mean(logratio.detach() ** 2, mask)
    return PGLossOutput(loss, clipfrac.detach(), approx_kl, masked_mean(ratio.detach(), mask))


def vf_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss: 0.5 * mean(max((V - R)^2, (V_clip - R)^2)), V_clip = V_old + clip(V - V_old).

    Returns (vf_loss, vf_clipfrac).
    """
    vpredclipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    vf_losses1 = (values - returns) ** 2
    vf_losses2 = (vpredclipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(vf_losses1, vf_losses2), mask)
    clipfrac = masked_mean((vf_losses2 > vf_losses1).to(values.dtype), mask)
    return loss, clipfrac.detach()


def reinforce_loss(logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """REINFORCE with a baseline: -mean_i(A_i * sum_t log pi(y_it)). logprobs, mask (B, L); advantages (B,)."""
    seq_logps = (logprobs * mask.to(logprobs.dtype)).sum(-1)  # (B,)
    return -(advantages.detach() * seq_logps).mean()


# -- KL to the reference and the penalised reward ------------------------------------------------------
def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi (Schulman, "Approximating KL").

    With logr = log pi_ref - log pi: k1 = -logr (unbiased, can be negative), k2 = logr^2 / 2 (low variance,
    biased), k3 = (exp(logr) - 1) - logr (unbiased, always >= 0).
    """
    logr = ref_logprobs - logprobs
    if kind == "k1":
        return -logr
    if kind == "k2":
        return 0.5 * logr**2
    if kind == "k3":
        return torch.expm1(logr) - logr
    raise ValueError(f"kl estimator {kind!r}: choose k1, k2 or k3")


def token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float, kl_penalty: str = "token"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token reward of RLHF (Ziegler et al. 2019): the score on the last real token plus the KL penalty.

    scores (B,), kl and mask (B, L). ``kl_penalty="token"``: -kl_coef * KL_t on every token t (the
    non-score reward of each token); ``"sequence"``: the whole -kl_coef * sum_t KL_t on the last real token,
    beside the score (every other token's reward is 0). Both give each sequence the same total reward;
    they differ in where GAE sees it. Returns (rewards, non_score_reward), (B, L).
    """
    if kl_penalty not in ("token", "sequence"):
        raise ValueError(f"kl_penalty={kl_penalty!r}: choose token or sequence")
    m = mask.to(kl.dtype)
    non_score_reward = -kl_coef * kl * m
    last = (torch.arange(mask.shape[-1], device=mask.device) * (mask > 0)).argmax(-1)  # (B,) last real token
    rows = torch.arange(kl.shape[0], device=kl.device)
    if kl_penalty == "sequence":  # the sequence's summed penalty moves to its last real token
        summed = non_score_reward.sum(-1)  # (B,)
        non_score_reward = torch.zeros_like(non_score_reward)
        non_score_reward[rows, last] = summed
    rewards = non_score_reward.clone()
    rewards[rows, last] += scores.to(rewards.dtype) * (m.sum(-1) > 0).to(rewards.dtype)
    return rewards, non_score_reward


def ppo_total_loss(
    pg_loss: torch.Tensor, vf_loss: torch.Tensor, vf_coef: float, critic_only: bool = False
) -> torch.Tensor:
    """PPO's loss: pg_loss + vf_coef * vf_loss; during a value warm-up (``critic_only``) the policy term is
    dropped, so the update trains the value function alone at the same scale as afterwards."""
    value_term = vf_coef * vf_loss
    return value_term if critic_only else pg_loss + value_term


def adaptive_kl_coef(kl_coef: float, current_kl: float, target: float, horizon: int, n_steps: int) -> float:
    """Ziegler et al. (2019) proportional controller: beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon."""
    error = min(max(current_kl / target - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + error * n_steps / horizon)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var(R - V) / Var(R) over the masked tokens (1 = perfect value function, <= 0 = useless)."""
    var_r = masked_var(returns, mask)
    return 1.0 - masked_var(returns - values, mask) / var_r.clamp(min=1e-8)

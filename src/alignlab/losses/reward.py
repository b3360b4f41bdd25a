"""Reward-model losses: Bradley–Terry on pairwise preferences (hard or soft labels, optional margin)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    p_chosen: torch.Tensor | None = None,
    margin: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Negative log-likelihood of the preferences under P(chosen > rejected) = sigmoid(r_c - r_r - m).

    chosen_rewards, rejected_rewards: (B,). ``p_chosen`` (B,) in [0, 1] gives soft labels, turning the
    loss into the cross-entropy -[p log sigma(d) + (1 - p) log sigma(-d)]; None (or all ones) is the hard
    label loss -log sigma(d). ``margin`` (a float or (B,)) is the gap the chosen reward must clear
    (Llama 2's margin loss); d = r_c - r_r - margin.
    """
    if chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(
            f"chosen {tuple(chosen_rewards.shape)} and rejected {tuple(rejected_rewards.shape)} "
            "rewards must have the same shape"
        )
    d = chosen_rewards - rejected_rewards - margin
    if p_chosen is None:
        return -F.logsigmoid(d).mean()
    p = p_chosen.to(d.dtype)
    if (p < 0).any() or (p > 1).any():
        raise ValueError("p_chosen must lie in [0, 1]")
    return -(p * F.logsigmoid(d) + (1 - p) * F.logsigmoid(-d)).mean()


def preference_accuracy(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, p_chosen: torch.Tensor | None = None
) -> torch.Tensor:
    """Share of pairs ranked the way the label says (chosen when p_chosen >= 0.5); ties count half."""
    d = chosen_rewards - rejected_rewards
    if p_chosen is not None:
        d = torch.where(p_chosen >= 0.5, d, -d)
    return ((d > 0).float() + 0.5 * (d == 0).float()).mean()


def calibration_bins(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = 10):
    """Reliability curve: per-bin mean predicted probability, mean target, count; and the ECE.

    probs, targets: (N,) in [0, 1]. Returns (pred (n_bins,), emp (n_bins,), count (n_bins,), ece scalar);
    empty bins hold NaN.
    """
    idx = torch.clamp((probs * n_bins).long(), max=n_bins - 1)
    count = torch.bincount(idx, minlength=n_bins).float()
    pred_sum = torch.bincount(idx, weights=probs.float(), minlength=n_bins)
    emp_sum = torch.bincount(idx, weights=targets.float(), minlength=n_bins)
    pred = pred_sum / count
    emp = emp_sum / count
    ece = (pred_sum - emp_sum).abs().sum() / count.sum().clamp(min=1)
    return pred, emp, count, ece

"""Preference losses on sequence log-probabilities: DPO and its family.

Every function takes per-pair sequence log-probs of the policy (and of the reference where the
objective needs one) and returns a ``PreferenceLoss``: per-pair ``losses`` (B,) and the detached
implicit rewards ``chosen_rewards`` / ``rejected_rewards`` (B,). Reduce with ``.losses.mean()``.

Notation (Rafailov et al. 2023): with ``pi_logratios = chosen_logps - rejected_logps`` and
``ref_logratios = ref_chosen_logps - ref_rejected_logps``,

    h = pi_logratios - ref_logratios          (the DPO "logits" before the beta scale)
    implicit reward r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x))

so that ``beta * h = chosen_rewards - rejected_rewards``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class PreferenceLoss(NamedTuple):
    """Per-pair losses (B,) and detached implicit rewards (B,) of chosen and rejected."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def _logratios(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
) -> torch.Tensor:
    """h = (log pi(y_w) - log pi(y_l)) - (log pi_ref(y_w) - log pi_ref(y_l)), shape (B,)."""
    pi_logratios = chosen_logps - rejected_logps
    ref_logratios = ref_chosen_logps - ref_rejected_logps
    return pi_logratios - ref_logratios


def _implicit_rewards(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    chosen_rewards = beta * (chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (rejected_logps - ref_rejected_logps).detach()
    return chosen_rewards, rejected_rewards


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise ValueError(f"beta must be > 0 (got {beta}); set algo.beta")


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> PreferenceLoss:
    """DPO (sigmoid) loss; with ``label_smoothing`` = eps > 0 it is conservative DPO (cDPO).

        loss = -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)

    cDPO assumes each label is flipped with probability eps (Mitchell 2023); eps = 0 is plain DPO.
    """
    _check_beta(beta)
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(
            f"label_smoothing must be in [0, 0.5) (got {label_smoothing}); set algo.label_smoothing"
        )
    logits = beta * _logratios(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return PreferenceLoss(
        losses, *_implicit_rewards(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    )


def soft_dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    p_chosen: torch.Tensor,
    beta: float = 0.1,
) -> PreferenceLoss:
    """Soft-label DPO: cross-entropy of the Bradley–Terry probability sigmoid(beta * h) against a target
    p = P(chosen ≻ rejected) in [0, 1] (e.g. an AI judge's probability), per pair:

        loss = -p * log sigmoid(beta * h) - (1 - p) * log sigmoid(-beta * h)

    p = 1 is DPO; a constant p = 1 - eps is cDPO. The minimum over h is at sigmoid(beta * h) = p.
    """
    _check_beta(beta)
    p = p_chosen.to(chosen_logps.dtype)
    if torch.any((p < 0) | (p > 1)):
        raise ValueError("p_chosen must lie in [0, 1] (it is P(chosen ≻ rejected))")
    logits = beta * _logratios(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    losses = -p * F.logsigmoid(logits) - (1.0 - p) * F.logsigmoid(-logits)
    return PreferenceLoss(
        losses, *_implicit_rewards(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    )


def robust_dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.1,
) -> PreferenceLoss:
    """Robust DPO (Chowdhury et al. 2024): the unbiased estimator of the clean DPO loss under labels
    flipped with known probability eps < 1/2:

        loss = [(1 - eps) * l(beta * h) - eps * l(-beta * h)] / (1 - 2 eps),   l(z) = -log sigmoid(z)

    Its expectation over the label noise equals the noiseless DPO loss. eps = 0 is plain DPO.
    """
    _check_beta(beta)
    eps = label_smoothing
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"robust DPO needs label_smoothing (the flip rate) in [0, 0.5), got {eps}")
    logits = beta * _logratios(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    losses = ((1.0 - eps) * -F.logsigmoid(logits) - eps * -F.logsigmoid(-logits)) / (1.0 - 2.0 * eps)
    return PreferenceLoss(
        losses, *_implicit_rewards(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    )


def ipo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> PreferenceLoss:
    """IPO (Azar et al. 2023): squared regression of h towards 1 / (2 beta), here beta = tau:

        loss = (h - 1 / (2 beta))^2

    Bounded target, so it does not push the margin to infinity on deterministic preferences.
    """
    _check_beta(beta)
    h = _logratios(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    losses = (h - 1.0 / (2.0 * beta)) ** 2
    return PreferenceLoss(
        losses, *_implicit_rewards(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    )


def hinge_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> PreferenceLoss:
    """Hinge loss of SLiC (Zhao et al. 2023) on the reference-adjusted log-ratio; margin 1 / beta:

    loss = max(0, 1 - beta * h)
    """
    _check_beta(beta)
    h = _logratios(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    losses = torch.relu(1.0 - beta * h)
    return PreferenceLoss(
        losses, *_implicit_rewards(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    )


def simpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    beta: float = 2.0,
    gamma: float = 0.5,
    label_smoothing: float = 0.0,
) -> PreferenceLoss:
    """SimPO (Meng et al. 2024): reference-free, on LENGTH-NORMALISED log-probs
    (``chosen_logps`` = log pi(y_w|x) / |y_w|), with a target reward margin gamma:

        r(x, y) = beta * log pi(y|x) / |y|
        loss = -(1 - eps) * log sigmoid(r_w - r_l - gamma) - eps * log sigmoid(-(r_w - r_l - gamma))
    """
    _check_beta(beta)
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5) (got {label_smoothing})")
    logits = beta * (chosen_logps - rejected_logps) - gamma
    losses = -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return PreferenceLoss(losses, beta * chosen_logps.detach(), beta * rejected_logps.detach())


# loss_type -> (needs a reference, uses label_smoothing)
LOSS_TYPES: dict[str, tuple[bool, bool]] = {
    "sigmoid": (True, False),
    "cdpo": (True, True),
    "robust": (True, True),
    "ipo": (True, False),
    "hinge": (True, False),
    "soft": (True, False),
    "simpo": (False, True),
}


def preference_loss(
    loss_type: str,
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
    p_chosen: torch.Tensor | None = None,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    gamma: float = 0.5,
) -> PreferenceLoss:
    """Dispatch to one of ``LOSS_TYPES`` by name (what ``algo.loss_type`` selects)."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {sorted(LOSS_TYPES)}")
    if loss_type == "simpo":
        return simpo_loss(chosen_logps, rejected_logps, beta, gamma, label_smoothing)
    if ref_chosen_logps is None or ref_rejected_logps is None:
        raise ValueError(f"loss_type={loss_type!r} needs reference log-probs")
    ref = (chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    if loss_type in ("sigmoid", "cdpo"):
        return dpo_loss(*ref, beta=beta, label_smoothing=label_smoothing)
    if loss_type == "robust":
        return robust_dpo_loss(*ref, beta=beta, label_smoothing=label_smoothing)
    if loss_type == "ipo":
        return ipo_loss(*ref, beta=beta)
    if loss_type == "hinge":
        return hinge_loss(*ref, beta=beta)
    if p_chosen is None:
        raise ValueError("loss_type='soft' needs p_chosen (P(chosen ≻ rejected)) for every pair")
    return soft_dpo_loss(*ref, p_chosen=p_chosen, beta=beta)

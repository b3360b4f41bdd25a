"""Closed-form tests of the preference losses on hand-computed numbers, plus gradient directions."""

from __future__ import annotations

import math

import pytest
import torch

from alignlab.losses.preference import (
    LOSS_TYPES,
    dpo_loss,
    hinge_loss,
    ipo_loss,
    preference_loss,
    robust_dpo_loss,
    simpo_loss,
    soft_dpo_loss,
)


def nls(z: float) -> float:
    """-log sigmoid(z) = log(1 + e^-z)."""
    return math.log1p(math.exp(-z))


def pair(c=-1.0, r=-3.0, rc=-2.0, rr=-2.0, grad=False):
    """One pair: h = (c - r) - (rc - rr) = 2 with the defaults."""
    t = [
        torch.tensor([v], dtype=torch.float64, requires_grad=grad and i < 2)
        for i, v in enumerate((c, r, rc, rr))
    ]
    return t


def test_dpo_sigmoid_closed_form():
    out = dpo_loss(*pair(), beta=0.5)  # beta * h = 1
    assert out.losses.item() == pytest.approx(nls(1.0))  # 0.3132616875...
    assert out.losses.item() == pytest.approx(0.31326168751822286)
    assert out.chosen_rewards.item() == pytest.approx(0.5)  # 0.5 * (-1 - -2)
    assert out.rejected_rewards.item() == pytest.approx(-0.5)  # 0.5 * (-3 - -2)
    # at equal policy and reference the loss is log 2 and both rewards are 0
    eq = dpo_loss(*pair(-2.0, -2.0, -2.0, -2.0), beta=0.1)
    assert eq.losses.item() == pytest.approx(math.log(2))
    assert eq.chosen_rewards.item() == 0.0


def test_conservative_dpo_closed_form():
    out = dpo_loss(*pair(), beta=0.5, label_smoothing=0.1)
    # 0.9 * nls(1) + 0.1 * nls(-1) = nls(1) + 0.1 (since nls(-z) = nls(z) + z)
    assert out.losses.item() == pytest.approx(0.9 * nls(1.0) + 0.1 * nls(-1.0))
    assert out.losses.item() == pytest.approx(0.41326168751822286)


def test_robust_dpo_closed_form_and_unbiased():
    eps = 0.1
    out = robust_dpo_loss(*pair(), beta=0.5, label_smoothing=eps)
    # (0.9 nls(1) - 0.1 nls(-1)) / 0.8 = nls(1) - 0.125
    assert out.losses.item() == pytest.approx((0.9 * nls(1.0) - 0.1 * nls(-1.0)) / 0.8)
    assert out.losses.item() == pytest.approx(0.18826168751822286)
    # unbiased: over a label flipped with prob eps its expectation is the clean DPO loss
    flipped = robust_dpo_loss(*pair(-3.0, -1.0, -2.0, -2.0), beta=0.5, label_smoothing=eps)
    clean = dpo_loss(*pair(), beta=0.5)
    assert (1 - eps) * out.losses.item() + eps * flipped.losses.item() == pytest.approx(clean.losses.item())
    # eps = 0 is plain DPO
    assert robust_dpo_loss(*pair(), beta=0.5, label_smoothing=0.0).losses.item() == pytest.approx(nls(1.0))


def test_ipo_closed_form():
    # target 1 / (2 beta) = 1 at beta = 0.5; h = 2 -> (2 - 1)^2 = 1; h = 3 -> 4; h = 1 -> 0
    assert ipo_loss(*pair(), beta=0.5).losses.item() == pytest.approx(1.0)
    assert ipo_loss(*pair(c=0.0), beta=0.5).losses.item() == pytest.approx(4.0)
    assert ipo_loss(*pair(c=-2.0), beta=0.5).losses.item() == pytest.approx(0.0)
    out = ipo_loss(*pair(), beta=0.5)
    assert out.chosen_rewards.item() == pytest.approx(0.5)


def test_hinge_closed_form():
    # max(0, 1 - beta h): beta = 0.25, h = 2 -> 0.5; beta = 0.5 -> 0 (margin met)
    assert hinge_loss(*pair(), beta=0.25).losses.item() == pytest.approx(0.5)
    assert hinge_loss(*pair(), beta=0.5).losses.item() == pytest.approx(0.0)
    assert hinge_loss(*pair(c=-4.0), beta=0.5).losses.item() == pytest.approx(1.5)  # h = -1


def test_soft_label_dpo_closed_form():
    p = torch.tensor([0.7], dtype=torch.float64)
    out = soft_dpo_loss(*pair(), p_chosen=p, beta=0.5)
    assert out.losses.item() == pytest.approx(0.7 * nls(1.0) + 0.3 * nls(-1.0))
    assert out.losses.item() == pytest.approx(0.61326168751822286)
    # p = 1 is DPO; p = 1 - eps is cDPO
    one = soft_dpo_loss(*pair(), p_chosen=torch.ones(1, dtype=torch.float64), beta=0.5)
    assert one.losses.item() == pytest.approx(dpo_loss(*pair(), beta=0.5).losses.item())
    cd = soft_dpo_loss(*pair(), p_chosen=torch.full((1,), 0.9, dtype=torch.float64), beta=0.5)
    assert cd.losses.item() == pytest.approx(dpo_loss(*pair(), beta=0.5, label_smoothing=0.1).losses.item())
    with pytest.raises(ValueError, match="p_chosen"):
        soft_dpo_loss(*pair(), p_chosen=torch.tensor([1.5]), beta=0.5)


def test_soft_label_minimum_is_at_target_probability():
    # d loss / d h = beta * (sigmoid(beta h) - p) vanishes at sigmoid(beta h) = p
    beta, p = 0.5, 0.7
    h = math.log(p / (1 - p)) / beta
    c = torch.tensor([h], dtype=torch.float64, requires_grad=True)
    z = torch.zeros(1, dtype=torch.float64)
    soft_dpo_loss(
        c, z, z, z, p_chosen=torch.tensor([p], dtype=torch.float64), beta=beta
    ).losses.sum().backward()
    assert abs(c.grad.item()) < 1e-12


def test_simpo_closed_form():
    c, r = torch.tensor([-0.5]), torch.tensor([-1.5])  # length-normalised log-probs
    out = simpo_loss(c, r, beta=2.0, gamma=0.5)  # logits = 2 * 1 - 0.5 = 1.5
    assert out.losses.item() == pytest.approx(nls(1.5))
    assert out.losses.item() == pytest.approx(0.20141327798275246, rel=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(-1.0)
    assert out.rejected_rewards.item() == pytest.approx(-3.0)
    smooth = simpo_loss(c, r, beta=2.0, gamma=0.5, label_smoothing=0.1)
    assert smooth.losses.item() == pytest.approx(0.9 * nls(1.5) + 0.1 * nls(-1.5), rel=1e-6)


@pytest.mark.parametrize("loss_type", sorted(LOSS_TYPES))
def test_gradient_raises_chosen_and_lowers_rejected(loss_type):
    # a point where no loss is saturated: h = 0 (policy == reference)
    c = torch.tensor([-2.0, -5.0], dtype=torch.float64, requires_grad=True)
    r = torch.tensor([-2.0, -5.0], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-2.0, -5.0], dtype=torch.float64)
    eps = 0.1 if loss_type in ("cdpo", "robust") else 0.0
    out = preference_loss(
        loss_type,
        c,
        r,
        ref,
        ref.clone(),
        p_chosen=torch.tensor([0.9, 0.8], dtype=torch.float64),
        beta=0.5,
        label_smoothing=eps,
    )
    out.losses.sum().backward()
    assert (c.grad < 0).all(), f"{loss_type}: descending the loss must raise log pi(chosen)"
    assert (r.grad > 0).all(), f"{loss_type}: descending the loss must lower log pi(rejected)"
    assert out.losses.shape == (2,) and not out.chosen_rewards.requires_grad


def test_soft_label_below_half_prefers_rejected():
    c = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    z = torch.zeros(1, dtype=torch.float64)
    soft_dpo_loss(
        c, z, z, z, p_chosen=torch.tensor([0.3], dtype=torch.float64), beta=0.5
    ).losses.sum().backward()
    assert c.grad.item() > 0  # the label says the "chosen" reply is the worse one


def test_ipo_pushes_back_beyond_target():
    c = torch.tensor([5.0], dtype=torch.float64, requires_grad=True)  # h = 5 > 1 / (2 beta) = 1
    z = torch.zeros(1, dtype=torch.float64)
    ipo_loss(c, z, z, z, beta=0.5).losses.sum().backward()
    assert c.grad.item() > 0


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match="unknown loss_type"):
        preference_loss("nope", *pair())
    with pytest.raises(ValueError, match="reference"):
        preference_loss("ipo", torch.zeros(1), torch.zeros(1))
    with pytest.raises(ValueError, match="p_chosen"):
        preference_loss("soft", *pair())
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(*pair(), beta=0.0)
    with pytest.raises(ValueError, match="0.5"):
        robust_dpo_loss(*pair(), label_smoothing=0.5)

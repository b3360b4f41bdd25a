"""Closed-form tests of the RLHF math (losses/rl.py, losses/reward.py) on hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from alignlab.losses import rl
from alignlab.losses.reward import bradley_terry_loss, calibration_bins, preference_accuracy
from alignlab.models.heads import last_index


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_masked_mean_var_whiten():
    x = t([1.0, 2.0, 100.0], [3.0, 4.0, -50.0])
    m = t([1, 1, 0], [1, 1, 0])
    assert rl.masked_mean(x, m).item() == pytest.approx(2.5)
    assert rl.masked_mean(x, m, dim=1).tolist() == pytest.approx([1.5, 3.5])
    # values 1,2,3,4: mean 2.5, unbiased var = 5/3
    assert rl.masked_var(x, m).item() == pytest.approx(5 / 3)
    w = rl.masked_whiten(x, m)
    assert w[:, 2].abs().max() == 0  # padding is zeroed
    assert w[0, 0].item() == pytest.approx((1 - 2.5) / math.sqrt(5 / 3))
    assert rl.masked_mean(w, m).item() == pytest.approx(0.0, abs=1e-9)
    assert rl.masked_var(w, m).item() == pytest.approx(1.0, rel=1e-6)
    # shift_mean=False keeps the mean
    assert rl.masked_mean(rl.masked_whiten(x, m, shift_mean=False), m).item() == pytest.approx(2.5)


def test_gae_hand_computed():
    rewards = t([0.0, 0.0, 1.0])
    values = t([0.5, 0.5, 0.5])
    mask = torch.ones_like(rewards)
    adv, ret = rl.compute_gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert adv.tolist()[0] == pytest.approx([0.5, 0.5, 0.5])
    assert ret.tolist()[0] == pytest.approx([1.0, 1.0, 1.0])
    # gamma 0.9, lambda 0.5: delta = [-0.05, -0.05, 0.5]; A2 = 0.5, A1 = -0.05 + 0.45 * 0.5, A0 = -0.05 + 0.45 * A1
    adv, ret = rl.compute_gae(rewards, values, mask, gamma=0.9, lam=0.5)
    assert adv.tolist()[0] == pytest.approx([0.02875, 0.175, 0.5])
    assert ret.tolist()[0] == pytest.approx([0.52875, 0.675, 1.0])


def test_gae_ignores_padding():
    rewards = t([0.0, 2.0, 9.0], [0.0, 0.0, 1.0])
    values = t([1.0, 1.0, 7.0], [0.0, 0.0, 0.0])
    mask = t([1, 1, 0], [1, 1, 1])
    adv, ret = rl.compute_gae(rewards, values, mask, gamma=1.0, lam=1.0)
    # row 0 ends after token 1: delta1 = 2 + 0 - 1 = 1, delta0 = 0 + 1 - 1 = 0 -> A = [1, 1, 0]
    assert adv[0].tolist() == pytest.approx([1.0, 1.0, 0.0])
    assert ret[0].tolist() == pytest.approx([2.0, 2.0, 0.0])
    assert adv[1].tolist() == pytest.approx([1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="same"):
        rl.compute_gae(rewards, values[:, :2], mask)


def test_pg_loss_clipping():
    adv = t([1.0, 1.0, -1.0, -1.0])
    old = torch.zeros_like(adv)
    # ratios 1.5 (clipped for A>0), 0.9 (inside), 1.5 (A<0: unclipped branch is larger loss), 0.5 (clipped)
    new = torch.log(t([1.5, 0.9, 1.5, 0.5]))
    mask = torch.ones_like(adv)
    out = rl.pg_loss(new, old, adv, mask, cliprange=0.2)
    # per-token losses: max(-1.5, -1.2) = -1.2; max(-0.9, -0.9) = -0.9; max(1.5, 1.2) = 1.5; max(0.5, 0.8) = 0.8
    assert out.pg_loss.item() == pytest.approx((-1.2 - 0.9 + 1.5 + 0.8) / 4)
    assert out.clipfrac.item() == pytest.approx(2 / 4)
    logr = torch.log(t([1.5, 0.9, 1.5, 0.5]))
    assert out.approx_kl.item() == pytest.approx(0.5 * (logr**2).mean().item())
    # gradient flows only through the unclipped tokens
    new = new.clone().requires_grad_(True)
    rl.pg_loss(new, old, adv, mask, 0.2).pg_loss.backward()
    assert new.grad[0, 0] == 0 and new.grad[0, 3] == 0
    assert new.grad[0, 1] == pytest.approx(-0.9 / 4) and new.grad[0, 2] == pytest.approx(1.5 / 4)


def test_vf_loss_clipping():
    old = t([0.0, 0.0])
    values = t([1.0, 0.1])
    returns = t([1.0, 1.0])
    loss, clipfrac = rl.vf_loss(values, old, returns, torch.ones_like(values), cliprange_value=0.2)
    # token 0: unclipped error 0, clipped value 0.2 -> error 0.64 (taken); token 1: 0.81 both ways
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.81) / 2)
    assert clipfrac.item() == pytest.approx(0.5)


def test_kl_estimators():
    logp = torch.log(t([0.5, 0.25]))
    ref = torch.log(t([0.25, 0.5]))
    logr = ref - logp  # [-log 2, log 2]
    assert rl.kl_estimate(logp, ref, "k1").tolist()[0] == pytest.approx([math.log(2), -math.log(2)])
    assert rl.kl_estimate(logp, ref, "k2").tolist()[0] == pytest.approx((0.5 * logr**2).tolist()[0])
    k3 = rl.kl_estimate(logp, ref, "k3")
    assert k3.tolist()[0] == pytest.approx([0.5 - 1 + math.log(2), 2 - 1 - math.log(2)])
    assert (k3 >= 0).all()
    with pytest.raises(ValueError, match="k1, k2 or k3"):
        rl.kl_estimate(logp, ref, "k4")
    # k1 and k3 are unbiased: their expectation under pi is the exact KL
    p = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    q = torch.tensor([0.3, 0.3, 0.4], dtype=torch.float64)
    exact = (p * (p / q).log()).sum()
    for kind in ("k1", "k3"):
        assert (p * rl.kl_estimate(p.log(), q.log(), kind)).sum().item() == pytest.approx(exact.item())


def test_token_rewards_put_score_on_last_token():
    scores = t(2.0, 5.0)
    kl = t([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    mask = t([1, 1, 0], [1, 1, 1])
    rewards, nsr = rl.token_rewards(scores, kl, mask, kl_coef=0.5)
    assert torch.allclose(nsr, t([-0.05, -0.1, 0.0], [-0.2, -0.25, -0.3]))
    assert torch.allclose(rewards, t([-0.05, 1.9, 0.0], [-0.2, -0.25, 4.7]))


def test_rloo_baseline_and_reinforce():
    r = t(1.0, 2.0, 3.0, 10.0, 10.0, 16.0)
    adv = rl.rloo_advantages(r, k=3)
    # prompt 0: 1 - 2.5, 2 - 2, 3 - 1.5; prompt 1: 10 - 13, 10 - 13, 16 - 10
    assert adv.tolist() == pytest.approx([-1.5, 0.0, 1.5, -3.0, -3.0, 6.0])
    with pytest.raises(ValueError, match="k >= 2"):
        rl.rloo_advantages(r, k=1)
    with pytest.raises(ValueError, match="whole number"):
        rl.rloo_advantages(r, k=4)
    logps = t([-1.0, -2.0], [-0.5, -0.5]).requires_grad_(True)
    mask = t([1, 1], [1, 0])
    loss = rl.reinforce_loss(logps, t(2.0, -1.0), mask)
    assert loss.item() == pytest.approx(-(2.0 * -3.0 + -1.0 * -0.5) / 2)
    loss.backward()
    assert torch.allclose(logps.grad, t([-1.0, -1.0], [0.5, 0.0]))


def test_adaptive_kl_controller_and_explained_variance():
    # KL at twice the target: error clipped to +0.2; 64 samples over a 640 horizon -> x1.02
    assert rl.adaptive_kl_coef(0.1, 12.0, 6.0, 640, 64) == pytest.approx(0.102)
    assert rl.adaptive_kl_coef(0.1, 5.4, 6.0, 100, 10) == pytest.approx(0.1 * (1 - 0.1 * 0.1))
    ret = t([1.0, 2.0, 3.0, 4.0])
    m = torch.ones_like(ret)
    assert rl.explained_variance(ret, ret, m).item() == pytest.approx(1.0)
    assert rl.explained_variance(torch.zeros_like(ret) + 2.5, ret, m).item() == pytest.approx(0.0)
    assert last_index(t([1, 1, 0], [1, 1, 1], [0, 0, 0])).tolist() == [1, 2, 0]


def test_bradley_terry_hard_soft_margin():
    c, r = t(2.0, 0.0), t(1.0, 1.0)
    sig = torch.sigmoid
    hard = -torch.log(sig(torch.tensor([1.0, -1.0], dtype=torch.float64))).mean()
    assert bradley_terry_loss(c, r).item() == pytest.approx(hard.item())
    # p_chosen = 1 is the hard loss; p = 0.5 is symmetric; p = 0.8 is the cross-entropy
    assert bradley_terry_loss(c, r, torch.ones(2)).item() == pytest.approx(hard.item())
    p = torch.tensor([0.8, 0.8])
    ce = -(0.8 * math.log(sig(torch.tensor(1.0))) + 0.2 * math.log(sig(torch.tensor(-1.0))))
    ce2 = -(0.8 * math.log(sig(torch.tensor(-1.0))) + 0.2 * math.log(sig(torch.tensor(1.0))))
    assert bradley_terry_loss(c, r, p).item() == pytest.approx((ce + ce2) / 2)
    assert bradley_terry_loss(c, r, margin=1.0).item() == pytest.approx(
        -(math.log(0.5) + math.log(sig(torch.tensor(-2.0)))) / 2
    )
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bradley_terry_loss(c, r, torch.tensor([1.5, 0.0]))
    assert preference_accuracy(c, r).item() == 0.5
    assert preference_accuracy(c, r, torch.tensor([1.0, 0.0])).item() == 1.0


def test_calibration_bins():
    probs = torch.tensor([0.05, 0.05, 0.95, 0.95])
    targets = torch.tensor([0.0, 1.0, 1.0, 1.0])
    pred, emp, count, ece = calibration_bins(probs, targets, n_bins=10)
    assert count[0] == 2 and count[9] == 2 and torch.isnan(emp[5])
    assert emp[0].item() == pytest.approx(0.5) and emp[9].item() == pytest.approx(1.0)
    # ECE = (2 * |0.05 - 0.5| + 2 * |0.95 - 1|) / 4
    assert ece.item() == pytest.approx((2 * 0.45 + 2 * 0.05) / 4)


def test_group_std_normalize():
    # two prompts, k=3: each group divided by its own (unbiased) standard deviation; a flat group stays 0
    adv = torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    out = rl.group_std_normalize(adv, k=3)
    assert out.tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0], abs=1e-6)  # std of {-1,0,1} = 1
    adv = torch.tensor([-4.0, 2.0, 2.0, 1.0, -0.5, -0.5])
    std1, std2 = math.sqrt((16 + 4 + 4) / 2), math.sqrt((1 + 0.25 + 0.25) / 2)
    want = [-4 / std1, 2 / std1, 2 / std1, 1 / std2, -0.5 / std2, -0.5 / std2]
    assert rl.group_std_normalize(adv, k=3).tolist() == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="groups of k=4"):
        rl.group_std_normalize(adv, k=4)

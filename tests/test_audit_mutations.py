"""Tests for the mutations an audit found passing (issue: the comparison must tell the truth, part 5).

Each test names the mutation it catches; each was checked by making that mutation once and watching the
test fail.
"""

from __future__ import annotations

import pytest
import torch

from alignlab.judges.report import cohen_kappa
from alignlab.losses.reward import calibration_bins


def test_kappa_chance_agreement_uses_both_raters_marginals():
    # mutation caught: p_e from one rater's marginals only (sum_c p_a(c)^2). Needs marginals that differ:
    # rater a says "a" 8/10 times, rater b 3/10. Pairs: a/a 3, a/b 5, b/b 2 -> p_o = 0.5;
    # p_e = 0.8 * 0.3 + 0.2 * 0.7 = 0.38; kappa = (0.5 - 0.38) / 0.62
    a = ["a"] * 8 + ["b"] * 2
    b = ["a"] * 3 + ["b"] * 5 + ["b"] * 2
    assert cohen_kappa(a, b) == pytest.approx(0.12 / 0.62)
    assert cohen_kappa(b, a) == pytest.approx(0.12 / 0.62)  # symmetric


def test_ece_weights_bins_by_their_counts():
    # mutation caught: the unweighted mean of |pred - emp| over non-empty bins. Unequal counts: bin 0 holds
    # 3 predictions of 0.05 with 1 positive (|0.05 - 1/3|), bin 9 one of 0.95 that came true (|0.95 - 1|).
    probs = torch.tensor([0.05, 0.05, 0.05, 0.95])
    targets = torch.tensor([0.0, 0.0, 1.0, 1.0])
    _, _, count, ece = calibration_bins(probs, targets, n_bins=10)
    assert count[0] == 3 and count[9] == 1
    assert ece.item() == pytest.approx((3 * abs(0.05 - 1 / 3) + 1 * 0.05) / 4)

"""alignlab.stats against closed forms and scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as st

from alignlab.stats import (
    bootstrap_mean_ci,
    holm,
    minimum_detectable_effect,
    paired_gain,
    t_mean_ci,
    t_quantile,
)


def test_t_quantiles_are_students():
    assert t_quantile(10) == pytest.approx(2.228, abs=1e-3)  # not 1.96: the old table's fallback
    assert t_quantile(2) == pytest.approx(4.303, abs=1e-3)
    m, h = t_mean_ci([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and h == pytest.approx(3.182 * np.std([1, 2, 3, 4], ddof=1) / 2, rel=1e-3)


def test_holm_closed_form():
    # sorted p: 0.01 (x3), 0.03 (x2 -> 0.06), 0.04 (x1 -> 0.04, but monotone -> 0.06)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_minimum_detectable_effect_closed_form():
    sd, n = 0.4, 50
    expected = (st.t.ppf(0.975, 49) + st.t.ppf(0.8, 49)) * sd / np.sqrt(n)
    assert minimum_detectable_effect(sd, n) == pytest.approx(expected)
    assert minimum_detectable_effect(sd, 4 * n) < minimum_detectable_effect(sd, n) / 1.9


def test_bootstrap_ci_covers_and_shrinks():
    rng = np.random.default_rng(0)
    small, big = rng.normal(1.0, 1.0, 50), rng.normal(1.0, 1.0, 2000)
    lo, hi = bootstrap_mean_ci(small)
    assert lo < small.mean() < hi
    blo, bhi = bootstrap_mean_ci(big)
    assert blo < 1.0 < bhi and (bhi - blo) < (hi - lo) / 4
    assert bootstrap_mean_ci(np.full(5, 0.3)) == (0.3, 0.3)
    with pytest.raises(ValueError):
        bootstrap_mean_ci([])


def test_paired_gain_one_seed_matches_a_t_interval():
    d = np.random.default_rng(1).normal(0.2, 0.5, 400)
    g = paired_gain(d[None, :])
    half = st.t.ppf(0.975, 399) * d.std(ddof=1) / 20
    assert g["ci_low"] == pytest.approx(d.mean() - half, abs=0.01)
    assert g["ci_high"] == pytest.approx(d.mean() + half, abs=0.01)
    assert g["p"] < 0.01


def test_two_level_bootstrap_carries_seed_variation():
    rng = np.random.default_rng(2)
    prompts = rng.normal(0, 0.1, 200)
    tight = np.stack([prompts + 0.2 for _ in range(3)])  # seeds agree
    loose = np.stack([prompts + s for s in (0.0, 0.2, 0.4)])  # seeds disagree, same mean
    gt, gl = paired_gain(tight), paired_gain(loose)
    assert gt["mean"] == pytest.approx(gl["mean"])
    assert (gl["ci_high"] - gl["ci_low"]) > 5 * (gt["ci_high"] - gt["ci_low"])

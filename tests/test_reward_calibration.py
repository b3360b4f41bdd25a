"""The reward model's calibration (val/ece and the plot) reads P(chosen > rejected) = sigma(d - margin),
the probability that training fits, not sigma(d)."""

from __future__ import annotations

import math

import pytest
import torch

from alignlab.losses.reward import calibration_bins
from alignlab.modules.reward import RewardModule


@pytest.mark.parametrize("margin", [0.0, 1.5])
def test_ece_uses_the_margin_training_fits(tiny_lm, margin):
    module = RewardModule(tiny_lm.model, tiny_lm.tokenizer, margin=margin, plot_calibration=False)
    logged = {}
    module.log = lambda name, value, **k: logged.__setitem__(name, float(value))
    # rewards whose gap d is exactly margin + logit(0.8): under the fitted model P(chosen) = 0.8
    d = margin + math.log(0.8 / 0.2)
    chosen = torch.full((10,), d)
    rejected = torch.zeros(10)
    labels = torch.tensor([1.0] * 8 + [0.0] * 2)  # the chosen answer wins 8 times in 10: calibrated
    module._val = [(chosen, rejected, labels)]
    module.on_validation_epoch_end()
    probs = torch.sigmoid(torch.tensor([d - margin] * 10 + [margin - d] * 10))
    _, _, _, ece = calibration_bins(probs, torch.cat([labels, 1 - labels]), 10)
    assert logged["val/ece"] == pytest.approx(float(ece)) and logged["val/ece"] == pytest.approx(
        0.0, abs=1e-6
    )

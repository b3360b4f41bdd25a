"""LR schedules (transformers' functions behind our config keys) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from alignlab.utils.schedules import constant, warmup_cosine


def _lrs(make, steps: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = make(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_cosine_values():
    lrs = _lrs(lambda o: warmup_cosine(o, warmup_steps=4, total_steps=12, min_ratio=0.1), 12)
    assert lrs[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0])  # (step + 1) / 4 x base, never 0
    # cosine over the 8 steps after warm-up, from base towards 0.1 x base at total_steps
    for step in range(4, 12):
        progress = (step - 4 + 1) / 8
        expected = 2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        assert lrs[step] == pytest.approx(expected), step
    assert lrs[-1] == pytest.approx(0.2)  # reaches min_ratio x base at the last step


def test_constant_after_warmup():
    assert _lrs(lambda o: constant(o, warmup_steps=2), 6) == pytest.approx([1.0, 2.0, 2.0, 2.0, 2.0, 2.0])

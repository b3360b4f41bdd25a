"""Progress bars on work that takes minutes (evaluation sampling, the reference log-prob precompute):
shown on a terminal, silent in logs and pipes."""

from __future__ import annotations

import io
import sys

import torch

from alignlab.models.generation import SamplingConfig
from alignlab.modules.ref_cache import compute_ref_table


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _ref_table():
    batches = [
        {"index": torch.tensor([2 * i, 2 * i + 1]), "chosen_input_ids": torch.zeros(2, 3)} for i in range(3)
    ]
    return compute_ref_table(lambda b: (torch.ones(4), torch.ones(4)), batches, 6, torch.device("cpu"))


def test_reference_precompute_bar(monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    table = _ref_table()
    assert "reference log-probs" in sys.stderr.getvalue() and "3/3" in sys.stderr.getvalue()
    assert not table["ref_chosen_logps"].isnan().any()
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal: no bar
    _ref_table()
    assert sys.stderr.getvalue() == ""


def test_evaluation_sampling_bar(tiny_lm, monkeypatch):
    from alignlab.evaluate import evaluate_policy
    from test_evaluate import PROMPTS, FakeTask

    monkeypatch.setattr(sys, "stderr", Terminal())
    evaluate_policy(tiny_lm.model, tiny_lm.tokenizer, FakeTask(), PROMPTS, SamplingConfig(max_new_tokens=4),
                    batch_size=2, n_bootstrap=10)  # fmt: skip
    assert "evaluation sampling" in sys.stderr.getvalue() and "3/3" in sys.stderr.getvalue()

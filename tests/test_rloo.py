"""RLOO and REINFORCE: the tiny policy learns the toy reward; bad settings fail with a clear message."""

from __future__ import annotations

import csv

import pytest
import torch

from alignlab.train import train
from conftest import compose


def _scores(run_dir) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [float(r["objective/score"]) for r in csv.DictReader(f) if r.get("objective/score")]


@pytest.mark.parametrize("algo", ["rloo", "reinforce"])
def test_tiny_policy_gradient_raises_score(tmp_path, algo):
    over = [
        "experiment=rloo_tiny",
        f"algo={algo}",
        "reward@algo.reward=char_fraction",
        f"paths.output_dir={tmp_path}",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        "trainer.max_steps=40",
        "callbacks.checkpoint.every_n_train_steps=40",
    ]
    if algo == "reinforce":
        over += ["data.batch_size=24", "algo.normalize_advantages=true"]
    metrics, objs = train(compose(over))
    scores = _scores(tmp_path)
    assert len(scores) == 40
    first, last = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
    assert last > first + 0.15, (algo, scores)
    assert objs["module"].k == (4 if algo == "rloo" else 1)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert "kl_controller" in ckpt["rl_state"] and ckpt["optimizer_states"]
    if algo == "reinforce":  # the running-mean baseline is part of the state
        assert ckpt["rl_state"]["baseline_value"] == pytest.approx(objs["module"].baseline_value)
    assert (tmp_path / "policy" / "config.json").exists()


def test_rloo_config_errors(tiny_lm):
    from alignlab.modules.rloo import RLOOModule
    from alignlab.rewards.base import CharFractionReward

    with pytest.raises(ValueError, match="k >= 2"):
        RLOOModule(tiny_lm.model, tiny_lm.tokenizer, reward=CharFractionReward(), k=1, baseline="rloo")
    with pytest.raises(ValueError, match="choose one of"):
        RLOOModule(tiny_lm.model, tiny_lm.tokenizer, reward=CharFractionReward(), baseline="median")
    m = RLOOModule(
        tiny_lm.model, tiny_lm.tokenizer, reward=CharFractionReward(), k=2, baseline="ema", ema_decay=0.5
    )
    assert m.advantages(torch.tensor([1.0, 3.0])).tolist() == [-1.0, 1.0]  # first batch: its own mean
    assert m.baseline_value == 2.0
    assert m.advantages(torch.tensor([4.0, 4.0])).tolist() == [2.0, 2.0]
    assert m.baseline_value == 3.0

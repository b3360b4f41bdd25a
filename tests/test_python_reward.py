"""reward=python: a plain function ``module:function(prompts, completions) -> list[float]`` as the reward,
and one clear line (exit 2) when it cannot be imported or returns something unusable."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from alignlab.rewards.python_fn import PythonFunctionReward
from alignlab.utils.config import ConfigError
from alignlab.utils.errors import UserError


def exact_answer(prompts: list[str], completions: list[str]) -> list[float]:
    """A verifiable reward: 1 when the completion contains the prompt's last word, else 0."""
    return [float(p.split()[-1] in c) for p, c in zip(prompts, completions)]


def too_few(prompts, completions):
    return [1.0] * (len(completions) - 1)


def not_finite(prompts, completions):
    return [0.0] * (len(completions) - 1) + [math.nan]


def not_numbers(prompts, completions):
    return ["high"] * len(completions)


NOT_CALLABLE = 3


def test_function_scores_completions():
    reward = PythonFunctionReward("test_python_reward:exact_answer")
    got = reward(["say cat", "say dog"], ["a cat.", "a bird."])
    assert got.dtype == torch.float32 and got.tolist() == [1.0, 0.0]
    assert reward.name == "python[test_python_reward:exact_answer]"
    assert PythonFunctionReward("test_python_reward.exact_answer").fn is exact_answer  # dotted form too


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_xyz:score", "cannot import module 'no_such_module_xyz'"),
        ("test_python_reward:missing", "has no such attribute 'missing'"),
        ("test_python_reward:NOT_CALLABLE", "is not callable 'NOT_CALLABLE'"),
        ("score", "is not module:function"),
        ("", "is empty"),
    ],
)
def test_unimportable_function_is_a_config_error(spec, message):
    with pytest.raises(ConfigError, match=message):
        PythonFunctionReward(spec)


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        ("too_few", "returned 1 scores for 2 completions"),
        ("not_finite", r"1 non-finite value\(s\) among 2 completions \(nan for completion 1: 'y'\)"),
        ("not_numbers", "must return a list of numbers"),
    ],
)
def test_bad_return_values_are_config_errors(fn, message):
    reward = PythonFunctionReward(f"test_python_reward:{fn}")
    with pytest.raises(UserError, match=message):
        reward(["a", "b"], ["x", "y"])


def test_train_reports_an_unimportable_function_in_one_line_before_the_model_loads(tmp_path, monkeypatch):
    from test_user_errors import _guard, run_app

    _guard(monkeypatch, "load")
    code, _, err = run_app("train", ["experiment=grpo_tiny", "reward@algo.reward=python"], tmp_path / "unset")
    assert code == 2 and err.strip().splitlines() == [
        "alignlab-train: error: algo.reward.fn is not set: name the reward function, e.g. "
        "algo.reward.fn=mypkg.checks:score"
    ]
    code, _, err = run_app(
        "train",
        ["experiment=grpo_tiny", "reward@algo.reward=python", "algo.reward.fn=no_such_module_xyz:score"],
        tmp_path,
    )
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert lines == [
        "alignlab-train: error: algo.reward.fn='no_such_module_xyz:score': cannot import module "
        "'no_such_module_xyz' (ModuleNotFoundError: No module named 'no_such_module_xyz'); check the "
        "name and that it is on PYTHONPATH (or installed)"
    ]


def test_grpo_tiny_learns_a_python_reward(tmp_path):
    """RLVR end to end: the tiny policy trained on a plain function's reward (share of the letter 'a')."""
    import csv

    from alignlab.train import train
    from conftest import compose

    sys.path.insert(0, str(tmp_path))
    (tmp_path / "my_checks.py").write_text(
        "def share_of_a(prompts, completions):\n"
        "    return [c.count('a') / max(len(c), 1) for c in completions]\n"
    )
    over = [
        "experiment=grpo_tiny",
        "reward@algo.reward=python",
        "algo.reward.fn=my_checks:share_of_a",
        f"paths.output_dir={tmp_path / 'run'}",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        "trainer.max_steps=4",
        "trainer.val_check_interval=1000",
        "++trainer.limit_val_batches=0",
        "callbacks=none",
    ]
    try:
        _, objs = train(compose(over))
    finally:
        sys.path.remove(str(tmp_path))
    assert objs["module"].reward_fn.reward.name == "python[my_checks:share_of_a]"
    with open(Path(tmp_path) / "run" / "csv" / "metrics.csv") as f:
        scores = [float(r["objective/score"]) for r in csv.DictReader(f) if r.get("objective/score")]
    assert len(scores) == 2 and all(0 <= s <= 1 for s in scores)


def test_a_nan_reward_stops_training_in_one_line_naming_it(tmp_path, monkeypatch):
    """Caught where the reward is produced (not as a non-finite loss later): the reward's name, how many
    values, one completion; exit 2, no traceback."""
    from test_user_errors import run_app

    (tmp_path / "nan_checks.py").write_text(
        "def half_nan(prompts, completions):\n"
        "    return [float('nan') if i % 2 else 0.5 for i in range(len(completions))]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    over = ["experiment=grpo_tiny", "reward@algo.reward=python", "algo.reward.fn=nan_checks:half_nan",
            "trainer.max_steps=2", "trainer.enable_progress_bar=false", "callbacks=none"]  # fmt: skip
    code, out, err = run_app("train", over, tmp_path / "run")
    lines = [x for x in err.splitlines() if x.startswith("alignlab-train:")]
    assert code == 2 and "Traceback" not in out + err, err[-3000:]
    assert len(lines) == 1 and "reward python[nan_checks:half_nan] returned" in lines[0], err[-3000:]
    assert "non-finite value(s) among" in lines[0] and "nan for completion 1:" in lines[0]
    assert "NonFiniteLoss" not in err


def test_any_online_reward_is_checked_where_it_is_produced():
    from alignlab.rewards.base import CharFractionReward, NonFiniteRewardError, NormalizedReward

    class Broken(CharFractionReward):  # e.g. a reward model whose weights went NaN
        def __call__(self, prompts, completions):
            out = super().__call__(prompts, completions)
            out[1:] = math.inf
            return out

    reward = NormalizedReward(Broken("a"), normalize=True)
    long = "b" * 200
    with pytest.raises(NonFiniteRewardError) as e:
        reward(["p"] * 3, ["aaa", long, "c"])
    msg = str(e.value)
    assert "reward char_fraction[a] returned 2 non-finite value(s) among 3 completions" in msg
    assert f"inf for completion 1: '{'b' * 80}...'" in msg  # the example, cut
    assert reward.moments.count == 0  # nothing reached the running statistics

"""A bad algorithm setting is a user error like any other: the train app prints one line naming the key and
the choices, and exits 2 (the modules raise ConfigError, a UserError, not a bare ValueError whose
traceback the user would read)."""

from __future__ import annotations

import pytest

from test_user_errors import run_app

CASES = [
    ("rloo_tiny", "algo.baseline=median", "algo.baseline='median'"),
    ("grpo_tiny", "algo.k=1", "algo.k >= 2"),
    ("ppo_tiny", "algo.kl_penalty=both", "algo.kl_penalty='both'"),
]


@pytest.mark.parametrize(("experiment", "override", "expect"), CASES, ids=[c[0] for c in CASES])
def test_bad_algo_setting_is_one_line_exit_2(experiment, override, expect, tmp_path):
    code, out, err = run_app("train", [f"experiment={experiment}", override], tmp_path / "run")
    assert "Traceback" not in out + err, (out + err)[-2000:]
    assert code == 2, (code, (out + err)[-2000:])
    errors = [x for x in err.splitlines() if x.startswith("alignlab-train: error: ")]
    assert len(errors) == 1 and expect in errors[0], err[-2000:]


def test_config_errors_stay_value_errors():
    # callers that caught ValueError still catch them
    from alignlab.utils.errors import ConfigError, UserError

    assert issubclass(ConfigError, ValueError) and issubclass(ConfigError, UserError)

"""Typed config: a value its target's typed signature cannot take fails right after composition, with a
sentence naming the key, before any model loads; every shipped experiment passes the check."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import CONF, app_env, compose

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml") if not p.stem.startswith("compare"))


def test_mistyped_values_are_named():
    from alignlab.utils.hydra import type_errors

    bad = ["peft=lora", "peft.r=abc", "algo.kl_coef=hi", "trainer.max_steps=x"]
    good = ["algo.cliprange=0.3", "algo.whiten_rewards=true", "paths.output_dir=/tmp/unused"]
    cfg = compose(["experiment=ppo_tiny", *bad, *good])
    errors = type_errors(cfg)
    assert "peft.r='abc' is not an int (LoraSpec.r)" in errors  # a dataclass spec
    assert "algo.kl_coef='hi' is not a float (PPOModule.kl_coef)" in errors  # from the base class (**kwargs)
    assert "trainer.max_steps='x' is not an int (Trainer.max_steps)" in errors  # a third-party target
    assert not [e for e in errors if "cliprange" in e or "whiten" in e]  # well-typed overrides pass
    # an optional value (bool | None): null passes, anything else must be of the type
    dpo = ["experiment=dpo_tiny", "paths.output_dir=/tmp/unused"]
    assert type_errors(compose([*dpo, "algo.length_normalize=null"])) == []
    assert type_errors(compose([*dpo, "algo.length_normalize=maybe"])) == [
        "algo.length_normalize='maybe' is not a bool (DPOModule.length_normalize)"
    ]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_shipped_experiments_are_well_typed(name):
    from alignlab.utils.hydra import type_errors

    assert type_errors(compose([f"experiment={name}", "paths.output_dir=/tmp/unused"])) == []


def test_cli_fails_at_start_naming_the_key(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "alignlab.train", "experiment=dpo_tiny", "algo.beta=abc"],
        capture_output=True,
        text=True,
        env=app_env(tmp_path),
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "algo.beta='abc' is not a float (DPOModule.beta)" in proc.stderr
    assert "Traceback" not in proc.stderr and "loading model" not in proc.stdout + proc.stderr

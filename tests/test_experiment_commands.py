"""Every command written in a comment of a cheap experiment config runs, so none can rot.

The commands are read from the comments of conf/experiment/*_tiny.yaml (the on-top command and any
variants) and run through the app's real entry point in this process, shortened to two optimiser steps:
each must end normally (no user error, no traceback), and one with an ``optimized_metric`` must return it
(validation runs once at the end when the two steps never reached ``trainer.val_check_interval``).
"""

from __future__ import annotations

import json
import re
import shlex

import pytest

from conftest import CONF
from test_user_errors import run_app

COMMAND = re.compile(r"^#\s+python -m alignlab\.(\w+)\s+(.*?)\s*(?:#.*)?$")


def commands() -> list[tuple[str, str, list[str]]]:
    found = []
    for path in sorted((CONF / "experiment").glob("*_tiny.yaml")):
        for line in path.read_text().splitlines():
            m = COMMAND.match(line)
            if m:
                found.append((path.stem, m.group(1), shlex.split(m.group(2))))
    return found


COMMANDS = commands()


def test_every_tiny_experiment_names_its_command():
    named = {name for name, _, args in COMMANDS if f"experiment={name}" in args}
    assert named == {p.stem for p in (CONF / "experiment").glob("*_tiny.yaml")}
    assert len(COMMANDS) >= 12  # the on-top commands and the written variants (dpo losses, reinforce)


@pytest.mark.parametrize("name,app,args", COMMANDS, ids=[" ".join(a) for _, _, a in COMMANDS])
def test_config_comment_command_runs(name, app, args, tmp_path):
    from omegaconf import OmegaConf

    code, out, err = run_app(app, [*args, "trainer.max_steps=2"], tmp_path / "run")
    assert code is None and "Traceback" not in err and "error:" not in err, (code, err[-3000:])
    assert (tmp_path / "run" / "policy").is_dir()
    metric = OmegaConf.load(CONF / "experiment" / f"{name}.yaml").get("optimized_metric")
    if metric:  # a short run that never validated still measures it (it was a KeyError, exit 1)
        metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
        assert metric in metrics, sorted(metrics)


def test_one_row_says_validation_is_empty_at_start_and_the_run_still_succeeds(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"prompt": "The movie was", "completion": " great."}) + "\n")
    args = ["experiment=sft_tiny", f"data.train_path={path}", "trainer.max_steps=2"]
    code, out, err = run_app("train", args, tmp_path / "run")
    logs = out + err  # Hydra's console log is stdout
    assert code is None and "Traceback" not in logs, logs[-3000:]
    empty = logs.index("the validation split is empty")
    assert empty < logs.index("loading model")  # said at start, before the model loads
    # no validation, so no val/loss: a warning, and the finished run is not turned into a failure
    assert "optimized_metric=val/loss was not logged" in logs[empty:]
    assert (tmp_path / "run" / "policy").is_dir()

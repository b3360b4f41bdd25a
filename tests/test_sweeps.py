"""wandb sweep files: each passes wandb's sweep-config schema (the rules the server applies to
`wandb sweep`), and every parameter value, turned into the command line the way `wandb agent` does it,
composes the pipeline config."""

from __future__ import annotations

import re

import pytest
import yaml
from omegaconf import DictConfig

from conftest import REPO, compose

SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))

# The installed wandb package checks sweep configs on the server and ships no schema file, so these are
# the published rules of wandb's sweep-config JSON schema (wandb/sweeps, src/sweeps/config/schema.json).
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
TOP_LEVEL = {
    "apiVersion", "kind", "controller", "description", "program", "job", "image_uri", "entity", "project",
    "method", "command", "name", "run_cap", "metric", "metrics", "scheduler", "early_terminate",
    "parameters",
}  # fmt: skip
METHODS = {"bayes", "random", "grid", "custom"}
GOALS = {"minimize", "maximize"}
# distribution -> (required keys, allowed keys) of one parameter
DISTRIBUTIONS = {
    "categorical": ({"values"}, {"values", "distribution"}),
    "constant": ({"value"}, {"value", "distribution"}),
    "int_uniform": ({"min", "max"}, {"min", "max", "distribution"}),
    "uniform": ({"min", "max"}, {"min", "max", "distribution"}),
    "log_uniform_values": ({"min", "max"}, {"min", "max", "distribution"}),
    "inv_log_uniform_values": ({"min", "max"}, {"min", "max", "distribution"}),
    "q_uniform": ({"min", "max"}, {"min", "max", "q", "distribution"}),
    "q_log_uniform_values": ({"min", "max"}, {"min", "max", "q", "distribution"}),
    "normal": (set(), {"mu", "sigma", "distribution"}),
    "log_normal": (set(), {"mu", "sigma", "distribution"}),
}


def _distribution(spec: dict) -> str:
    """The distribution wandb infers for a parameter spec when none is named."""
    if "distribution" in spec:
        return spec["distribution"]
    if "values" in spec:
        return "categorical"
    if "value" in spec:
        return "constant"
    if all(isinstance(spec.get(k), int) for k in ("min", "max")):
        return "int_uniform"
    return "uniform"


def schema_violations(sweep: dict) -> list[str]:
    """Every way ``sweep`` breaks wandb's sweep-config schema (empty when it passes)."""
    out = [f"unknown top-level key {k!r}" for k in sweep if k not in TOP_LEVEL]
    if sweep.get("method") not in METHODS:
        out.append(f"method must be one of {sorted(METHODS)}")
    metric = sweep.get("metric")
    if metric is not None and (
        not isinstance(metric, dict) or "name" not in metric or metric.get("goal", "minimize") not in GOALS
    ):
        out.append("metric needs a name and a goal of minimize|maximize")
    params = sweep.get("parameters")
    if not isinstance(params, dict) or not params:
        return [*out, "parameters must be a non-empty mapping"]
    for name, spec in params.items():
        if not NAME.match(str(name)):
            out.append(f"parameter name {name!r} does not match {NAME.pattern}")
        if not isinstance(spec, dict):
            out.append(f"parameter {name!r} must be a mapping")
            continue
        dist = _distribution(spec)
        if dist not in DISTRIBUTIONS:
            out.append(f"parameter {name!r}: unknown distribution {dist!r}")
            continue
        required, allowed = DISTRIBUTIONS[dist]
        if missing := required - set(spec):
            out.append(f"parameter {name!r} ({dist}) lacks {sorted(missing)}")
        if extra := set(spec) - allowed:
            out.append(f"parameter {name!r} ({dist}) has keys {sorted(extra)} it may not have")
        if "values" in spec and (not isinstance(spec["values"], list) or not spec["values"]):
            out.append(f"parameter {name!r}: values must be a non-empty list")
        if dist.endswith("log_uniform_values") and not spec.get("min", 0) > 0:
            out.append(f"parameter {name!r}: {dist} needs min > 0")
    return out


def test_schema_rejects_what_wandb_rejects():
    """The checker itself: each broken sweep fails for the reason wandb gives."""
    ok = {"method": "grid", "parameters": {"seed": {"values": [0, 1]}}}
    assert schema_violations(ok) == []
    assert schema_violations({**ok, "parameters": {"+variant.algo.beta": {"value": 1}}})
    assert schema_violations({**ok, "method": "sobol"})
    assert schema_violations({**ok, "metric": {"name": "x", "goal": "up"}})
    assert schema_violations({**ok, "parameters": {"lr": {"distribution": "log_uniform_values", "min": 0}}})
    assert schema_violations({**ok, "parameters": {"lr": {"values": [1], "min": 0}}})
    assert schema_violations({**ok, "programme": "x"})


def _points(sweep: dict) -> list[dict]:
    """Parameter points covering every listed value once and both ends of each range."""
    params = sweep["parameters"]
    choices = {}
    for name, spec in params.items():
        if "values" in spec:
            choices[name] = spec["values"]
        elif "value" in spec:
            choices[name] = [spec["value"]]
        else:
            choices[name] = [spec["min"], spec["max"]]
    n = max(len(v) for v in choices.values())
    return [{k: v[i % len(v)] for k, v in choices.items()} for i in range(n)]


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_file_passes_wandb_schema(path):
    sweep = yaml.safe_load(path.read_text())
    assert schema_violations(sweep) == []
    assert sweep.get("project"), f"{path.name}: name the wandb project"
    assert sweep["metric"]["name"].startswith("eval/"), "optimise a number the pipeline logs"


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_points_compose(path, tmp_path):
    """The agent's own argument builder (wandb.sdk.launch.sweeps.utils) makes the Hydra overrides."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    sweep = yaml.safe_load(path.read_text())
    assert "${args_no_hyphens}" in sweep["command"], "Hydra takes key=value, without leading dashes"
    assert sweep["command"][2:4] == ["-m", "alignlab.pipeline"]
    for point in _points(sweep):
        args = create_sweep_command_args({"args": {k: {"value": v} for k, v in point.items()}})
        cfg = compose([*args["args_no_hyphens"], f"paths.output_dir={tmp_path}"], "pipeline")
        for key, value in point.items():
            node = cfg
            for part in key.split("."):
                node = node[part] if part in node else getattr(node, part)
            if isinstance(node, DictConfig):  # a config group option: compare its name
                node = node.name
            assert node == value, f"{path.name}: {key}={value} composed to {node}"

"""wandb sweep files for the equal-tuning searches (``alignlab.tune_sweeps``) and the trial entry point the agent
runs (``alignlab.tune_trial``): each file's parameters are its method's Optuna space exactly (every key,
bounds, log scale, choices, read here from the space's own Hydra sweep strings), the files are not stale,
the agent's argument builder turns every point into the trial's params, and the trial logs the metric the
sweep maximises. wandb never reaches a server here (WANDB_MODE=disabled; the logging test fakes wandb.init)."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from omegaconf import OmegaConf

from alignlab.tune import METRIC, load_space
from alignlab.tune_sweeps import SWEEP_DIR, render, tuned_methods, wandb_parameter
from alignlab.tune_trial import main as trial_main
from alignlab.tune_trial import split_args
from alignlab.utils.errors import ConfigError
from conftest import CONF, compose
from test_sweeps import schema_violations

METHODS = tuned_methods("tuned")


def _expected(sweep: str):
    """A Hydra sweep string of conf/hparams_search as the wandb parameter it must become."""
    if sweep.startswith("choice("):
        return {"values": [yaml.safe_load(x.strip()) for x in sweep[len("choice(") : -1].split(",")]}
    low, high = re.search(r"interval\(([^,]+),([^)]+)\)", sweep).groups()
    kind = "log_uniform_values" if sweep.startswith("tag(log") else "uniform"
    return {"distribution": kind, "min": float(low), "max": float(high)}


def test_every_tuned_method_has_a_sweep_file():
    assert {"rlhf", "rloo", "rlhf_grpo", "dpo", "rlaif_dpo"} <= set(METHODS)
    assert sorted(p.stem for p in SWEEP_DIR.glob("*.yaml")) == sorted(METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_sweep_parameters_are_the_optuna_space_exactly(method):
    path = SWEEP_DIR / f"{method}.yaml"
    text = path.read_text()
    assert text == render(method), f"{path} is stale: python -m alignlab.tune_sweeps"
    sweep = yaml.safe_load(text)
    assert schema_violations(sweep) == []
    raw = OmegaConf.to_container(OmegaConf.load(CONF / "hparams_search" / f"{method}.yaml"))
    want = {k.removeprefix("variant."): _expected(v) for k, v in raw["hydra"]["sweeper"]["params"].items()}
    if passes := (raw.get("search") or {}).get("passes"):
        want["passes"] = {"values": passes}
    assert sweep["parameters"] == want
    for key, spec in sweep["parameters"].items():  # True is not 1: the choices keep their types
        if "values" in spec:
            assert [type(v) for v in spec["values"]] == [type(v) for v in want[key]["values"]], key
    assert set(sweep["parameters"]) == set(load_space(method)[0])
    assert sweep["method"] == "bayes" and sweep["metric"] == {"name": METRIC, "goal": "maximize"}
    tune = compose(["comparison=tuned", f"method={method}", "paths.output_dir=/tmp/unused"], "pipeline").tune
    assert sweep["run_cap"] == tune.n_trials  # the same trials as alignlab.tune
    assert sweep["command"][2:] == ["-m", "alignlab.tune_trial", "comparison=tuned", f"method={method}",
                                    "${args_no_hyphens}"]  # fmt: skip


def _points(params: dict) -> list[dict]:
    """Points covering every choice once and both ends of every range."""
    sides = {k: s["values"] if "values" in s else [s["min"], s["max"]] for k, s in params.items()}
    n = max(len(v) for v in sides.values())
    return [{k: v[i % len(v)] for k, v in sides.items()} for i in range(n)]


@pytest.mark.parametrize("method", METHODS)
def test_the_agents_arguments_become_the_trials_params(method):
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    sweep = yaml.safe_load((SWEEP_DIR / f"{method}.yaml").read_text())
    dists = load_space(method)[0]
    fixed = sweep["command"][4:6]
    for point in _points(sweep["parameters"]):
        args = create_sweep_command_args({"args": {k: {"value": v} for k, v in point.items()}})
        overrides, params = split_args([*fixed, *args["args_no_hyphens"]], dists, method)
        assert overrides == fixed and params == point
        assert [type(params[k]) for k in point] == [type(v) for v in point.values()]


def test_a_point_outside_the_space_is_refused_in_one_line(capsys):
    dists = load_space("rlhf")[0]
    good = {"algo.optimizer.lr": "0.001", "algo.kl_coef": "0.05", "algo.ppo_epochs": "2", "algo.num_minibatches": "1",
            "algo.cliprange": "0.2", "algo.kl_penalty": "token", "algo.whiten_rewards": "false",
            "algo.value_model": "shared", "algo.value_init": "random", "algo.value_warmup_steps": "0"}  # fmt: skip
    args = [f"{k}={v}" for k, v in good.items()]
    assert split_args(args, dists, "rlhf")[1]["algo.ppo_epochs"] == 2
    for bad in ("algo.optimizer.lr=0.01", "algo.ppo_epochs=3", "algo.ppo_epochs=True", "algo.kl_penalty=both",
                "algo.whiten_rewards=1", "algo.cliprange=abc"):  # fmt: skip
        key = bad.partition("=")[0]
        with pytest.raises(ConfigError, match="outside the space"):
            split_args([a for a in args if not a.startswith(key + "=")] + [bad], dists, "rlhf")
    with pytest.raises(
        ConfigError, match="algo.cliprange: searched in conf/hparams_search/rlhf.yaml but not given"
    ):
        split_args([a for a in args if not a.startswith("algo.cliprange=")], dists, "rlhf")
    assert trial_main(["comparison=tuned", "method=rlhf", *args[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "algo.optimizer.lr" in err and "regenerate" in err


def test_a_space_without_an_exact_wandb_equivalent_is_refused():
    from optuna.distributions import (
        DiscreteUniformDistribution,
        IntLogUniformDistribution,
        IntUniformDistribution,
    )

    assert wandb_parameter("n", IntUniformDistribution(1, 4)) == {
        "distribution": "int_uniform",
        "min": 1,
        "max": 4,
    }
    for dist in (IntUniformDistribution(1, 9, step=2), IntLogUniformDistribution(1, 8),
                 DiscreteUniformDistribution(0.0, 1.0, 0.25)):  # fmt: skip
        with pytest.raises(ConfigError, match="no exact wandb sweep equivalent"):
            wandb_parameter("x", dist)


def test_a_trial_logs_the_metric_the_sweep_maximises(monkeypatch, tmp_path):
    import wandb

    from alignlab.tune import log_trial

    runs = []

    class Run:
        def __init__(self, **kwargs):
            self.init, self.logged, self.summary = kwargs, {}, {}
            runs.append(self)

        def log(self, d):
            self.logged.update(d)

        def finish(self):
            self.finished = True

    monkeypatch.setattr(wandb, "init", lambda **kw: Run(**kw))
    cfg = compose(
        ["comparison=tuned_quick", "wandb.enabled=true", f"paths.output_dir={tmp_path}"], "pipeline"
    )
    record = {
        "method": "dpo",
        "seed": 1000,
        "variant": {"algo.beta": 0.1},
        "eval": {"gold_reward": 0.4, "kl": 2.0, "split": "val"},
    }
    log_trial(cfg, record, {"algo.beta": 0.1}, 0.375)
    (run,) = runs
    assert run.summary[METRIC] == 0.375 and run.logged["val/gold_reward"] == 0.4 and run.finished
    assert run.init["config"]["algo.beta"] == 0.1 and run.init["group"] == cfg.wandb.group


def test_one_trial_end_to_end_on_the_tiny_model(tmp_path):
    import alignlab.pipeline as pipeline

    args = ["comparison=tuned_quick", "method=dpo", "profile=tiny", f"artifacts_dir={tmp_path / 'art'}",
            "wandb.enabled=false", f"tune.storage_dir={tmp_path / 'tune'}", f"paths.output_dir={tmp_path}",
            "algo.optimizer.lr=0.001", "algo.beta=0.1", "passes=2"]  # fmt: skip
    assert trial_main(args) == 0
    (path,) = (tmp_path / "tune" / "dpo").glob("sweep-*/trial.json")
    trial = json.loads(path.read_text())
    result = json.loads((path.parent / "result.json").read_text())
    assert (
        result["seed"] == 1000 and result["eval"]["split"] == "val"
    )  # the search seed, never the test prompts
    assert result["variant"]["algo.beta"] == 0.1 and result["variant"]["trainer.max_steps"] == 2 * compose(
        ["profile=tiny", "paths.output_dir=/tmp/unused"], "pipeline").profile.dpo.trainer.max_steps  # fmt: skip
    cfg = compose([a for a in args if "=" in a and not a.startswith(("algo.", "passes"))], "pipeline")
    assert trial["value"] == pytest.approx(pipeline.objective(cfg, result))

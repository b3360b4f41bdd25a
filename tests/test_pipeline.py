"""Pipelines: every sweep composes; a tiny multirun of two methods x two seeds produces a report, and a
second identical run reuses every artifact."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from conftest import CONF, REPO, app_env, compose

SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))
SEARCHES = sorted(p.stem for p in (CONF / "hparams_search").glob("*.yaml"))
METHODS = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_wandb_sweep_files_compose(path, tmp_path):
    text = path.read_text()
    assert f"wandb sweep sweeps/{path.name}" in text.splitlines()[0], "name the command that starts it"
    sweep = yaml.safe_load(text)
    assert sweep["command"][2:4] == ["-m", "alignlab.pipeline"]
    overrides = []
    for key, spec in sweep["parameters"].items():
        value = spec["values"][0] if "values" in spec else spec.get("value", spec.get("min"))
        overrides.append(f"{key}={value}")
    cfg = compose([*overrides, f"paths.output_dir={tmp_path}"], "pipeline")
    assert cfg.method.name


@pytest.mark.parametrize("name", SEARCHES)
def test_hparams_search_composes(name, tmp_path):
    cfg = compose(
        [f"hparams_search={name}", f"paths.output_dir={tmp_path}"], "pipeline", return_hydra_config=True
    )
    assert "optuna" in cfg.hydra.sweeper._target_.lower() and cfg.hydra.sweeper.direction == "maximize"
    assert cfg.kl_budget is not None and all(k.startswith("+variant.") for k in cfg.hydra.sweeper.params)


@pytest.mark.parametrize("name", METHODS)
def test_methods_compose(name, tmp_path):
    cfg = compose([f"method={name}", f"paths.output_dir={tmp_path}"], "pipeline")
    assert cfg.method.policy in ("ppo", "rloo", "dpo")
    assert bool(cfg.method.labeller) != bool(cfg.method.direct_reward), "pairs or a direct reward, not both"


def test_objective_penalises_kl_over_budget():
    from omegaconf import OmegaConf

    from alignlab.pipeline import objective

    rec = {"eval": {"gold_reward": 0.5, "kl": 3.0}}
    assert objective(OmegaConf.create({"kl_budget": None}), rec) == 0.5
    assert objective(OmegaConf.create({"kl_budget": 2.0, "kl_penalty": 1.0}), rec) == pytest.approx(-0.5)


def _run(args: list[str], tmp_path) -> str:
    env = app_env(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def test_tiny_multirun_report_and_cached_rerun(tmp_path):
    art = tmp_path / "artifacts"
    args = [
        "alignlab.pipeline",
        "--multirun",
        "profile=tiny",
        "method=dpo,rlhf",
        "seed=0,1",
        f"artifacts_dir={art}",
        "wandb.enabled=false",
    ]
    first = _run([*args, f"hydra.sweep.dir={tmp_path}/sweep1"], tmp_path)
    # pairs sampled once and labelled once, shared by both methods and both seeds
    assert first.count("samples      done") == 1 and first.count("labels       done") == 1
    assert first.count("eval_base    done") == 1 and first.count("result:") == 4
    second = _run([*args, f"hydra.sweep.dir={tmp_path}/sweep2"], tmp_path)
    # dpo: samples, labels, dpo, eval_base, eval, win_rate; rlhf adds the reward model
    assert "done in" not in second and second.count("cached") == 2 * 6 + 2 * 7
    out = _run(["alignlab.compare", str(tmp_path / "sweep2"), "--out", str(tmp_path / "report")], tmp_path)
    assert "| dpo | 2 |" in out and "| rlhf | 2 |" in out
    row = next(line for line in out.splitlines() if line.startswith("| dpo"))
    assert row.split("|")[6].strip() != "n/a"  # the judge's win rate against the base policy
    assert (tmp_path / "report" / "frontier.png").stat().st_size > 10_000

"""Pipelines: every sweep composes; a tiny multirun of two methods x two seeds produces a report, and a
second identical run reuses every artifact."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from conftest import CONF, REPO, app_env, compose

SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))
SEARCHES = sorted(p.stem for p in (CONF / "hparams_search").glob("*.yaml"))
METHODS = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))
COMPARISONS = sorted(p.stem for p in (CONF / "comparison").glob("*.yaml"))


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
    assert cfg.kl_budget is not None and all(k.startswith("variant.") for k in cfg.hydra.sweeper.params)


@pytest.mark.parametrize("name", METHODS)
def test_methods_compose_into_stage_lists(name, tmp_path):
    from alignlab.pipeline import stage_list

    cfg = compose([f"method={name}", f"paths.output_dir={tmp_path}"], "pipeline")
    stages = stage_list(cfg)
    names = [n for n, _ in stages]
    trains = dict(stages)["eval"]["app"] == "evaluate"  # best-of-n's own evaluation selects, trains nothing
    assert ("policy" in names) == trains and names[-2:] == ["eval_base", "eval"]
    for i, (stage_name, stage) in enumerate(stages):  # every input is an earlier stage's output
        assert stage["app"] in ("sample", "label", "train", "evaluate", "best_of_n"), stage_name
        assert stage.get("budget") is None or stage["budget"] in cfg.profile, stage_name
        for ref in (stage.get("inputs") or {}).values():
            assert ref.split("/")[0] in names[:i], f"{stage_name} reads {ref} before it is made"
    assert bool(cfg.method.labeller) == ("labels" in names), "a labeller exactly when pairs are labelled"
    if not trains:
        assert (dict(stages)["eval"].get("groups") or {}).get("reward@scorer"), "best-of-n names its ranker"
        return
    policy = dict(stages)["policy"]
    reward = (policy.get("groups") or {}).get("reward@algo.reward")
    judge = (policy.get("groups") or {}).get("judge@algo.judge")  # online DPO: the judge of each step
    assert policy["budget"] == "dpo" or reward or judge, "online RL names its reward"


@pytest.mark.parametrize("name", COMPARISONS)
def test_comparisons_compose_with_the_pipeline(name, tmp_path):
    lines = (CONF / "comparison" / f"{name}.yaml").read_text().splitlines()
    assert lines[0].strip() == "# @package _global_"
    assert any(f"comparison={name}" in line for line in lines[:4]), "name the command on top of the file"
    cfg = compose(
        [f"comparison={name}", f"paths.output_dir={tmp_path}"], "pipeline", return_hydra_config=True
    )
    assert cfg.hydra.sweeper.params and cfg.method.name


def test_stage_config_forwards_model_and_task_and_applies_budget(tmp_path):
    from alignlab.pipeline import stage_config, stage_list

    cfg = compose(
        ["method=rlhf", "model=hf", "model.name_or_path=org/some-model", "task=sentiment_toy", "seed=3",
         "variant.algo.kl_coef=0.2", f"paths.output_dir={tmp_path}"], "pipeline",
    )  # fmt: skip
    stages = dict(stage_list(cfg))
    dirs = {"samples": tmp_path / "s", "labels": tmp_path / "l", "reward_model": tmp_path / "rm"}
    pol = stage_config(cfg, stages["policy"], dirs)
    assert pol.model.name_or_path == "org/some-model" and pol.task._target_.endswith("SyntheticSentimentTask")
    assert pol.seed == 3 and pol.algo.kl_coef == 0.2  # the run seed and the sweep point
    assert pol.trainer.max_steps == cfg.profile.ppo.trainer.max_steps
    assert pol.algo.reward.path == str(tmp_path / "rm" / "policy")
    lab = stage_config(cfg, stages["labels"], dirs)
    assert lab.judge._target_.endswith("GoldJudge") and lab.pairs_path == str(
        tmp_path / "s" / "samples.jsonl"
    )


def test_stage_config_rejects_a_key_the_app_lacks(tmp_path):
    from alignlab.pipeline import stage_config, stage_list
    from alignlab.utils.config import ConfigError

    cfg = compose(
        ["method=dpo", "+profile.dpo.trainer.max_stepz=3", f"paths.output_dir={tmp_path}"], "pipeline"
    )
    stages = dict(stage_list(cfg))
    with pytest.raises(ConfigError, match="max_stepz"):
        stage_config(cfg, stages["policy"], {"labels": tmp_path})


def test_objective_penalises_kl_over_budget():
    from omegaconf import OmegaConf

    from alignlab.pipeline import objective

    rec = {"eval": {"gold_reward": 0.5, "kl": 3.0}}
    assert objective(OmegaConf.create({"kl_budget": None}), rec) == 0.5
    assert objective(OmegaConf.create({"kl_budget": 2.0, "kl_penalty": 1.0}), rec) == pytest.approx(-0.5)


def _run(args: list[str], tmp_path, **env_vars) -> str:
    env = {**app_env(tmp_path), **env_vars}
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
    # pairs sampled and labelled once per seed (every seed a full replicate), shared by both methods
    assert first.count("samples      done") == 2 and first.count("labels       done") == 2
    assert first.count("eval_base    done") == 1 and first.count("result:") == 4
    second = _run([*args, f"hydra.sweep.dir={tmp_path}/sweep2"], tmp_path)
    # dpo: samples, labels, dpo, eval_base, eval (with the win rate); rlhf adds the reward model
    assert "done in" not in second and second.count("cached") == 2 * 5 + 2 * 6
    out = _run(["alignlab.compare", str(tmp_path / "sweep2"), "--out", str(tmp_path / "report")], tmp_path)
    assert "| dpo | 2 |" in out and "| rlhf | 2 |" in out
    row = next(line for line in out.splitlines() if line.startswith("| dpo"))
    assert row.split("|")[6].strip() != "n/a"  # the judge's win rate against the base policy
    assert (tmp_path / "report" / "frontier.png").stat().st_size > 10_000


def test_published_results_are_found_by_a_rerun_and_only_for_the_same_job(tmp_path):
    from alignlab.compare import find_results
    from alignlab.publish import publish, published

    pub = tmp_path / "published"
    args = ["method=dpo", "seed=1", f"publish.dir={pub}", f"paths.output_dir={tmp_path}"]
    cfg = compose(args, "pipeline")
    assert published(cfg) is None
    record = {
        "method": "dpo",
        "seed": 1,
        "eval": {"gold_reward": 0.3},
        "stages": [{"dir": "/x"}],
        "curves": [],
    }
    path = publish(cfg, record)
    assert path.name == "dpo-s1.json" and "stages" not in json.loads(path.read_text())
    assert published(compose(args, "pipeline"))["eval"]["gold_reward"] == 0.3  # the rerun skips this job
    assert published(compose([*args, "profile.dpo.trainer.max_steps=7"], "pipeline")) is None  # another job
    assert published(compose([*args[:1], "seed=2", *args[2:]], "pipeline")) is None
    assert [r["seed"] for r in find_results([pub])] == [1]  # compare reads published records


def test_a_result_trained_in_another_precision_is_not_skipped(tmp_path, monkeypatch):
    """A bf16 result published on a CPU with native bf16 is another job on a CPU that trains in fp32."""
    from alignlab.publish import publish, published
    from alignlab.utils.precision import cpu_precision

    args = ["method=dpo", "seed=1", f"publish.dir={tmp_path / 'pub'}", f"paths.output_dir={tmp_path}"]
    monkeypatch.setenv("ALIGNLAB_CPU_PRECISION", "bf16-mixed")
    cpu_precision.cache_clear()
    try:
        publish(compose(args, "pipeline"), {"method": "dpo", "seed": 1, "eval": {"gold_reward": 0.3}})
        assert published(compose(args, "pipeline")) is not None
        monkeypatch.setenv("ALIGNLAB_CPU_PRECISION", "32-true")
        cpu_precision.cache_clear()
        assert published(compose(args, "pipeline")) is None
    finally:
        cpu_precision.cache_clear()


def test_every_stage_that_runs_leaves_a_wandb_run_with_its_curves_and_config(tmp_path):
    from alignlab.loggers import offline_runs

    art = tmp_path / "artifacts"
    env_args = ["alignlab.pipeline", "profile=tiny", "method=rlhf", f"artifacts_dir={art}",
                f"hydra.run.dir={tmp_path}/run", "wandb.group=cmp-test", "wandb.system_metrics=false"]  # fmt: skip
    _run(env_args, tmp_path, WANDB_MODE="offline")
    runs = offline_runs(art)
    kinds = sorted(r.job_type for r in runs)
    assert kinds == ["eval", "eval_base", "labels", "policy", "reward_model", "samples"], kinds
    assert {r.group for r in runs} == {"cmp-test"} and {r.project for r in runs} == {"alignlab"}
    rm = next(r for r in runs if r.job_type == "reward_model")
    assert any("train/loss" in h for h in rm.history), "the reward model's training curve"
    assert rm.config["algo"]["_target_"].endswith("RewardModule") and "trainer" in rm.config  # full config
    ev = next(r for r in runs if r.job_type == "eval")
    assert ev.config["policy_path"].endswith("policy") and {"win_rate", "gold_reward"} <= set(ev.summary)
    for kind in ("eval", "eval_base"):  # each evaluation's examples table: prompt, completion, gold
        run_dir = next(art.glob(f"{kind}/*/wandb/offline-run-*"))
        (table,) = run_dir.glob("files/media/table/examples_*.table.json")
        t = json.loads(table.read_text())
        assert t["columns"] == ["prompt", "completion", "gold"] and len(t["data"]) >= 2, kind
    (job,) = offline_runs(tmp_path / "run")  # the job's run: the sweep keys and the whole config
    assert job.config["method"] == "rlhf" and job.config["pipeline"]["method"]["name"] == "rlhf"
    assert job.config["pipeline"]["profile"] and "hydra" not in job.config["pipeline"]


def test_a_mistyped_sweep_value_fails_before_any_stage_runs(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "alignlab.pipeline", "profile=tiny", "method=dpo", "variant.algo.beta=abc",
         f"artifacts_dir={tmp_path}/art", f"hydra.run.dir={tmp_path}/run", "wandb.enabled=false"],
        cwd=REPO, env=app_env(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "algo.beta" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "art").exists()  # no stage ran

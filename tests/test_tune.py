"""Equal tuning (``python -m alignlab.tune comparison=tuned_quick``) in a test-sized form on the tiny model:
two methods x two trials x one final seed. Trials are evaluated on the validation prompts, the chosen
configuration is the best trial's, the final runs train it on a fresh seed and evaluate on test, a rerun runs
nothing (also with the study lost: the published record restores it), and a trial a killed run left behind
runs again with its configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import alignlab.pipeline as pipeline
from alignlab.tune import budget_values, load_space, tune_all
from conftest import CONF, compose


def _overrides(tmp_path: Path, n_trials: int = 2, methods: str = "dpo,rlhf") -> list[str]:
    return [
        "comparison=tuned_quick",
        "profile=tiny",
        f"artifacts_dir={tmp_path / 'art'}",
        "wandb.enabled=false",
        f"tune.methods=[{methods}]",
        f"tune.n_trials={n_trials}",
        "tune.n_startup_trials=2",
        "tune.final_seeds=[0]",
        "tune.n_jobs=1",
        f"tune.storage_dir={tmp_path / 'tune'}",
        f"tune.record_dir={tmp_path / 'search'}",
        f"publish.dir={tmp_path / 'runs'}",
    ]


def _run(tmp_path: Path, monkeypatch, n_trials: int = 2, methods: str = "dpo,rlhf") -> tuple[dict, list]:
    calls = []
    inner = pipeline.run_pipeline

    def spy(cfg):
        calls.append((cfg.method.name, int(cfg.seed), str(cfg.profile.eval.split)))
        return inner(cfg)

    monkeypatch.setattr(pipeline, "run_pipeline", spy)
    over = _overrides(tmp_path, n_trials, methods)
    records = tune_all(compose([*over, f"paths.output_dir={tmp_path}"], "pipeline"), over)
    return records, calls


def test_tuned_quick_tiny_end_to_end_and_resume(tmp_path, monkeypatch):
    records, calls = _run(tmp_path, monkeypatch)
    # 2 trials per method on the search seed and the validation prompts, then 1 final run on test
    for method in ("dpo", "rlhf"):
        assert calls.count((method, 1000, "val")) == 2 and calls.count((method, 0, "test")) == 1
    for method, rec in records.items():
        trials = rec["trials"]
        assert [t["state"] for t in trials] == ["COMPLETE", "COMPLETE"] and rec["n_trials"] == 2
        for t in trials:
            result = json.loads((Path(t["dir"]) / "result.json").read_text())
            assert result["eval"]["split"] == "val" and result["seed"] == 1000  # never the test prompts
            assert result["variant"] == {k: v for k, v in t["variant"].items() if v is not None}
            want = pipeline.objective(
                compose([*_overrides(tmp_path), f"paths.output_dir={tmp_path}"], "pipeline"), result
            )
            assert t["value"] == pytest.approx(want)
        best = max(trials, key=lambda t: t["value"])
        assert rec["best"]["number"] == best["number"] and rec["best"]["variant"] == best["variant"]
        # the final run trains the chosen configuration on the fresh seed and evaluates on test
        (final,) = rec["final"]
        assert final["seed"] == 0 and final["split"] == "test" and final["variant"] == best["variant"]
        published = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob(f"{method}-s0*.json")]
        assert len(published) == 1 and published[0]["eval"]["split"] == "test"
        assert published[0]["variant"] == best["variant"]
        assert published[0]["tuned"] == "tuned_quick"  # alignlab.compare keeps it apart from default runs
        run_dir = tmp_path / "tune" / method / "final-s0"
        assert json.loads((run_dir / "result.json").read_text())["tuned"] == "tuned_quick"
        assert rec["cost"]["search_cpu_s"] > 0 and all(t["cpu_s"] is not None for t in trials)
        on_disk = json.loads((tmp_path / "search" / f"{method}.json").read_text())
        assert on_disk["best"]["number"] == best["number"]
    # the rlhf trials ran PPO on the profile's rollout batches whatever passes they drew
    space = load_space("rlhf")[1]
    for t in records["rlhf"]["trials"]:
        upb = t["variant"]["algo.ppo_epochs"] * t["variant"]["algo.num_minibatches"]
        assert t["variant"].get("trainer.max_steps", 4) == 2 * upb, t["variant"]  # tiny: 2 batches of 1 x 2
    assert space["updates_per_batch"]
    # the report: per method its trials, plot and cost; the study carries each trial's cost too
    report = (tmp_path / "tuning.md").read_text()
    for method, rec in records.items():
        assert (tmp_path / f"tuning-{method}.png").exists() and f"## {method}" in report
        assert f"Chosen: trial {rec['best']['number']} " in report
        import optuna

        study = optuna.load_study(
            study_name=method, storage=f"sqlite:///{tmp_path / 'tune' / f'{method}.db'}"
        )
        assert [t.user_attrs["cpu_s"] for t in study.trials] == [t["cpu_s"] for t in rec["trials"]]

    # a rerun of the same command runs nothing and chooses the same
    again, calls = _run(tmp_path, monkeypatch)
    assert calls == []
    assert {m: r["best"]["number"] for m, r in again.items()} == {
        m: r["best"]["number"] for m, r in records.items()
    }

    # a machine without the study (outputs/ lost) restores the finished trials from the published record
    (tmp_path / "tune" / "dpo.db").unlink()
    again, calls = _run(tmp_path, monkeypatch)
    assert calls == [] and [t["value"] for t in again["dpo"]["trials"]] == [
        t["value"] for t in records["dpo"]["trials"]
    ]

    # a killed run leaves a trial RUNNING: the next run marks it failed and runs its configuration again
    import optuna

    study = optuna.load_study(study_name="dpo", storage=f"sqlite:///{tmp_path / 'tune' / 'dpo.db'}")
    stale = study.ask(load_space("dpo")[0])
    again, calls = _run(tmp_path, monkeypatch, n_trials=3, methods="dpo")
    assert calls.count(("dpo", 1000, "val")) == 1
    dpo = again["dpo"]["trials"]
    assert dpo[stale.number]["state"] == "FAIL" and dpo[-1]["state"] == "COMPLETE"
    assert dpo[-1]["params"] == stale.params


def test_the_best_trial_is_the_highest_validation_objective_earliest_on_ties():
    from alignlab.tune import best_trial

    rows = [{"number": 0, "state": "COMPLETE", "value": 0.1}, {"number": 1, "state": "COMPLETE", "value": 0.5},
            {"number": 2, "state": "COMPLETE", "value": 0.5}, {"number": 3, "state": "FAIL", "value": None},
            {"number": 4, "state": "COMPLETE", "value": -0.2}]  # fmt: skip
    assert best_trial(rows)["number"] == 1
    assert best_trial(rows[3:])["number"] == 4  # a failed trial is never chosen


def test_budget_values_keep_the_profiles_data():
    base = compose(["experiment=ppo_tiny", "paths.output_dir=/tmp/unused", "trainer.max_steps=10",
                    "algo.ppo_epochs=1", "algo.num_minibatches=2"])  # fmt: skip  # 5 rollout batches
    ppo = {"updates_per_batch": ["algo.ppo_epochs", "algo.num_minibatches"]}
    assert budget_values(base, {"algo.ppo_epochs": 4, "algo.num_minibatches": 2}, ppo) == {
        "trainer.max_steps": 40
    }
    assert budget_values(base, {"algo.ppo_epochs": 1, "algo.num_minibatches": 1}, ppo) == {
        "trainer.max_steps": 5
    }
    assert budget_values(base, {"algo.ppo_epochs": 1, "algo.num_minibatches": 2}, ppo) == {}
    assert budget_values(base, {"passes": 2}, {"passes": [1, 2]}) == {"trainer.max_steps": 20}
    keep = {"keep_product": ["data.batch_size", "algo.max_new_tokens"]}  # batch 16 x 8 tokens kept
    assert budget_values(base, {"algo.max_new_tokens": 32}, keep) == {"data.batch_size": 4}
    # GRPO's space: num_iterations updates per rollout batch, prompts per batch x k kept
    grpo = compose(["experiment=grpo_smollm2", "paths.output_dir=/tmp/unused", "trainer.max_steps=8",
                    "algo.num_iterations=2", "data.batch_size=4", "algo.k=4"])  # fmt: skip  # 4 batches of 16
    search = load_space("rlhf_grpo")[1]
    assert budget_values(grpo, {"algo.num_iterations": 4, "algo.k": 8}, search) == {
        "trainer.max_steps": 16,
        "data.batch_size": 2,
    }
    assert budget_values(grpo, {"algo.num_iterations": 1, "algo.k": 2}, search) == {
        "trainer.max_steps": 4,
        "data.batch_size": 8,
    }


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "hparams_search").glob("*.yaml")))
def test_every_search_space_parses(name):
    if name.endswith("_optuna"):  # the single-method Hydra sweeps of before (no alignlab.tune space)
        return
    dists, search = load_space(name)
    assert dists and set(search) <= {"passes", "updates_per_batch", "keep_product"}


def test_bad_tune_settings_fail_before_any_trial(tmp_path):
    from alignlab.tune import check
    from alignlab.utils.config import ConfigError

    base = [*_overrides(tmp_path), f"paths.output_dir={tmp_path}"]
    with pytest.raises(ConfigError, match="final seeds must be fresh"):
        check(compose([*base, "tune.final_seeds=[0,1000]"], "pipeline"))
    with pytest.raises(ConfigError, match="no search space for method 'rlaif_rloo'"):
        check(compose([*base, "tune.methods=[dpo,rlaif_rloo]"], "pipeline"))
    with pytest.raises(ConfigError, match="no `tune` settings"):
        check(compose(["profile=tiny", f"paths.output_dir={tmp_path}"], "pipeline"))

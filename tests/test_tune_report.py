"""The tuning report (``alignlab.tune_report``) on hand-built searches: an Optuna study in a temporary sqlite
file and an ``alignlab.tune`` record with known trials, so the best trial, the best-so-far curve and the
cost sums are known in advance."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.distributions import (
    CategoricalDistribution,
    LogUniformDistribution,
    UniformDistribution,
    distribution_to_json,
)

from alignlab.tune_report import best_so_far, collect, describe, main, search_cost, write_report

SPACE = {
    "algo.optimizer.lr": LogUniformDistribution(1e-4, 3e-3),
    "algo.cliprange": UniformDistribution(0.1, 0.3),
    "algo.ppo_epochs": CategoricalDistribution([1, 2, 4]),
}
# (state, objective, cpu_s, judge_calls): trial 2 failed (no cost recorded), 3 and 4 tie at the best
TRIALS = [("COMPLETE", 0.1, 10.0, 2), ("COMPLETE", 0.05, 20.0, 0), ("FAIL", None, None, None),
          ("COMPLETE", 0.3, 5.0, 1), ("COMPLETE", 0.3, 1.0, 0)]  # fmt: skip


def _params(i: int) -> dict:
    return {"algo.optimizer.lr": 1e-4 * (i + 1), "algo.cliprange": 0.1 + 0.05 * (i % 3), "algo.ppo_epochs": 2}


def _study(path, method: str = "rlhf") -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=method, storage=f"sqlite:///{path}", direction="maximize")
    for i, (state, value, cpu, calls) in enumerate(TRIALS):
        attrs = {} if cpu is None else {"cpu_s": cpu, "judge_calls": calls}
        study.add_trial(optuna.trial.create_trial(params=_params(i), distributions=SPACE, value=value,
                                                  state=optuna.trial.TrialState[state], user_attrs=attrs))  # fmt: skip


def _record(method: str = "dpo") -> dict:
    trials = [{"number": i, "state": s, "value": v, "params": _params(i), "cpu_s": c, "judge_calls": j}
              for i, (s, v, c, j) in enumerate(TRIALS)]  # fmt: skip
    best = {**trials[3], "variant": {"algo.optimizer.lr": 4e-4, "trainer.max_steps": 8}}
    return {"method": method, "n_trials": 4, "space": {k: str(v) for k, v in SPACE.items()},
            "space_json": {k: json.loads(distribution_to_json(v)) for k, v in SPACE.items()},
            "trials": trials, "best": best,
            "final": [{"seed": 0, "gold_reward": 0.5, "cpu_s": 100.0, "judge_calls": 7},
                      {"seed": 1, "gold_reward": 0.25, "cpu_s": 50.0, "judge_calls": 3}]}  # fmt: skip


def test_best_so_far_and_cost_sums_of_known_trials(tmp_path):
    _study(tmp_path / "rlhf.db")
    (search,) = collect([tmp_path]).values()
    assert best_so_far(search["trials"]) == [0.1, 0.1, 0.1, 0.3, 0.3]  # a failed trial keeps the best
    assert search["best"]["number"] == 3  # the tie goes to the earlier trial
    assert search_cost(search["trials"]) == {"cpu_s": 36.0, "judge_calls": 3, "unrecorded": 1}
    assert best_so_far([{"number": 0, "state": "FAIL", "value": None}]) == [None]


def test_the_space_is_shown_with_its_scale_and_choices():
    assert describe(SPACE["algo.optimizer.lr"]) == "log [0.0001, 0.003]"
    assert describe(SPACE["algo.cliprange"]) == "[0.1, 0.3]"
    assert describe(SPACE["algo.ppo_epochs"]) == "{1, 2, 4}"


def test_report_from_a_study_and_a_record(tmp_path):
    studies, records, out = tmp_path / "tune", tmp_path / "search", tmp_path / "out"
    studies.mkdir()
    records.mkdir()
    _study(studies / "rlhf.db")
    _study(studies / "dpo.db", "dpo")  # the record of dpo wins over its study: it holds the final runs
    (records / "dpo.json").write_text(json.dumps(_record()))
    md = write_report([records, studies], out).read_text()
    for method in ("rlhf", "dpo"):
        png = (out / f"tuning-{method}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and f"](tuning-{method}.png)" in md
    assert f"Source: `{records / 'dpo.json'}`" in md and f"Source: `{studies / 'rlhf.db'}`" in md
    # the trials' table: objective and best so far per trial, the failed one without a cost
    assert "| 1 | COMPLETE | +0.0500 | +0.1000 | 20 | 0 |" in md
    assert "| 2 | FAIL | — | +0.1000 | — | — |" in md
    assert "| `algo.optimizer.lr` | log [0.0001, 0.003] |" in md
    # the chosen configuration: the record's variant (what the final runs trained), the study's params
    assert (
        "Chosen: trial 3 (validation objective +0.3000): `algo.optimizer.lr=0.0004`, `trainer.max_steps=8`."
        in md
    )
    assert "Chosen: trial 3 (validation objective +0.3000): `algo.cliprange=0.1`" in md
    assert "Final runs (test prompts): seed 0 gold +0.500, seed 1 gold +0.250." in md
    # cost: the search's sums, the final runs' (the record only) and the total
    assert "| dpo | 4/4 | 36 | 3 | 150 | 10 | 186 |" in md
    assert "| rlhf | 4 | 36 | 3 | — | — | 36 |" in md
    assert md.count("Search cost: 36 CPU-s, 3 judge calls (1 trial(s) without a recorded cost).") == 2


def test_cli_refuses_an_empty_or_missing_directory(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no tuning records" in err


@pytest.mark.parametrize("out", [None, "report"])
def test_cli_writes_the_report(tmp_path, out, capsys):
    _study(tmp_path / "rlhf.db")
    assert main([str(tmp_path), *(["--out", str(tmp_path / out)] if out else [])]) == 0
    assert (tmp_path / (out or ".") / "tuning.md").exists()

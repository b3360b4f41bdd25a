"""Tasks without a gold reward (docs/tasks.md, "A task without a gold reward"): the judge's win rate against
the base policy is the headline (both orders, a tie counts 0.5, a t CI over prompts whose coverage is
simulated here), the record and the report name the evaluator, the pipeline warns when the evaluator judge
trained the policy, and what needs gold is refused in one line. The doc's task and commands run as written."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from alignlab.win_rate import paired_win_rate
from conftest import REPO, app_env, compose

DOC = REPO / "docs" / "tasks.md"
BIN = Path(sys.executable).parent


def block(lang: str, index: int) -> str:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)[index]


def advice_task(root: Path) -> Path:
    """The doc's task without a gold reward, written under ``root/mytasks`` (outside the package)."""
    home = root / "mytasks"
    (home / "task").mkdir(parents=True)
    (home / "advice.py").write_text(block("python", 1), encoding="utf-8")
    (home / "task" / "advice.yaml").write_text(block("yaml", 1), encoding="utf-8")
    return home


def run(cmd: list[str] | str, cwd: Path, home: Path, shell: bool = False) -> subprocess.CompletedProcess:
    env = app_env(cwd, PYTHONPATH=str(home), PATH=f"{BIN}:/usr/bin:/bin")
    return subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, shell=shell,
        executable="/bin/bash" if shell else None,
    )  # fmt: skip


# -- the win rate and its interval ----------------------------------------------------------------------
class _SimJudge:
    """Verdicts with known probabilities, whatever the order shown: for prompt p the completion starting
    with "pol" wins with probability ``win[p]``, the pair ties with probability ``tie``."""

    def __init__(self, win: dict[str, float], tie: float, rng: np.random.Generator):
        self.win, self.tie, self.rng = win, tie, rng

    def judge_pairs(self, prompts, firsts, seconds):
        out = []
        for p, a, _b in zip(prompts, firsts, seconds):
            u = self.rng.random()
            if self.win[p] <= u < self.win[p] + self.tie:
                out.append({"verdict": "tie", "p_first": 0.5})
                continue
            policy_won, policy_first = u < self.win[p], a.startswith("pol")
            out.append({"verdict": "first" if policy_won == policy_first else "second", "p_first": None})
        return out


@pytest.mark.parametrize("k", [1, 4])
def test_the_win_rate_interval_covers_a_known_win_probability(k):
    """Prompts differ (each its own win probability, drawn from a known Beta), so the prompt is the unit:
    with k samples per prompt an interval over samples would be too narrow; over prompts it holds 95%."""
    rng = np.random.default_rng(0)
    tie, n, sims, misses = 0.2, 30, 400, 0
    truth = (1 - tie) * 0.5 / (0.5 + 0.5) + tie / 2  # E[win] + tie / 2, win = (1 - tie) * Beta(0.5, 0.5)
    for _ in range(sims):
        prompts = [f"q{i}" for i in range(n)]
        win = {p: (1 - tie) * rng.beta(0.5, 0.5) for p in prompts}
        rep = [p for p in prompts for _ in range(k)]
        policy = [f"pol{i}" for i in range(n * k)]
        reference = [f"ref{i}" for i in range(n * k)]
        out = paired_win_rate(_SimJudge(win, tie, rng), rep, policy, reference, k)
        misses += not (out["win_rate_ci_low"] <= truth <= out["win_rate_ci_high"])
        assert out["win_rate_pairs"] == 2 * n * k and len(out["win_rate_per_prompt"]) == n
    assert 0.02 <= misses / sims <= 0.08, misses / sims


class _FirstJudge:
    """Always prefers the completion shown first (pure position bias), ties ``tie_on``, cannot answer
    ``invalid_on``; records what it was asked."""

    def __init__(self, tie_on=(), invalid_on=()):
        self.tie_on, self.invalid_on, self.asked = set(tie_on), set(invalid_on), []

    def judge_pairs(self, prompts, firsts, seconds):
        self.asked += list(zip(firsts, seconds))
        verdict = {**dict.fromkeys(self.tie_on, "tie"), **dict.fromkeys(self.invalid_on, "invalid")}
        return [{"verdict": verdict.get(p, "first")} for p in prompts]


def test_the_win_rate_asks_both_orders_counts_a_tie_as_half_and_leaves_out_invalid_answers():
    prompts, policy, reference = ["a", "b", "c", "d"], ["x", "y", "z", "same"], ["u", "v", "w", "same"]
    judge = _FirstJudge(tie_on=["b"], invalid_on=["c"])
    out = paired_win_rate(judge, prompts, policy, reference)
    # a: first in both orders -> 1 and 0 -> 0.5; b: ties -> 0.5; c: no valid answer -> left out;
    # d: identical completions tie unasked -> 0.5
    assert out["win_rate_per_prompt"] == [0.5, 0.5, None, 0.5] and out["win_rate"] == 0.5
    assert ("x", "u") in judge.asked and ("u", "x") in judge.asked and ("same", "same") not in judge.asked
    assert out["win_rate_pairs"] == 6 and out["win_rate_invalid"] == 2 and out["win_rate_ties"] == 4
    assert out["win_rate_prompts_undecided"] == 1 and "tie counts 0.5" in out["win_rate_method"]

    class PolicyJudge:  # prefers "x" shown first; shown second, a tie: (1 + 0.5) / 2
        def judge_pairs(self, prompts, firsts, seconds):
            return [{"verdict": "first" if a == "x" else "tie"} for a in firsts]

    assert paired_win_rate(PolicyJudge(), ["a"], ["x"], ["u"])["win_rate"] == 0.75


# -- the task, the warning, the refusals --------------------------------------------------------------
def test_a_task_without_gold_builds_without_gold_scores_and_says_so(tmp_path, monkeypatch):
    home = advice_task(tmp_path)
    monkeypatch.syspath_prepend(str(home))
    from alignlab.evaluator import evaluator_of, has_gold
    from alignlab.tasks import build_task
    from alignlab.tasks.base import check_task
    from alignlab.utils.config import ConfigError

    task = build_task({"_target_": "advice.AdviceTask"})
    assert not has_gold(task) and len(task.prompts("test")) == 4

    class Judge:
        def identity(self):
            return "local:abc"

    assert evaluator_of(task) is None and evaluator_of(task, Judge()) == "judge local:abc"
    assert (
        evaluator_of(build_task(compose([f"paths.output_dir={tmp_path}"], "pipeline").task)) == "gold scorer"
    )

    class Forgot(type(task)):  # says it has gold but has no gold_scores: refused, naming the method
        has_gold = True

    with pytest.raises(ConfigError, match="does not implement gold_scores"):
        check_task(Forgot())


def _stage_configs(tmp_path, *overrides: str) -> tuple[dict, dict, object]:
    from alignlab.pipeline import PLACEHOLDER, stage_config, stage_list
    from alignlab.tasks import build_task

    cfg = compose(
        ["profile=tiny", f"paths.output_dir={tmp_path}", "wandb.enabled=false", *overrides], "pipeline"
    )
    stages = stage_list(cfg)
    holder = {n: Path(PLACEHOLDER) / n for n, _ in stages}
    return (
        {n: stage_config(cfg, s, holder) for n, s in stages},
        {n: s["app"] for n, s in stages},
        build_task(cfg.task),
    )


@pytest.mark.parametrize(
    "overrides, warned",
    [
        (["method=rlaif_dpo", "++task.labeller=tiny", "eval_judge=tiny"], "stage 'labels'"),  # labelled by it
        (
            ["method=direct_rlaif_rloo", "++task.labeller=tiny", "eval_judge=tiny"],
            "algo.reward.judge",
        ),  # its reward
        (["method=rlaif_dpo", "++task.labeller=tiny", "eval_judge=reward"], None),  # another judge grades
        (["method=dpo"], None),  # the simulated annotators grade what they labelled: the oracle, no warning
    ],
)
def test_the_evaluator_judge_that_trained_the_policy_is_warned_once(tmp_path, caplog, overrides, warned):
    from alignlab.evaluator import check_evaluator

    configs, apps, task = _stage_configs(tmp_path, *overrides)
    with caplog.at_level(logging.WARNING, logger="alignlab.evaluator"):
        text = check_evaluator(configs, apps, task)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    if warned is None:
        assert text is None and not warnings
    else:
        assert warned in text and "trained to please the judge that grades it" in text
        assert len(warnings) == 1 and warnings[0].getMessage() == text


def test_gold_needs_are_refused_and_gold_monitors_dropped_for_a_task_without_gold(tmp_path, monkeypatch):
    home = advice_task(tmp_path)
    monkeypatch.syspath_prepend(str(home))
    from alignlab.evaluator import refuse_gold
    from alignlab.tasks import build_task
    from alignlab.utils.config import ConfigError

    task = build_task({"_target_": "advice.AdviceTask"})
    train = ["experiment=rloo_smollm2", f"paths.output_dir={tmp_path}"]
    cfg = compose([*train, "reward@algo.reward=gold"], "train")
    with pytest.raises(ConfigError, match=r"task 'advice' has no gold reward .*reward=gold.*reward_model"):
        refuse_gold(cfg.algo, task)
    cfg = compose(train, "train")
    assert "gold" in cfg.algo.val_rewards
    refuse_gold(cfg.algo, task)  # the gold logged on validation is dropped, the reward model kept
    assert "gold" not in cfg.algo.val_rewards and "reward_model" in str(cfg.algo.reward._target_).lower()
    gold_task = build_task(compose([f"paths.output_dir={tmp_path}"], "pipeline").task)
    cfg = compose(train, "train")
    refuse_gold(cfg.algo, gold_task)  # a task with gold: untouched
    assert "gold" in cfg.algo.val_rewards


@pytest.mark.parametrize(
    "args, fix",
    [
        (
            ["-m", "alignlab.pipeline", "method=dpo", "profile=tiny", "wandb.enabled=false"],
            "method.labeller=",
        ),
        (["-m", "alignlab.label", "judge=gold", "model=tiny", "n_prompts=2"], "judge=<conf/judge option>"),
    ],
    ids=["pipeline_dpo", "label_app_judge_gold"],
)
def test_what_needs_gold_fails_at_start_up_in_one_line(tmp_path, args, fix):
    home = advice_task(tmp_path)
    proc = run([sys.executable, *args, f"hydra.searchpath=[file://{home}]", "task=advice"], tmp_path, home)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert "task 'advice' has no gold reward" in lines[0] and fix in lines[0] and "docs/tasks.md" in lines[0]
    assert not list(tmp_path.rglob("samples.jsonl")) and not list(tmp_path.rglob("pairs.jsonl"))


# -- end to end --------------------------------------------------------------------------------------------
def test_the_pipeline_runs_dpo_and_rl_on_a_task_without_gold_and_the_report_is_the_judges(tmp_path):
    home = advice_task(tmp_path)
    proc = run("set -euo pipefail\n" + block("bash", 1), tmp_path, home, shell=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    results = [json.loads(p.read_text()) for p in (tmp_path / "outputs").rglob("result.json")]
    assert sorted(r["method"] for r in results) == ["rlaif_dpo", "rlaif_rloo"]
    for r in results:
        ev = r["eval"]
        assert r["task"] == "advice" and ev["gold_reward"] is None and r["base_eval"]["gold_reward"] is None
        assert ev["evaluator"].startswith("judge local:"), ev.get("evaluator")  # the tiny LM judge
        assert ev["win_rate_ci_low"] <= ev["win_rate"] <= ev["win_rate_ci_high"]
        assert len(ev["win_rate_per_prompt"]) == ev["n"] == 4
        assert "trained to please the judge" in r["evaluator_warning"]  # the labeller grades
    logged = (proc.stdout + proc.stderr).splitlines()
    warned = [x for x in logged if "WARNING" in x and "trained to please" in x]
    assert len(warned) == 2, proc.stdout[-3000:]  # once per pipeline job
    report = (tmp_path / "outputs" / "report" / "report.md").read_text()
    evaluator = results[0]["eval"]["evaluator"]
    assert f"Evaluator of the headline numbers: `{evaluator}`" in report
    assert "**Warning (rlaif_dpo, rlaif_rloo):**" in report and "a tie 0.5" in report
    assert "| judge win rate vs base [95% CI] |" in report
    assert "gold reward" not in report.split("## Verdict")[1] and "Paired gain" not in report


# -- the report -------------------------------------------------------------------------------------------
def _record(method: str, seed: int, rates: list[float], warning: str | None = None) -> dict:
    ev = {"task": "advice", "split": "test", "n": len(rates), "samples_per_prompt": 1, "seed": 0,
          "sampling": {"max_new_tokens": 8}, "gold_reward": None, "kl": 0.1, "per_prompt": {"kl": [0.1] * len(rates)},
          "evaluator": "judge local:abc (model tiny)", "win_rate_per_prompt": rates}  # fmt: skip
    mean, half = float(np.mean(rates)), 0.05
    ev.update({"win_rate": mean, "win_rate_ci_low": mean - half, "win_rate_ci_high": mean + half})
    base = {**ev, "evaluator": None, "win_rate": None, "kl": 0.0}
    return {"method": method, "seed": seed, "task": "advice", "eval": ev, "base_eval": base,
            "evaluator_warning": warning, "labels_used": 8, "judge_calls": 16}  # fmt: skip


def test_the_report_of_a_task_without_gold_is_the_judges_win_rate(tmp_path):
    from alignlab.compare import write_report
    from alignlab.compare_judge import evaluator_lines

    warning = "the evaluator judge (local:abc) is the judge that trained this policy"
    runs = [_record("good", s, [0.9, 0.8, 0.85, 0.95 - 0.05 * s]) for s in (0, 1)]
    runs += [_record("same", s, [0.5, 0.4, 0.6, 0.5 + 0.01 * s], warning) for s in (0, 1)]
    for r in runs:
        path = tmp_path / "runs" / f"{r['method']}-{r['seed']}" / "result.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(r))
    report, text = write_report([tmp_path / "runs"], tmp_path / "report")
    md = report.read_text()
    assert "Evaluator of the headline numbers: `judge local:abc (model tiny)`." in md
    assert f"**Warning (same):** {warning}." in md and "a tie 0.5" in md
    assert "The judge prefers good to the base policy." in text  # two seeds, t over their win rates
    assert "The judge cannot tell same from the base policy (graded by the judge that trained it)." in text
    assert (
        "| good | 2 | 0.869 [0.789, 0.948] **↑** |" in md and "gold" not in md.split("## Verdict")[1].lower()
    )
    assert (tmp_path / "report" / "frontier.png").stat().st_size > 0
    gold = [{**runs[0], "eval": {**runs[0]["eval"], "gold_reward": 0.3, "evaluator": "gold scorer"}}]
    assert evaluator_lines(gold)[0] == "Evaluator of the headline numbers: `gold scorer`."

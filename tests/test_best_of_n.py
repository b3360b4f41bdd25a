"""Best-of-n: the analytic KL and the selection against hand-computed values, the candidate layout, the
metrics' shape against alignlab.evaluate's, and method=best_of_n through the tiny pipeline."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import compose


def test_analytic_kl_is_log_n_minus_n_minus_one_over_n():
    from alignlab.losses.best_of_n import best_of_n_kl

    # hand-computed: ln 2 - 1/2, ln 4 - 3/4, ln 16 - 15/16
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(0.6931471806 - 0.5, abs=1e-9)
    assert best_of_n_kl(4) == pytest.approx(1.3862943611 - 0.75, abs=1e-9)
    assert best_of_n_kl(16) == pytest.approx(2.7725887222 - 0.9375, abs=1e-9)
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="n >= 1"):
            best_of_n_kl(bad)


def test_selection_keeps_the_best_of_the_first_n_and_the_earliest_on_ties():
    from alignlab.losses.best_of_n import select_best_of_n

    scores = np.array(
        [[0.1, 0.5, 0.3, 0.9], [2.0, 2.0, 1.0, 3.0], [-1.0, -2.0, -3.0, -4.0], [0.0, 0.0, 0.0, 0.0]]
    )
    assert select_best_of_n(scores, 1).tolist() == [0, 0, 0, 0]  # n = 1: the base policy's own sample
    assert select_best_of_n(scores, 2).tolist() == [1, 0, 0, 0]  # a tie keeps the earlier candidate
    assert select_best_of_n(scores, 3).tolist() == [1, 0, 0, 0]
    assert select_best_of_n(scores, 4).tolist() == [3, 3, 0, 0]
    with pytest.raises(ValueError, match="between 1 and the 4"):
        select_best_of_n(scores, 5)
    with pytest.raises(ValueError, match="NaN"):
        select_best_of_n(np.array([[0.0, float("nan")]]), 2)


def test_take_reads_candidate_j_of_prompt_i_at_i_times_n_plus_j():
    from alignlab.best_of_n import take
    from alignlab.evaluate import EvalSamples

    # 2 prompts x 3 candidates, prompt-major; gold = 10 i + j names each candidate
    prompts = ["a", "a", "a", "b", "b", "b"]
    gold = np.array([0.0, 1.0, 2.0, 10.0, 11.0, 12.0])
    c = EvalSamples(prompts, [f"c{g:.0f}" for g in gold], gold, -gold, None, np.arange(6), np.zeros(6, bool))
    s = take(c, np.array([2, 1]), 3)
    assert s.prompts == ["a", "b"] and s.completions == ["c2", "c11"]
    assert (
        s.gold.tolist() == [2.0, 11.0] and s.second.tolist() == [-2.0, -11.0] and s.lengths.tolist() == [2, 4]
    )


@pytest.mark.parametrize(
    "n, per_prompt, match",
    [
        ([], 1, "non-empty"),
        ([0, 2], 1, ">= 1"),
        (["x"], 1, "integers"),
        ([1.5], 1, "integers"),
        ([2], 2, "samples_per_prompt"),
    ],
)
def test_a_bad_n_list_is_one_config_error(n, per_prompt, match):
    from alignlab.best_of_n import check_n
    from alignlab.utils.config import ConfigError

    with pytest.raises(ConfigError, match=match):
        check_n(n, per_prompt)
    assert check_n([4, 1, 2, 2]) == [1, 2, 4]


def test_point_metrics_have_the_shape_evaluate_writes(tiny_lm):
    """compare reads a best-of-n point as it reads an evaluation: every key evaluate_policy reports."""
    from alignlab.best_of_n import point_metrics
    from alignlab.evaluate import evaluate_policy
    from alignlab.models.generation import SamplingConfig
    from alignlab.tasks import build_task

    task = build_task(compose(["task=sentiment_toy"], "evaluate").task)
    prompts = task.prompts("test")[:3]
    m, s = evaluate_policy(tiny_lm.model, tiny_lm.tokenizer, task, prompts, SamplingConfig(max_new_tokens=4),
                           reference=None, n_bootstrap=50, return_samples=True)  # fmt: skip
    mine = point_metrics(s, kl=0.25, seconds=1.0, n_bootstrap=50, seed=0, policy=m)
    assert set(mine) == set(m) | {"kl_ci_low", "kl_ci_high", "kl_std"}
    assert set(mine["per_prompt"]) == {"gold_reward", "second_reward", "kl"}
    assert mine["per_prompt"]["gold_reward"] == m["per_prompt"]["gold_reward"]
    assert mine["kl"] == 0.25 and mine["per_prompt"]["kl"] == [0.25] * 3 and mine["completions_per_s"] == 3.0
    assert mine["completions"] == list(s.completions) and mine["prompts_sha"] == m["prompts_sha"]


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_method_best_of_n_runs_in_the_tiny_pipeline_and_never_picks_below_the_base(tmp_path):
    """method=best_of_n end to end: n = 1 is the base policy's evaluation sample for sample; the kept
    completion scores at least the base's on every prompt (the reward model that ranks them); a record
    per n and ranker at the analytic KL, which alignlab.compare reads."""
    from alignlab.compare import find_results
    from alignlab.pipeline import run_pipeline

    cfg = compose(["method=best_of_n", "profile=tiny", "method.n=[1,2,4]", f"artifacts_dir={tmp_path / 'art'}",
                   "wandb.enabled=false", f"paths.output_dir={tmp_path / 'run'}"], "pipeline")  # fmt: skip
    record = run_pipeline(cfg)
    dirs = {s["name"]: tmp_path / s["dir"] for s in record["stages"]}
    base = _rows(dirs["eval_base"] / "samples.jsonl")
    cand = _rows(dirs["eval"] / "candidates.jsonl")
    assert len(cand) == 4 * len(base) and {c["candidate"] for c in cand} == {0, 1, 2, 3}
    first = [(c["prompt"], c["completion"]) for c in cand if c["candidate"] == 0]
    assert first == [(b["prompt"], b["completion"]) for b in base]  # n = 1 is the base's own sample
    kept = _rows(dirs["eval"] / "samples.jsonl")  # n = 4 by the reward model
    score = {(c["prompt"], c["completion"]): c["score_scorer"] for c in cand}
    for b, k in zip(base, kept):
        best = max(c["score_scorer"] for c in cand if c["prompt"] == b["prompt"])
        assert score[(k["prompt"], k["completion"])] == best >= score[(b["prompt"], b["completion"])]
    assert len({c["score_scorer"] for c in cand}) > len(base)  # the scores discriminate: a real test
    results = find_results([tmp_path / "run"])
    got = sorted((r["method"], r["variant"].get("n", 4), round(r["eval"]["kl"], 6)) for r in results)
    kl2, kl4 = round(math.log(2) - 0.5, 6), round(math.log(4) - 0.75, 6)
    assert got == [("best_of_n", 1, 0.0), ("best_of_n", 2, kl2), ("best_of_n", 4, kl4),
                   ("best_of_n_oracle", 1, 0.0), ("best_of_n_oracle", 2, kl2), ("best_of_n_oracle", 4, kl4)]  # fmt: skip
    assert (
        sum(not r["variant"] for r in results) == 2
    )  # the largest n: each ranker's own row, the rest a sweep
    n1 = next(r for r in results if r["method"] == "best_of_n" and r["variant"].get("n") == 1)
    assert n1["eval"]["per_prompt"]["gold_reward"] == record["base_eval"]["per_prompt"]["gold_reward"]
    assert [e["completion"] for e in n1["examples"]["policy"]] == [b["completion"] for b in base]


def test_a_sweep_point_on_a_method_without_a_policy_stage_is_a_config_error(tmp_path):
    """best_of_n trains nothing: variant.* has no stage to go to, and says so instead of being dropped."""
    from alignlab.pipeline import stage_list
    from alignlab.utils.config import ConfigError

    args = ["method=best_of_n", f"paths.output_dir={tmp_path}"]
    assert [n for n, _ in stage_list(compose(args, "pipeline"))][-2:] == ["eval_base", "eval"]
    with pytest.raises(ConfigError, match=r"no `policy` stage .* for the sweep point"):
        stage_list(compose([*args, "variant.algo.beta=0.3"], "pipeline"))

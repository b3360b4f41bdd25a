"""Labelling report metrics on hand-made examples, and the direct-RLAIF rewards."""

from __future__ import annotations

import json
import math

import pytest

from alignlab.judges.report import cohen_kappa, format_report, labelling_report, report_path, write_report
from alignlab.rewards.judge import JudgePairwiseReward, JudgeScoreReward, expected_score


def r(verdict, fwd, bwd):
    return {"verdict": verdict, "p_forward": fwd, "p_backward": bwd}


def test_cohen_kappa_closed_form():
    # 10 items: 4 a/a, 1 a/b, 2 b/a, 3 b/b. p_o = 0.7; p_e = 0.5*0.6 + 0.5*0.4 = 0.5; κ = 0.4
    a = ["a"] * 5 + ["b"] * 5
    b = ["a"] * 4 + ["b"] + ["a"] * 2 + ["b"] * 3
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(["x", "y"], ["x", "y"]) == pytest.approx(1.0)
    assert cohen_kappa(["x", "x"], ["x", "x"]) is None and cohen_kappa([], []) is None


def test_report_on_hand_made_pairs(tmp_path):
    results = [
        r("first", 0.9, 0.8),  # both orders agree: no flip
        r("tie", 0.9, 0.1),  # always picks A: flip
        r("second", 0.2, 0.3),  # no flip
        r("invalid", None, 0.4),  # unparseable: never a verdict, not in the bias count
        r("first", 0.6, 0.7),
    ]
    gold_first = [1.0, 0.0, 0.0, 1.0, -1.0]
    gold_second = [0.0, 1.0, 1.0, 0.0, 0.0]
    rep = labelling_report(results, gold_first, gold_second, stats={"calls": 3, "cache_hits": 7})
    assert (rep["pairs"], rep["invalid"], rep["ties"], rep["decided"]) == (5, 1, 1, 3)
    assert rep["position_bias_rate"] == pytest.approx(1 / 4) and rep["position_bias_pairs"] == 4
    # single-order answers that picked position A: fwd>0.5 (3 of 4) + bwd<0.5 (3 of 5) = 6 of 9
    assert rep["first_position_rate"] == pytest.approx(6 / 9)
    # decided + gold decided: pairs 0 (right), 2 (right), 4 (wrong)
    assert rep["gold_compared"] == 3 and rep["gold_accuracy"] == pytest.approx(2 / 3)
    assert rep["gold_kappa"] == pytest.approx(
        cohen_kappa(["first", "second", "first"], ["first", "second", "second"])
    )
    # single (forward) order: 0 right, 1 wrong (0.9 vs gold second), 2 right, 4 wrong -> 2/4
    assert rep["gold_accuracy_single_order"] == pytest.approx(0.5)
    assert rep["calls"] == 3 and rep["cache_hits"] == 7
    path = write_report(rep, tmp_path / "pairs.jsonl")
    assert path == report_path(tmp_path / "pairs.jsonl") == tmp_path / "pairs.report.json"
    assert json.loads(path.read_text())["gold_accuracy"] == pytest.approx(2 / 3)
    text = format_report(rep)
    assert "invalid=1" in text and "accuracy=0.667" in text and "flip rate=0.250" in text


def test_pointwise_report_has_no_position_bias():
    rep = labelling_report([r("first", 0.7, 0.2)], mode="pointwise")
    assert rep["position_bias_rate"] is None and "gold_accuracy" not in rep
    assert "n/a" in format_report(rep)


def test_expected_score_closed_form():
    logps = [-math.inf] * 10
    logps[6], logps[7] = math.log(0.25), math.log(0.75)  # P(7) = 0.25, P(8) = 0.75
    score, probs = expected_score(logps)
    assert score == pytest.approx(7 * 0.25 + 8 * 0.75) and sum(probs) == pytest.approx(1)
    with pytest.raises(ValueError):
        expected_score([0.0] * 9)


def test_judge_score_reward_on_tiny(tmp_path):
    # the byte tokenizer writes "10" as "1","0": the second pass is used
    reward = JudgeScoreReward({"source": "tiny", "dtype": "float32"}, cache_path=str(tmp_path / "c.sqlite"))
    scores = reward(["p", "q", "p"], ["nice", "bad", "nice"])
    assert scores.shape == (3,) and ((scores >= 1) & (scores <= 10)).all()
    assert scores[0] == pytest.approx(scores[2].item())
    calls = reward.judge.stats.calls
    assert calls == 2  # one batch: first-token pass + the "10" pass; the duplicate computed once
    again = JudgeScoreReward({"source": "tiny", "dtype": "float32"}, cache_path=str(tmp_path / "c.sqlite"))
    assert (again(["p", "q"], ["nice", "bad"]) == scores[:2]).all() and again.judge.stats.calls == 0


class FakeJudge:
    def __init__(self, p):
        self.p = p
        self.seen = []

    def judge_pairs(self, prompts, firsts, seconds):
        self.seen += list(zip(prompts, firsts, seconds))
        return [{"p_first": p} for p in self.p]


def test_pairwise_reward_against_references(tmp_path):
    refs = tmp_path / "refs.jsonl"
    refs.write_text('{"prompt": "p1", "completion": "ref one"}\n{"prompt": "p2", "chosen": "ref two"}\n')
    judge = FakeJudge([0.8, None])
    reward = JudgePairwiseReward(judge, references=str(refs), centered=True)
    out = reward(["p1", "p2"], ["c1", "c2"])
    assert out.tolist() == pytest.approx([0.6, 0.0])  # invalid -> 0.5 -> centred 0
    assert judge.seen == [("p1", "c1", "ref one"), ("p2", "c2", "ref two")] and reward.invalid == 1
    with pytest.raises(KeyError, match="no reference"):
        reward(["p3"], ["c"])
    with pytest.raises(ValueError, match="references"):
        JudgePairwiseReward(judge)


def test_pairwise_reward_generates_references_once():
    from alignlab.judges.local import LocalJudge

    judge = LocalJudge({"source": "tiny", "dtype": "float32"}, both_orders=True)
    reward = JudgePairwiseReward(
        judge, reference_model={"source": "tiny", "dtype": "float32"}, max_new_tokens=4
    )
    out = reward(["hello", "hello"], ["abc", "xyz"])
    assert out.shape == (2,) and ((out > 0) & (out < 1)).all() and list(reward.refs) == ["hello"]


def test_audit_by_gold_gap_reliability_and_share_kept():
    def pt(p):  # a pointwise judgement with P(first ≻ second) = p
        return {
            "verdict": "first" if p > 0.5 else "second",
            "p_first": p,
            "p_forward": None,
            "p_backward": None,
        }

    # gaps 0.1, 0.2, 0.3, 0.6, 0.6, 0.6; judge right on pairs 1, 2, 3, 4 (0-based), wrong on 0 and 5
    results = [pt(0.55), pt(0.65), pt(0.95), pt(0.85), pt(0.75), pt(0.3)]
    gold_first = [0.1, 0.2, 0.3, 0.6, 0.6, 0.6]  # the second pair sits on the 0.2 boundary
    gold_second = [0.2, 0.0, 0.0, 0.0, 0.0, 0.0]
    rep = labelling_report(results, gold_first, gold_second, mode="pointwise")
    b = rep["gold_buckets"]
    assert (b["0-0.2"]["n"], b["0-0.2"]["accuracy"]) == (1, 0.0)
    assert (b["0.2-0.5"]["n"], b["0.2-0.5"]["accuracy"]) == (2, 1.0)
    assert (b[">=0.5"]["n"], b[">=0.5"]["accuracy"]) == (3, pytest.approx(2 / 3))
    assert rep["gold_compared_decidable"] == 5 and rep["gold_accuracy_decidable"] == pytest.approx(4 / 5)
    # κ: p_o = 2/3, p_e = 2/3·1 + 1/3·0 -> 0; one label on both sides: undefined
    assert b[">=0.5"]["kappa"] == pytest.approx(0.0) and b["0.2-0.5"]["kappa"] is None
    # confidences 0.55, 0.65, 0.95, 0.85, 0.75, 0.70 -> bins 0.5-0.6: [wrong], 0.6-0.7: [right],
    # 0.7-0.8: [right, wrong], 0.8-0.9: [right], 0.9-1.0: [right]
    rel = {r["bin"]: (r["n"], r["agreement"]) for r in rep["reliability"]}
    assert rel == {
        "0.5-0.6": (1, 0.0),
        "0.6-0.7": (1, 1.0),
        "0.7-0.8": (2, 0.5),
        "0.8-0.9": (1, 1.0),
        "0.9-1.0": (1, 1.0),
    }
    kept = {k["min_confidence"]: (k["kept"], k["agreement"]) for k in rep["kept_vs_agreement"]}
    assert kept[0.5] == (1.0, pytest.approx(4 / 6)) and kept[0.7] == (pytest.approx(4 / 6), 0.75)
    assert kept[0.9] == (pytest.approx(1 / 6), 1.0)
    text = format_report(rep)
    assert "|Δgold| >= 0.2: accuracy=0.800" in text and "0.7-0.8: 0.500 (2)" in text

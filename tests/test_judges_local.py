"""Local LM judge on the tiny model, the cache (rerun = zero calls, SIGKILL mid-run then resume = same
result, nothing duplicated), templates/constitutions, and every judge config composing."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from alignlab.judges.cache import JudgeCache
from alignlab.judges.local import LocalJudge, option_token_ids
from alignlab.judges.option import verdict_of
from alignlab.judges.templates import Constitution, JudgeTemplate, text_hash

TINY = {"source": "tiny", "dtype": "float32"}
PROMPTS = [f"prompt {i}" for i in range(6)]
FIRSTS = ["good fun", "a b c", "great", "meh", "lovely film", "dull"]
SECONDS = ["bad", "c b a", "awful", "fine", "boring film", "bright"]


def tiny_judge(**kw):
    return LocalJudge(TINY, **kw)


def test_both_orders_are_averaged_and_order_probs_kept():
    judge = tiny_judge(batch_size=4)
    res = judge.judge_pairs(PROMPTS, FIRSTS, SECONDS)
    for r in res:
        assert 0 < r["p_forward"] < 1 and 0 < r["p_backward"] < 1
        assert r["p_first"] == pytest.approx((r["p_forward"] + r["p_backward"]) / 2)
        assert r["verdict"] == verdict_of(r["p_first"], 0.0) and len(r["raw"]) == 2
        assert r["judge"].startswith("local:") and r["template_hash"] == judge.template_hash()
    # swapping the pair swaps the roles of the two orders: P(b ≻ a) = 1 − P(a ≻ b)
    swapped = tiny_judge().judge_pairs(PROMPTS, SECONDS, FIRSTS)
    for r, s in zip(res, swapped):
        assert s["p_first"] == pytest.approx(1 - r["p_first"], abs=1e-5)


def test_option_probs_match_a_manual_forward_pass():
    judge = tiny_judge(both_orders=False)
    r = judge.judge_pairs(PROMPTS[:1], FIRSTS[:1], SECONDS[:1])[0]
    lm = judge.lm()
    t = judge.template
    text = judge.render(t.pairwise_messages(PROMPTS[0], FIRSTS[0], SECONDS[0], t.rubric))
    ids = torch.tensor([lm.tokenizer.encode(text, add_special_tokens=False)])
    with torch.no_grad():
        lp = torch.log_softmax(lm.model(ids).logits[0, -1], -1)
    a, b = (torch.logsumexp(lp[g], 0).exp().item() for g in option_token_ids(lm.tokenizer, ("A", "B")))
    expected = a / (a + b)
    assert r["p_forward"] == pytest.approx(expected, abs=1e-5)


def test_batching_does_not_change_results():
    one = tiny_judge(batch_size=1).judge_pairs(PROMPTS, FIRSTS, SECONDS)
    many = tiny_judge(batch_size=5).judge_pairs(PROMPTS, FIRSTS, SECONDS)
    for x, y in zip(one, many):
        assert x["p_first"] == pytest.approx(y["p_first"], abs=1e-4)


def test_pointwise_is_bradley_terry_of_the_yes_log_odds():
    judge = tiny_judge(mode="pointwise", template=JudgeTemplate(question="Is it positive?"))
    for r in judge.judge_pairs(PROMPTS, FIRSTS, SECONDS):
        ya, yb = r["p_forward"], r["p_backward"]
        expected = 1 / (1 + math.exp(-(math.log(ya / (1 - ya)) - math.log(yb / (1 - yb)))))
        assert r["p_first"] == pytest.approx(expected)


def test_chain_of_thought_generates_then_scores():
    t = JudgeTemplate(chain_of_thought=True)
    judge = tiny_judge(template=t, cot_max_new_tokens=4, both_orders=False)
    r = judge.judge_pairs(PROMPTS[:2], FIRSTS[:2], SECONDS[:2])
    assert judge.stats.completion_tokens > 0 and all(0 < x["p_first"] < 1 for x in r)
    assert (
        judge.identity() != tiny_judge().identity() and judge.template_hash() != tiny_judge().template_hash()
    )


def test_tie_margin_and_bad_config():
    assert (
        verdict_of(0.52, 0.05) == "tie"
        and verdict_of(0.6, 0.05) == "first"
        and verdict_of(None, 0) == "invalid"
    )
    with pytest.raises(ValueError, match="judge.mode"):
        tiny_judge(mode="listwise")
    with pytest.raises(ValueError, match="tie_margin"):
        tiny_judge(tie_margin=0.5)
    with pytest.raises(ValueError, match="two different"):
        JudgeTemplate(options=("A", "A"))


def test_constitution_sample_is_order_independent_and_uses_every_principle():
    c = Constitution(principles=["p1", "p2", "p3"], mode="sample")
    assert c.criterion("q", "x", "y") == c.criterion("q", "y", "x")
    assert {c.criterion(f"q{i}", "x", "y") for i in range(60)} == {"p1", "p2", "p3"}
    assert "p2" in Constitution(principles=["p1", "p2"], mode="all").criterion("q", "x", "y")
    with pytest.raises(ValueError, match="principles"):
        Constitution(principles=[])
    assert JudgeTemplate(constitution=c).hash() != JudgeTemplate().hash()


def test_rerun_makes_zero_model_calls(tmp_path):
    path = str(tmp_path / "cache.sqlite")
    first = tiny_judge(cache_path=path, batch_size=4).judge_pairs(PROMPTS, FIRSTS, SECONDS)
    again = tiny_judge(cache_path=path, batch_size=4)
    assert again.judge_pairs(PROMPTS, FIRSTS, SECONDS) == first
    assert again.stats.calls == 0 and again._lm is None  # the model was not even loaded
    assert again.cache.hits == 2 * len(PROMPTS) and again.cache.misses == 0
    # another template or another judge model is another key
    other = tiny_judge(cache_path=path, template=JudgeTemplate(rubric="Which is shorter?"))
    other.judge_pairs(PROMPTS[:1], FIRSTS[:1], SECONDS[:1])
    assert other.stats.calls == 1


def test_cache_ignores_duplicate_inserts(tmp_path):
    c = JudgeCache(tmp_path / "c.sqlite")
    c.put_many([("k", "j", "t", "pair", {"v": 1})])
    c.put_many([("k", "j", "t", "pair", {"v": 2})])
    assert len(c) == 1 and c.get_many(["k"]) == {"k": {"v": 1}}


SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    from alignlab.judges.local import LocalJudge
    from alignlab.utils.io import write_jsonl
    cache, out, die_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    data = json.loads(sys.argv[4])
    judge = LocalJudge({"source": "tiny", "dtype": "float32"}, cache_path=cache, batch_size=3)
    answer, n = judge._answer, [0]
    def dying(queries):
        n[0] += 1
        if n[0] == die_at:  # killed mid-batch, before this batch is committed
            os.kill(os.getpid(), signal.SIGKILL)
        return answer(queries)
    judge._answer = dying
    res = judge.judge_pairs(*data)
    write_jsonl(out, res)
    print(json.dumps({"queries": judge.stats.queries, "hits": judge.cache.hits}))
    """
)


def test_killed_run_resumes_to_the_same_dataset(tmp_path):
    data = [PROMPTS * 2, FIRSTS * 2, [s + "!" for s in SECONDS * 2][:6] + SECONDS]  # 12 pairs, 24 queries
    run = lambda cache, out, die: subprocess.run(  # noqa: E731
        [sys.executable, "-c", SCRIPT, str(cache), str(out), str(die), json.dumps(data)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=240,
    )
    killed = run(tmp_path / "a.sqlite", tmp_path / "a.jsonl", 4)  # dies in batch 4: 3 batches committed
    assert killed.returncode == -signal.SIGKILL and not (tmp_path / "a.jsonl").exists()
    assert len(JudgeCache(tmp_path / "a.sqlite")) == 9
    resumed = run(tmp_path / "a.sqlite", tmp_path / "a.jsonl", 0)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    counts = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert counts == {"queries": 24 - 9, "hits": 9}  # nothing recomputed, nothing lost
    assert len(JudgeCache(tmp_path / "a.sqlite")) == 24
    straight = tiny_judge(cache_path=str(tmp_path / "b.sqlite"), batch_size=3).judge_pairs(*data)
    got = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert len(got) == 12
    for g, s in zip(got, straight):
        assert g["verdict"] == s["verdict"] and g["p_first"] == pytest.approx(s["p_first"], abs=1e-6)


def test_text_hash_is_stable():
    assert text_hash("a", 1) == text_hash("a", 1) != text_hash("a", 2)


@pytest.mark.parametrize(
    "name", ["smollm2_135m", "smollm2_135m_pointwise", "openai_compatible", "tuned_smollm2"]
)
def test_judge_configs_instantiate(name, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    import alignlab.utils.hydra  # noqa: F401
    from conftest import CONF

    with initialize_config_dir(config_dir=str(CONF / "judge"), version_base="1.3"):
        cfg = compose(config_name=name)
    cfg = OmegaConf.merge({"paths": {"cache_dir": str(tmp_path)}}, {"judge": cfg})
    if name == "openai_compatible":
        cfg.judge.model = "served-model"
    judge = instantiate(cfg.judge)
    assert judge.cache.path == tmp_path / "judge_cache.sqlite"
    if name == "smollm2_135m_pointwise":  # no task here: the generic framing, the question comes with one
        assert judge.mode == "pointwise" and judge.template.question is None


def test_judge_rewards_count_their_queries(tmp_path):
    from alignlab.judges.base import PairwiseJudge
    from alignlab.rewards.judge import JudgePairwiseReward

    class Always(PairwiseJudge):
        def judge_pairs(self, prompts, firsts, seconds):
            return [{"p_first": 0.7, "verdict": "first"} for _ in prompts]

    refs = tmp_path / "refs.jsonl"
    refs.write_text('{"prompt": "p", "completion": "ref"}\n')
    reward = JudgePairwiseReward(Always(), references=str(refs))
    reward(["p", "p"], ["a", "b"])
    reward(["p"], ["c"])
    assert reward.queries == 3


def test_an_answer_below_the_option_mass_floor_is_invalid_and_never_a_preference():
    from alignlab.tasks.pairs import PairSet, label_pairs

    free = tiny_judge(mode="pointwise").judge_pairs(PROMPTS, FIRSTS, SECONDS)
    masses = [float(r["raw"][0].split("option mass ")[1].rstrip(")")) for r in free]
    assert all(0 < m < 1 for m in masses)
    floor = sorted(masses)[len(masses) // 2] + 1e-9  # about half of the first texts fall below it
    judge = tiny_judge(mode="pointwise", min_option_mass=floor)
    out = judge.judge_pairs(PROMPTS, FIRSTS, SECONDS)
    low = [i for i, m in enumerate(masses) if m < floor]
    assert low and all(out[i]["verdict"] == "invalid" and out[i]["p_first"] is None for i in low)
    rows, rep = label_pairs(judge, PairSet(PROMPTS, FIRSTS, SECONDS), progress=False)
    assert rep["invalid"] >= len(low) and len(rows) == rep["decided"] and rep["below_mass_floor"] >= len(low)
    with pytest.raises(ValueError, match="min_option_mass"):
        tiny_judge(min_option_mass=1.0)


def test_min_confidence_keeps_only_pairs_the_judge_is_sure_of():
    from alignlab.judges.base import pair_confidence

    free = tiny_judge(batch_size=8).judge_pairs(PROMPTS, FIRSTS, SECONDS)
    conf = [pair_confidence(r, "pairwise") for r in free]
    cut = sorted(conf)[len(conf) // 2] + 1e-9
    sure = tiny_judge(batch_size=8, min_confidence=min(cut, 0.999)).judge_pairs(PROMPTS, FIRSTS, SECONDS)
    for r, c in zip(sure, conf):
        assert (r["verdict"] == "tie" and r.get("unsure")) if c < cut else r["verdict"] in ("first", "second")
    # sure in both orders: orders that disagree give 0.5, otherwise the weaker order's confidence
    assert pair_confidence({"p_first": 0.6, "p_forward": 0.9, "p_backward": 0.3}, "pairwise") == 0.5
    assert pair_confidence(
        {"p_first": 0.8, "p_forward": 0.9, "p_backward": 0.7}, "pairwise"
    ) == pytest.approx(0.7)
    assert pair_confidence(
        {"p_first": 0.2, "p_forward": 0.9, "p_backward": 0.7}, "pointwise"
    ) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="min_confidence"):
        tiny_judge(min_confidence=0.4)


def test_yes_reward_is_the_pointwise_judges_p_yes(tmp_path):
    from alignlab.rewards.judge import JudgeYesReward

    judge = tiny_judge(mode="pointwise", cache_path=str(tmp_path / "c.sqlite"))
    pairs = judge.judge_pairs(PROMPTS, FIRSTS, SECONDS)
    reward = JudgeYesReward(judge, centered=True)
    r = reward(PROMPTS, FIRSTS)
    assert r.tolist() == pytest.approx([2 * p["p_forward"] - 1 for p in pairs], abs=1e-6)
    calls = judge.stats.calls
    assert JudgeYesReward(judge, centered=False)(PROMPTS, FIRSTS).tolist() == pytest.approx(
        [p["p_forward"] for p in pairs], abs=1e-6
    )
    assert judge.stats.calls == calls and reward.queries == len(PROMPTS)  # cached with the labels
    assert reward.to("cpu") is reward and judge.device == "cpu"

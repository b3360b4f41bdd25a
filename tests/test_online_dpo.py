"""Online DPO: the judge's labels are what the loss trains on (a fake judge that prefers the shorter
completion), ties are dropped, the reward-as-judge labels by score, and the tiny experiment trains."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import compose


def _judgement(p, verdict):
    return {"p_first": p, "verdict": verdict, "p_forward": p, "p_backward": p, "raw": [], "judge": "j",
            "judge_name": "j", "template_hash": None}  # fmt: skip


def test_judged_pairs_drops_ties_and_invalid_and_orients_p():
    from alignlab.modules.online_dpo import judged_pairs

    js = [
        _judgement(0.9, "first"),
        _judgement(0.5, "tie"),
        _judgement(None, "invalid"),
        _judgement(0.2, "second"),
    ]
    keep, first_won, p_chosen = judged_pairs(js)
    assert keep == [0, 3] and first_won == [True, False]
    assert p_chosen == pytest.approx([0.9, 0.8])  # P(chosen ≻ rejected): 1 - 0.2 when the second won


def test_reward_judge_prefers_the_higher_score_and_ties_equal_ones():
    from alignlab.judges.reward import RewardJudge
    from alignlab.rewards.base import CharFractionReward

    judge = RewardJudge(CharFractionReward("a"), temperature=0.0)
    # share of "a": 2/4 vs 1/4; 0 vs 1/2; 1/2 vs 1/2
    out = judge.judge_pairs(["p"] * 3, ["aabb", "bbbb", "ab"], ["abbb", "ab", "ba"])
    assert [o["verdict"] for o in out] == ["first", "second", "tie"]
    assert [o["p_first"] for o in out] == [1.0, 0.0, 0.5]
    soft = RewardJudge(CharFractionReward("a"), temperature=0.25).judge_pairs(["p"], ["aabb"], ["abbb"])
    assert soft[0]["p_first"] == pytest.approx(1 / (1 + math.exp(-1.0)))  # σ((0.5 - 0.25) / 0.25)


class ShorterJudge:
    """Prefers the shorter completion (ties on equal length); remembers what it was asked."""

    mode = "pairwise"

    def __init__(self):
        self.asked = []

    def set_task(self, task):
        pass

    def judge_pairs(self, prompts, firsts, seconds):
        self.asked.append((list(firsts), list(seconds)))
        out = []
        for a, b in zip(firsts, seconds):
            verdict = "tie" if len(a) == len(b) else "first" if len(a) < len(b) else "second"
            out.append(_judgement({"first": 1.0, "second": 0.0, "tie": 0.5}[verdict], verdict))
        return out


def test_the_loss_trains_on_the_judges_labels(tiny_lm, monkeypatch):
    """The rows that reach the policy forward as chosen are the completions the judge preferred."""
    import alignlab.modules.online_dpo as mod

    torch.manual_seed(0)
    judge = ShorterJudge()
    m = mod.OnlineDPOModule(tiny_lm.model, tiny_lm.tokenizer, judge=judge, beta=0.5, max_new_tokens=12)
    seen = {}
    forward = mod.forward_completion

    def spy(model, qr, attn, ctx, temperature):
        seen["rows"] = [tiny_lm.tokenizer.decode(r[ctx:][a[ctx:].bool()].tolist(), skip_special_tokens=True)
                        for r, a in zip(qr, attn)]  # fmt: skip
        return forward(model, qr, attn, ctx, temperature)

    monkeypatch.setattr(mod, "forward_completion", spy)
    monkeypatch.setattr(m, "log", lambda *a, **k: None)
    monkeypatch.setattr(m, "log_dict", lambda *a, **k: None)
    prompts = ["The movie was", "The plot felt", "I thought it", "Overall the film"] * 2
    batch = {"prompt": prompts, "prompt_ids": [tiny_lm.tokenizer(p)["input_ids"] for p in prompts]}
    loss = m.training_step(batch, 0)
    firsts, seconds = judge.asked[0]
    decided = [(a, b) for a, b in zip(firsts, seconds) if len(a) != len(b)]
    assert decided and loss is not None and loss.requires_grad
    k = len(decided)
    assert seen["rows"][:k] == [min(p, key=len) for p in decided]  # chosen: the shorter
    assert seen["rows"][k:] == [max(p, key=len) for p in decided]  # rejected: the longer
    assert m.labels["pairs"] == len(prompts) and m.labels["decided"] == k
    assert m.queries == 2 * len(prompts)  # a pairwise judge is asked both orders of every pair


def test_online_dpo_tiny_trains_the_policy(tmp_path):
    from alignlab.train import train

    cfg = compose(["experiment=online_dpo_tiny", f"paths.output_dir={tmp_path}"])
    metrics, objs = train(cfg)
    module = objs["module"]
    start = dict(module.ref_model.model.named_parameters())  # full fine-tuning: the frozen copy of the start
    moved = [
        n for n, p in module.policy.named_parameters() if not torch.equal(p.detach().cpu(), start[n].cpu())
    ]
    assert moved, "no weight changed"
    assert metrics["label/decided"] > 0 and metrics["reward/judge_queries"] == 4 * 6  # 4 prompts x 6 steps
    assert 0 < metrics["label/decided_frac"] <= 1 and (tmp_path / "policy").is_dir()


class LengthTask:
    """Gold reward: sign x the completion's length capped at 3 (a Task passes build_task untouched)."""

    name = "length"

    def __init__(self, sign: float):
        self.sign = sign

    def gold_scores(self, prompts, completions):
        return [self.sign * min(len(c), 3) for c in completions]


@pytest.mark.parametrize("sign, agree", [(-1.0, 1.0), (1.0, 0.0)])
def test_label_agreement_with_gold_counts_the_judges_decided_pairs(tiny_lm, sign, agree):
    from alignlab.modules.online_dpo import OnlineDPOModule

    m = OnlineDPOModule(tiny_lm.model, tiny_lm.tokenizer, judge=ShorterJudge(), task=LengthTask(sign))
    firsts, seconds = ["a", "abc", "ab", "xy", "abcd"], ["ab", "a", "ab", "xyz", "abcde"]
    keep, first_won, _ = m.label(["p"] * 5, firsts, seconds)
    assert keep == [0, 1, 3, 4] and first_won == [True, False, True, True]  # the equal-length pair: a tie
    # the last pair ties on gold (both capped at 3): not counted; of the other 3, gold = -length agrees
    # with "shorter wins" on all, gold = +length on none
    assert m.labels["gold_decided"] == 3 and m.labels["agree"] == 3 * agree


def test_simpo_trains_on_mean_token_logprobs_without_a_reference(tiny_lm, monkeypatch):
    import alignlab.modules.online_dpo as mod

    torch.manual_seed(0)
    m = mod.OnlineDPOModule(
        tiny_lm.model, tiny_lm.tokenizer, judge=ShorterJudge(), loss_type="simpo", beta=2.0
    )
    assert m.ref_model is None
    seen = {}
    forward, gather, loss_fn = mod.forward_completion, mod.gather_logprobs, mod.preference_loss

    def spy_forward(model, qr, attn, ctx, temperature):
        seen["mask"] = attn[:, ctx:].float()
        return forward(model, qr, attn, ctx, temperature)

    def spy_gather(logits, ids):
        seen["token_logps"] = gather(logits, ids).detach()
        return gather(logits, ids)

    def spy_loss(loss_type, chosen, rejected, *args, **kw):
        seen["chosen"], seen["gamma"] = chosen.detach(), kw["gamma"]
        return loss_fn(loss_type, chosen, rejected, *args, **kw)

    for name, fn in (
        ("forward_completion", spy_forward),
        ("gather_logprobs", spy_gather),
        ("preference_loss", spy_loss),
    ):
        monkeypatch.setattr(mod, name, fn)
    monkeypatch.setattr(m, "log", lambda *a, **k: None)
    monkeypatch.setattr(m, "log_dict", lambda *a, **k: None)
    prompts = ["The movie was", "The plot felt", "I thought it", "Overall the film"] * 2
    m.training_step(
        {"prompt": prompts, "prompt_ids": [tiny_lm.tokenizer(p)["input_ids"] for p in prompts]}, 0
    )
    k = seen["chosen"].shape[0]
    mean = (seen["token_logps"] * seen["mask"]).sum(-1) / seen["mask"].sum(-1)  # (2K,)
    assert torch.allclose(seen["chosen"], mean[:k]) and seen["gamma"] == 0.5

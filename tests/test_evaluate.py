"""The evaluation core: CIs, distinct-n, KL to the reference, and the app writing metrics.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from alignlab.data.collate import join
from alignlab.evaluate import completion_kl, distinct_n, evaluate, evaluate_policy
from alignlab.models import LoraSpec, apply_peft
from alignlab.models.generation import SamplingConfig, sample
from alignlab.models.logprobs import token_logprobs
from alignlab.models.reference import ReferenceModel
from alignlab.stats import bootstrap_mean_ci as bootstrap_ci
from alignlab.tasks.base import Task
from conftest import compose

PROMPTS = ["The movie was", "I thought it", "The plot felt", "Acting here is", "This film"]


class FakeTask(Task):
    """Gold reward: share of the letter 'a' among completion characters; second: its length / 100."""

    name = "fake_letters"

    def prompts(self, split: str) -> list[str]:
        return list(PROMPTS)

    def gold_scores(self, prompts, completions):
        return np.array([c.count("a") / max(len(c), 1) for c in completions])

    def second_scores(self, prompts, completions):
        return np.array([len(c) / 100 for c in completions])


def test_bootstrap_ci():
    assert bootstrap_ci(np.full(10, 0.3)) == pytest.approx((0.3, 0.3))
    rng = np.random.default_rng(0)
    small, big = rng.normal(1.0, 1.0, 50), rng.normal(1.0, 1.0, 2000)
    lo, hi = bootstrap_ci(small)
    assert lo < small.mean() < hi
    blo, bhi = bootstrap_ci(big)
    assert blo < 1.0 < bhi and (bhi - blo) < (hi - lo) / 4  # width ~ 1/sqrt(n)
    with pytest.raises(ValueError):
        bootstrap_ci(np.array([]))


def test_distinct_n_closed_form():
    assert distinct_n(["a b a b"], 1) == pytest.approx(2 / 4)
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)  # (a b), (b a), (a b)
    assert distinct_n(["x y", "x z"], 1) == pytest.approx(3 / 4)
    assert distinct_n(["", "one"], 2) == 0.0


def test_base_policy_has_zero_kl_and_all_columns(tiny_lm):
    cfg = SamplingConfig(max_new_tokens=8)
    m, samples = evaluate_policy(
        tiny_lm.model,
        tiny_lm.tokenizer,
        FakeTask(),
        PROMPTS,
        cfg,
        reference=ReferenceModel(tiny_lm.model),
        batch_size=2,
        return_samples=True,
        hooks=[lambda s: {"n_rows": len(s.rows())}],
    )
    assert m["n"] == 5 and m["n_rows"] == 5
    assert m["kl"] == 0.0  # the reference of a base policy is the policy: no forward pass
    assert len(m["per_prompt"]["gold_reward"]) == 5
    assert m["gold_reward_ci_low"] <= m["gold_reward"] <= m["gold_reward_ci_high"]
    assert m["gold_reward"] == pytest.approx(np.mean(samples.gold))
    # the completions are kept in prompt order: the per-prompt gold reward is their score
    assert m["completions"] == list(samples.completions)
    assert m["per_prompt"]["gold_reward"] == pytest.approx(
        [c.count("a") / max(len(c), 1) for c in m["completions"]]
    )
    assert m["second_reward"] == pytest.approx(np.mean([len(c) / 100 for c in samples.completions]))
    assert 1 <= m["completion_length"] <= 8
    assert 0 <= m["distinct_1"] <= 1 and 0 <= m["distinct_2"] <= 1


def test_kl_against_a_separate_copy_is_measured_not_assumed(tiny_lm):
    import copy

    cfg = SamplingConfig(max_new_tokens=8)
    same = ReferenceModel(tiny_lm.model, copy.deepcopy(tiny_lm.model))  # frozen: KL by two forward passes
    m = evaluate_policy(tiny_lm.model, tiny_lm.tokenizer, FakeTask(), PROMPTS, cfg, reference=same)
    assert m["kl"] == pytest.approx(0.0, abs=1e-5)
    other = copy.deepcopy(tiny_lm.model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    m = evaluate_policy(tiny_lm.model, tiny_lm.tokenizer, FakeTask(), PROMPTS * 4, cfg,
                        reference=ReferenceModel(tiny_lm.model, other))  # fmt: skip
    assert m["kl"] > 0.05 and m["kl_ci_low"] > 0


def test_samples_per_prompt_pairs_statistics_by_prompt(tiny_lm):
    cfg = SamplingConfig(max_new_tokens=6)
    m, s = evaluate_policy(tiny_lm.model, tiny_lm.tokenizer, FakeTask(), PROMPTS[:3], cfg,
                           samples_per_prompt=4, batch_size=5, return_samples=True)  # fmt: skip
    assert m["n"] == 3 and m["samples_per_prompt"] == 4 and len(s.completions) == 12
    assert s.prompts[:4] == [PROMPTS[0]] * 4  # a prompt's samples side by side
    per = np.asarray(s.gold).reshape(3, 4).mean(1)
    np.testing.assert_allclose(m["per_prompt"]["gold_reward"], per, atol=1e-6)
    assert m["gold_reward"] == pytest.approx(per.mean())


def test_kl_to_adapter_disabled_reference(tiny_lm):
    policy = apply_peft(tiny_lm.model, LoraSpec(r=4, alpha=8))
    cfg = SamplingConfig(max_new_tokens=8)
    # a fresh adapter (lora_B = 0) is the reference itself: KL exactly 0
    assert evaluate_policy(policy, tiny_lm.tokenizer, FakeTask(), PROMPTS, cfg)["kl"] == pytest.approx(
        0.0, abs=1e-5
    )
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 3.0)
    # the per-sample estimate equals the summed log-ratio computed by hand
    ids = [tiny_lm.tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS[:2]]
    gen = sample(policy, tiny_lm.tokenizer, ids, cfg, generator_seed=0)
    kl = completion_kl(policy, ReferenceModel(policy), ids, gen.completion_ids, gen.completion_mask, 0)
    seqs = join(ids, [c[m.bool()].tolist() for c, m in zip(gen.completion_ids, gen.completion_mask)], 0)
    with torch.no_grad():
        lp, mask = token_logprobs(policy, *seqs)
        with policy.disable_adapter():
            ref, _ = token_logprobs(policy, *seqs)
    torch.testing.assert_close(kl, ((lp - ref) * mask).sum(-1))
    # on enough samples from pi the Monte-Carlo KL is positive
    m = evaluate_policy(policy, tiny_lm.tokenizer, FakeTask(), PROMPTS * 8, cfg, batch_size=20)
    assert m["kl"] > 0 and m["kl_ci_low"] > 0


def test_evaluate_app_writes_metrics(tmp_path, tiny_lm):
    policy_dir = tmp_path / "policy"
    apply_peft(tiny_lm.model, LoraSpec(r=4, alpha=8)).save_pretrained(policy_dir)
    out = tmp_path / "run"
    cfg = compose(
        [
            "model=tiny",
            "~task",
            "+task._target_=test_evaluate.FakeTask",
            f"policy_path={policy_dir}",
            "n_prompts=3",
            "sampling.max_new_tokens=6",
            "n_bootstrap=200",
            f"paths.output_dir={out}",
            f"paths.cache_dir={tmp_path}",
        ],
        config_name="evaluate",
    )
    record = evaluate(cfg)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["n"] == 3 and saved["policy"] == str(policy_dir) and saved["task"] == "fake_letters"
    assert saved["kl"] == pytest.approx(0.0, abs=1e-5)  # a saved fresh adapter
    assert record["gold_reward"] == saved["gold_reward"]
    assert len((out / "samples.jsonl").read_text().splitlines()) == 3
    # what alignlab.compare pairs on: the evaluation's fields hashed, and its prompts
    from alignlab.report_checks import eval_fingerprint, prompts_sha

    assert saved["eval_fingerprint"] == eval_fingerprint(saved) == eval_fingerprint({**saved, "kl": 9.0})
    assert saved["prompts_sha"] == prompts_sha(PROMPTS[:3]) != prompts_sha(PROMPTS[1:4])


def test_reference_must_be_a_reference_model(tiny_lm):
    with pytest.raises(TypeError, match="ReferenceModel"):
        evaluate_policy(
            tiny_lm.model, tiny_lm.tokenizer, FakeTask(), PROMPTS, SamplingConfig(), reference="adapter"
        )

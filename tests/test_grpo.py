"""GRPO and its variants: the loss math against hand-computed numbers, the reduction to RLOO, and tiny
end-to-end runs of ``experiment=grpo_tiny`` for each loss aggregation."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from alignlab.losses.grpo import (
    aggregate_loss,
    clipped_surrogate,
    group_advantages,
    grpo_loss,
    informative_groups,
)
from alignlab.losses.rl import reinforce_loss, rloo_advantages
from alignlab.train import train
from conftest import compose


# -- advantages -------------------------------------------------------------------------------------------
def test_group_advantages_with_and_without_std_scaling():
    rewards = torch.tensor([1.0, 2.0, 6.0, 5.0, 5.0, 5.0])  # two prompts, k=3
    # group 1: mean 3 -> centred (-2, -1, 3); Bessel std sqrt((4 + 1 + 9) / 2) = sqrt(7). group 2: all 5.
    centred = group_advantages(rewards, 3, scale_rewards=False)
    assert centred.tolist() == [-2.0, -1.0, 3.0, 0.0, 0.0, 0.0]
    scaled = group_advantages(rewards, 3, scale_rewards=True, eps=1e-4)
    s = math.sqrt(7) + 1e-4
    torch.testing.assert_close(scaled, torch.tensor([-2 / s, -1 / s, 3 / s, 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="groups of k=4"):
        group_advantages(rewards, 4)


def test_dynamic_sampling_keeps_groups_whose_rewards_differ():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.2, 0.2, 0.3])
    assert informative_groups(rewards, 3).tolist() == [False] * 3 + [True] * 6


# -- the clipped surrogate ----------------------------------------------------------------------------------
def _ratios_and_advantages():
    ratios = torch.tensor([[0.5, 0.9, 1.25, 1.5], [0.5, 0.9, 1.25, 1.5]])
    logprobs = ratios.log().requires_grad_(True)  # pi_old = 1, so ratio = exp(logprobs)
    return logprobs, torch.zeros(2, 4), torch.tensor([1.0, -1.0])


def test_clip_higher_is_asymmetric():
    """epsilon_low 0.2, epsilon_high 0.28: the ratio is kept in [0.8, 1.28] on the side the advantage
    pushes it, and the clipped tokens carry no gradient."""
    logprobs, old, adv = _ratios_and_advantages()
    out = clipped_surrogate(logprobs, old, adv, epsilon_low=0.2, epsilon_high=0.28)
    # A = +1: -min(r, clip(r)); A = -1: max(r, clip(r))
    want = torch.tensor([[-0.5, -0.9, -1.25, -1.28], [0.8, 0.9, 1.25, 1.5]])
    torch.testing.assert_close(out.per_token, want)
    assert out.clipped_high.tolist() == [[False, False, False, True], [False] * 4]
    assert out.clipped_low.tolist() == [[False] * 4, [True, False, False, False]]
    out.per_token.sum().backward()  # d(-A r)/d log r = -A r where unclipped, 0 where clipped
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-0.5, -0.9, -1.25, 0.0], [0.0, 0.9, 1.25, 1.5]]))
    # symmetric 0.2 clips 1.25 from above as well; no clipping (null) leaves every ratio
    sym = clipped_surrogate(logprobs, old, adv, epsilon_low=0.2, epsilon_high=0.2).per_token
    torch.testing.assert_close(sym[0], torch.tensor([-0.5, -0.9, -1.2, -1.2]))
    free = clipped_surrogate(logprobs, old, adv, epsilon_low=None, epsilon_high=None).per_token
    torch.testing.assert_close(free, torch.tensor([[-0.5, -0.9, -1.25, -1.5], [0.5, 0.9, 1.25, 1.5]]))
    res = grpo_loss(logprobs, old, None, adv, torch.ones(2, 4), 0.2, 0.28, loss_aggregation="dapo")
    assert (res.clipfrac_low.item(), res.clipfrac_high.item()) == (0.125, 0.125)


# -- aggregations -----------------------------------------------------------------------------------------
PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # lengths 2 and 1; 3 tokens


@pytest.mark.parametrize(
    ("aggregation", "constant", "want"),
    [
        ("grpo", None, (1.5 + 4.0) / 2),  # sequence means 1.5 and 4, then their mean
        ("dr_grpo", None, 7.0 / (2 * 3)),  # token sum 7 over B x L = 2 x 3
        ("dr_grpo", 4.0, 7.0 / (2 * 4)),  # ... over B x the constant
        ("dapo", None, 7.0 / 3),  # token sum 7 over the batch's 3 tokens
    ],
)
def test_loss_aggregations(aggregation, constant, want):
    got = aggregate_loss(PER_TOKEN, MASK, aggregation, constant=constant)
    assert got.item() == pytest.approx(want)
    # one row at a time with the batch's counts: the chunks add up to the batch's loss
    parts = [
        aggregate_loss(
            PER_TOKEN[i : i + 1], MASK[i : i + 1], aggregation, constant, num_sequences=2, num_tokens=3
        )
        for i in range(2)
    ]
    assert sum(p.item() for p in parts) == pytest.approx(want)


def test_unknown_aggregation_is_refused():
    with pytest.raises(ValueError, match="choose one of grpo, dr_grpo, dapo"):
        aggregate_loss(PER_TOKEN, MASK, "bnpo")


# -- the KL term ------------------------------------------------------------------------------------------
def test_k3_kl_loss_term():
    """k3 = pi_ref/pi - log(pi_ref/pi) - 1, weighted by beta; its gradient in log pi is beta (1 - pi_ref/pi)."""
    logprobs = torch.zeros(1, 2, requires_grad=True)
    ref = torch.tensor([[math.log(0.5), math.log(2.0)]])
    k3 = [0.5 - math.log(0.5) - 1, 2.0 - math.log(2.0) - 1]  # 0.19315, 0.30685
    out = grpo_loss(logprobs, logprobs.detach(), ref, torch.zeros(1), torch.ones(1, 2), beta=0.1)
    assert out.kl.item() == pytest.approx(sum(k3) / 2)
    assert out.loss.item() == pytest.approx(0.1 * sum(k3) / 2)  # A = 0: only the KL term is left
    out.loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.1 * 0.5 / 2, 0.1 * -1.0 / 2]]))
    zero = grpo_loss(logprobs, logprobs.detach(), ref, torch.zeros(1), torch.ones(1, 2), beta=0.0)
    assert zero.loss.item() == 0.0 and zero.kl.item() == pytest.approx(sum(k3) / 2)  # measured, not applied


# -- GRPO reduces to RLOO ---------------------------------------------------------------------------------
def test_grpo_gradient_is_rloo_gradient_over_k_over_k_minus_1():
    """With pi_old = pi (one pass), no clipping, no std scaling and no KL term, the Dr. GRPO loss's gradient
    is RLOO's divided by k/(k-1) x C: the group-mean baseline is (k-1)/k of the leave-one-out advantage,
    and dr_grpo divides the token sum by the constant C. The loss values are not equal (GRPO's is
    -sum(A ratio) / (B C) with ratio = 1, RLOO's -mean(A log pi(y)))."""
    k, c = 4, 5.0
    torch.manual_seed(0)
    logprobs = torch.randn(8, 5).log_softmax(-1).requires_grad_(True)
    mask = torch.ones(8, 5)
    mask[1, 3:] = 0  # unequal lengths: the identity does not need them equal
    rewards = torch.randn(8)
    reinforce_loss(logprobs, rloo_advantages(rewards, k), mask).backward()
    rloo_grad, logprobs.grad = logprobs.grad.clone(), None
    adv = group_advantages(rewards, k, scale_rewards=False)
    loss = grpo_loss(logprobs, logprobs.detach(), None, adv, mask, None, None, 0.0, "dr_grpo", c).loss
    loss.backward()
    torch.testing.assert_close(rloo_grad, logprobs.grad * k / (k - 1) * c)
    assert not math.isclose(loss.item(), reinforce_loss(logprobs, rloo_advantages(rewards, k), mask).item())


def _fit(
    tmp_path, overrides: list[str], steps: int = 4, experiment: str = "grpo_tiny"
) -> tuple[dict, dict, list[dict]]:
    """Train through ``train()``; (parameters before the first update, after the last, metric rows)."""
    over = [
        f"experiment={experiment}",
        f"paths.output_dir={tmp_path}",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        f"trainer.max_steps={steps}",
        "trainer.val_check_interval=1000",
        "++trainer.limit_val_batches=0",
        "callbacks=none",
        "algo.log_samples_every=0",
        *overrides,
    ]
    init = None

    def named(module):
        return {n: p.detach().clone() for n, p in module.policy.named_parameters() if p.requires_grad}

    from alignlab.modules.rollout import OnlineRLModule

    original = OnlineRLModule.on_fit_start

    def remember(self):  # the parameters before the first update
        nonlocal init
        init = named(self)
        original(self)

    OnlineRLModule.on_fit_start = remember
    try:
        _, objs = train(compose(over))
    finally:
        OnlineRLModule.on_fit_start = original
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("objective/score")]
    return init, named(objs["module"]), rows


def test_grpo_step_reduces_to_rloo_step(tmp_path):
    """Two rollout batches through ``train()``, the same seed and so the same rollouts: GRPO with one pass,
    no clipping, no std scaling, the (k1) KL in the reward and ``dr_grpo`` with constant C takes the same
    SGD steps as RLOO (leave-one-out baseline, no normalisation) when its learning rate is k/(k-1) x C
    times RLOO's, because its gradient is RLOO's divided by that factor (to float rounding). Equal: the
    rollouts, scores, KL, rewards and the parameter updates. Not equal: the advantages (GRPO's are
    (k-1)/k of RLOO's) and the loss values. The second batch has a KL to the reference, so the KL in the
    reward is exercised; C (5) differs from the completion length (8), so the aggregation is too."""
    k, c, lr, beta = 4, 5.0, 0.1, 0.5
    common = ["algo.max_grad_norm=null", "algo.kl_estimator=k1", "algo.optimizer._target_=torch.optim.SGD"]
    rloo_over = [f"algo.kl_coef={beta}", f"algo.optimizer.lr={lr}", *common]
    init, rloo, rloo_rows = _fit(tmp_path / "rloo", rloo_over, steps=2, experiment="rloo_tiny")
    grpo_over = [
        "algo.num_iterations=1",
        "algo.epsilon_low=null",
        "algo.epsilon_high=null",
        "algo.scale_rewards=false",
        "algo.kl_in_reward=true",
        f"algo.beta={beta}",
        "algo.loss_aggregation=dr_grpo",
        f"algo.loss_constant={c}",
        f"algo.optimizer.lr={lr * k / (k - 1) * c}",
        *common,
    ]
    init2, grpo, grpo_rows = _fit(tmp_path / "grpo", grpo_over, steps=2)
    assert len(grpo_rows) == len(rloo_rows) == 2 and float(rloo_rows[1]["objective/kl"]) > 1e-3
    for key in ("objective/score", "objective/kl", "objective/rlhf_reward", "completion/length"):
        got, want = [float(r[key]) for r in grpo_rows], [float(r[key]) for r in rloo_rows]
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6), key
    moved = 0.0
    for n, p in rloo.items():
        torch.testing.assert_close(init2[n], init[n])  # the same start
        torch.testing.assert_close(grpo[n] - init[n], p - init[n], rtol=1e-3, atol=1e-6, msg=n)
        moved = max(moved, (p - init[n]).abs().max().item())
    assert moved > 1e-3  # the steps were not empty


def test_grpo_fused_forward_matches_separate_forward(tmp_path, monkeypatch):
    """algo.fused_forward takes pi_old's log-probs from the first pass's gradient forward: the same
    updates over two passes as the separate no-grad forward, with one policy forward fewer per batch."""
    import alignlab.modules.rollout as rollout
    from alignlab.modules.grpo import GRPOModule

    calls = {"no_grad": 0, "grad": 0}
    no_grad, grad = rollout.completion_logprobs, GRPOModule.policy_logprobs

    def count(kind, fn):
        def counted(*a, **kw):
            calls[kind] += 1
            return fn(*a, **kw)

        return counted

    monkeypatch.setattr(rollout, "completion_logprobs", count("no_grad", no_grad))
    monkeypatch.setattr(GRPOModule, "policy_logprobs", count("grad", grad))
    _, ref, ref_rows = _fit(tmp_path / "separate", ["++algo.fused_forward=false"], steps=4)
    assert calls == {"no_grad": 4, "grad": 4}  # 2 batches: pi_old + reference; 2 passes each
    calls.update(no_grad=0, grad=0)
    _, fused, rows = _fit(tmp_path / "fused", ["++algo.fused_forward=true"], steps=4)
    assert calls == {"no_grad": 2, "grad": 4}  # the reference only; the first pass's forward is pi_old's
    for key in ("objective/score", "objective/kl", "policy/pg_loss", "policy/ratio"):
        got, want = [float(r[key]) for r in rows], [float(r[key]) for r in ref_rows]
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6), key
    for n, p in fused.items():
        torch.testing.assert_close(p, ref[n], rtol=1e-4, atol=1e-6, msg=n)


# -- end to end -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("aggregation", ["grpo", "dr_grpo", "dapo"])
def test_grpo_tiny_trains_each_aggregation(tmp_path, monkeypatch, aggregation):
    """``python -m alignlab.train experiment=grpo_tiny algo.loss_aggregation=...``: the loss is aggregated
    as asked over the whole batch, two clipped updates per rollout batch move the policy, the second pass
    sees a ratio away from 1, and the loss is finite."""
    import alignlab.modules.grpo as grpo_module

    calls = []
    inner = grpo_module.grpo_loss

    def spy(*a, **kw):
        calls.append((a[8], kw["num_sequences"], kw["num_tokens"], float(a[4].sum())))
        return inner(*a, **kw)

    monkeypatch.setattr(grpo_module, "grpo_loss", spy)
    init, params, rows = _fit(tmp_path, [f"algo.loss_aggregation={aggregation}"], steps=6)
    assert len(calls) == 6 and {c[0] for c in calls} == {aggregation}
    assert all(c[1] == 32 and c[2] == c[3] for c in calls)  # 8 prompts x k=4 rows, all their tokens
    assert len(rows) == 3  # 6 updates = 3 rollout batches x num_iterations 2
    assert all(math.isfinite(float(r["policy/pg_loss"])) for r in rows)
    assert max(abs(float(r["policy/ratio"]) - 1) for r in rows) > 1e-4  # pi moved between the passes
    assert float(rows[-1]["objective/kl"]) > 0  # away from the reference
    assert max((params[n] - init[n]).abs().max().item() for n in params) > 1e-3
    assert (tmp_path / "policy" / "config.json").exists()


def test_grpo_tiny_raises_score(tmp_path):
    """The tiny policy learns the toy lowercase-letter reward (the experiment's own settings)."""
    _, _, rows = _fit(tmp_path, [], steps=30)
    scores = [float(r["objective/score"]) for r in rows]
    assert len(scores) == 15
    assert sum(scores[-4:]) / 4 > sum(scores[:4]) / 4 + 0.1, scores


def constant_for_even_prompts(prompts: list[str], completions: list[str]) -> list[float]:
    """A reward (``reward@algo.reward=python``) that gives every completion of some prompts 0."""
    return [0.0 if len(p) % 2 == 0 else len(c) / 10 for p, c in zip(prompts, completions)]


def test_dynamic_sampling_drops_uninformative_groups(tmp_path):
    over = [
        "reward@algo.reward=python",
        "algo.reward.fn=test_grpo:constant_for_even_prompts",
        "algo.dynamic_sampling=true",
    ]
    _, _, rows = _fit(tmp_path, over, steps=4)
    kept = [float(r["policy/kept_groups_frac"]) for r in rows]
    assert all(0 < f < 1 for f in kept), kept  # the toy prompts have both even and odd lengths
    _, _, rows = _fit(tmp_path / "off", over[:2], steps=4)
    assert all(float(r["policy/kept_groups_frac"]) == 1.0 for r in rows)


def test_grpo_config_errors(tiny_lm):
    from alignlab.modules.grpo import GRPOModule
    from alignlab.rewards.base import CharFractionReward

    def build(**kw):
        return GRPOModule(tiny_lm.model, tiny_lm.tokenizer, reward=CharFractionReward(), **kw)

    with pytest.raises(ValueError, match="k >= 2"):
        build(k=1)
    with pytest.raises(ValueError, match="choose one of grpo, dr_grpo, dapo"):
        build(loss_aggregation="token")
    with pytest.raises(ValueError, match="algo.beta, not algo.kl_coef"):
        build(kl_coef=0.1)
    with pytest.raises(ValueError, match="needs algo.kl_in_reward=true"):
        build(kl_target=1.0)
    from alignlab.utils.config import ConfigError

    m = build(dynamic_sampling=True)
    m.max_empty_batches = 2
    m.check_not_starved(0)
    m.check_not_starved(4)  # a batch with a group left resets the count
    m.check_not_starved(0)
    with pytest.raises(ConfigError, match="dropped every group of 2 rollout batches in a row"):
        m.check_not_starved(0)
    assert build(beta=0.1).kl_ctl.value == 0.0  # a loss term: nothing subtracted from the reward
    assert build(beta=0.1, kl_in_reward=True).kl_ctl.value == 0.1


# -- LoRA and the vLLM rollout engine (the stand-in server of tests/fake_vllm.py) --------------------------
def test_grpo_through_the_engine_with_lora(tmp_path):
    """Each rollout batch is sampled by the server after the adapter of the current update is loaded;
    the base weights stay and the adapter moves."""
    from alignlab.models import ModelSpec
    from fake_vllm import FakeVLLM

    lm = ModelSpec(source="tiny", dtype="float32").load()
    with FakeVLLM(lm.model, lm.tokenizer) as fake:
        init, params, rows = _fit(tmp_path, ["peft=lora", *_engine(fake, tmp_path)], steps=4)
        loads = [b["lora_name"] for p, b in fake.calls if p == "/v1/load_lora_adapter"]
        completions = [b for p, b in fake.calls if p == "/v1/completions"]
    assert len(completions) == 2 and loads == [
        "alignlab-base-lora-0",
        "alignlab-base-lora-2",
    ]  # 2 updates each
    assert all("lora_" in n for n in params)  # only the adapter trains
    assert max((params[n] - init[n]).abs().max().item() for n in params) > 0
    assert all(float(r["rollout/engine_logp_gap"]) < 1e-4 for r in rows)


def test_grpo_truncated_importance_weights_scale_the_surrogate(tmp_path):
    """The engine reports log-probs 1 nat below the trainer's: each weight exp(1) capped at 2 multiplies the
    surrogate, so with SGD, one pass and no KL term the first update is exactly twice the uncorrected one."""
    from alignlab.models import ModelSpec
    from fake_vllm import FakeVLLM

    lm = ModelSpec(source="tiny", dtype="float32").load()
    sgd = ["algo.optimizer._target_=torch.optim.SGD", "algo.optimizer.lr=0.5", "algo.max_grad_norm=null"]
    deltas = {}
    for cap in ("null", "2.0"):
        with FakeVLLM(lm.model, lm.tokenizer, logprob_noise=-1.0) as fake:
            over = [*sgd, "algo.num_iterations=1", "algo.beta=0", f"algo.rollout.tis_cap={cap}"]
            init, params, _ = _fit(
                tmp_path / cap, ["peft=lora", *_engine(fake, tmp_path / cap), *over], steps=1
            )
        deltas[cap] = torch.cat([(params[n] - init[n]).flatten() for n in params if "lora_B" in n])
    assert deltas["null"].abs().max() > 0
    torch.testing.assert_close(deltas["2.0"], 2 * deltas["null"], rtol=1e-4, atol=1e-7)


def _engine(fake, tmp_path) -> list[str]:
    return [
        "algo.rollout.engine=vllm",
        f"algo.rollout.base_url={fake.base_url}",
        f"algo.rollout.sync_dir={tmp_path / 'sync'}",
    ]

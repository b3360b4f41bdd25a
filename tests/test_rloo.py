"""RLOO and REINFORCE: the tiny policy learns the toy reward; bad settings fail with a clear message."""

from __future__ import annotations

import csv

import pytest
import torch

from alignlab.train import train
from conftest import compose


def _scores(run_dir) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [float(r["objective/score"]) for r in csv.DictReader(f) if r.get("objective/score")]


@pytest.mark.parametrize("algo", ["rloo", "reinforce"])
def test_tiny_policy_gradient_raises_score(tmp_path, algo):
    over = [
        "experiment=rloo_tiny",
        f"algo={algo}",
        "reward@algo.reward=char_fraction",
        f"paths.output_dir={tmp_path}",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        "trainer.max_steps=40",
        "callbacks.checkpoint.every_n_train_steps=40",
    ]
    if algo == "reinforce":
        over += ["data.batch_size=24", "algo.normalize_advantages=true"]
    metrics, objs = train(compose(over))
    scores = _scores(tmp_path)
    assert len(scores) == 40
    first, last = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
    assert last > first + 0.15, (algo, scores)
    assert objs["module"].k == (4 if algo == "rloo" else 1)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert "kl_controller" in ckpt["rl_state"] and ckpt["optimizer_states"]
    if algo == "reinforce":  # the running-mean baseline is part of the state
        assert ckpt["rl_state"]["baseline_value"] == pytest.approx(objs["module"].baseline_value)
    assert (tmp_path / "policy" / "config.json").exists()


def test_rloo_config_errors(tiny_lm):
    from alignlab.modules.rloo import RLOOModule
    from alignlab.rewards.base import CharFractionReward

    with pytest.raises(ValueError, match="k >= 2"):
        RLOOModule(tiny_lm.model, tiny_lm.tokenizer, reward=CharFractionReward(), k=1, baseline="rloo")
    with pytest.raises(ValueError, match="choose one of"):
        RLOOModule(tiny_lm.model, tiny_lm.tokenizer, reward=CharFractionReward(), baseline="median")
    m = RLOOModule(
        tiny_lm.model, tiny_lm.tokenizer, reward=CharFractionReward(), k=2, baseline="ema", ema_decay=0.5
    )
    assert m.advantages(torch.tensor([1.0, 3.0])).tolist() == [-1.0, 1.0]  # first batch: its own mean
    assert m.baseline_value == 2.0
    assert m.advantages(torch.tensor([4.0, 4.0])).tolist() == [2.0, 2.0]
    assert m.baseline_value == 3.0


def _fit_rloo(tmp_path, fused: bool, peft: str, extra: list[str] = ()) -> tuple[dict, list[dict]]:
    over = [
        "experiment=rloo_tiny",
        f"peft={peft}",
        "reward@algo.reward=char_fraction",
        f"paths.output_dir={tmp_path}",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        "trainer.max_steps=3",
        "trainer.val_check_interval=1000",
        "++trainer.limit_val_batches=0",
        "callbacks=none",
        "algo.log_samples_every=0",
        f"++algo.fused_forward={str(fused).lower()}",
        *extra,
    ]
    _, objs = train(compose(over))
    params = {n: p.detach().clone() for n, p in objs["module"].policy.named_parameters() if p.requires_grad}
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("objective/kl")]
    return params, rows


@pytest.mark.parametrize("peft", ["none", "lora"])
def test_rloo_fused_forward_matches_separate_forward(tmp_path, monkeypatch, peft):
    """fused_forward takes pi_old's log-probs from the update's forward: the same KL, rewards and updates
    as the separate no-grad forward, with one policy forward fewer per rollout batch."""
    import alignlab.modules.rollout as rollout

    calls = {"n": 0}
    inner = rollout.completion_logprobs

    def counting(*a, **kw):
        calls["n"] += 1
        return inner(*a, **kw)

    monkeypatch.setattr(rollout, "completion_logprobs", counting)
    ref_params, ref_rows = _fit_rloo(tmp_path / "separate", False, peft)
    separate_calls, calls["n"] = calls["n"], 0
    params, rows = _fit_rloo(tmp_path / "fused", True, peft)
    assert separate_calls == 6 and calls["n"] == 3  # 3 batches: policy + reference, reference only
    assert len(rows) == len(ref_rows) == 3
    for key in ("objective/score", "objective/kl", "policy/seq_logprob", "policy/grad_norm"):
        got, want = [float(r[key]) for r in rows], [float(r[key]) for r in ref_rows]
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6), key
    assert params.keys() == ref_params.keys()
    for n, p in params.items():
        torch.testing.assert_close(p, ref_params[n], rtol=1e-5, atol=1e-6, msg=n)


def test_rloo_advantage_normalisation(tiny_lm):
    from alignlab.modules.rloo import RLOOModule
    from alignlab.rewards.base import CharFractionReward

    def module(norm, k=2):
        return RLOOModule(
            tiny_lm.model, tiny_lm.tokenizer, reward=CharFractionReward(), k=k, normalize_advantages=norm
        )

    rewards = torch.tensor([1.0, 3.0, 0.0, 0.5])  # two prompts, k=2
    loo = torch.tensor([-2.0, 2.0, -0.5, 0.5])  # r_i minus the other sample
    assert module(False).advantages(rewards).tolist() == loo.tolist()
    batch = module(True).advantages(rewards)
    torch.testing.assert_close(batch, loo / loo.std())
    torch.testing.assert_close(module("batch").advantages(rewards), batch)
    group = module("group").advantages(rewards)  # each pair {-a, a} has std a * sqrt(2)
    s = 2**0.5
    torch.testing.assert_close(group, torch.tensor([-1 / s, 1 / s, -1 / s, 1 / s]))
    with pytest.raises(ValueError, match="choose false, true, batch or group"):
        module("prompt")
    with pytest.raises(ValueError, match="needs algo.k >= 2"):
        RLOOModule(
            tiny_lm.model,
            tiny_lm.tokenizer,
            reward=CharFractionReward(),
            k=1,
            baseline="ema",
            normalize_advantages="group",
        )


def test_fused_forward_refuses_dropout(tiny_lm):
    from alignlab.modules.rloo import RLOOModule
    from alignlab.rewards.base import CharFractionReward

    drop = next(m for m in tiny_lm.model.modules() if isinstance(m, torch.nn.Dropout))
    drop.p = 0.1
    with pytest.raises(ValueError, match="dropout-free policy"):
        RLOOModule(tiny_lm.model, tiny_lm.tokenizer, reward=CharFractionReward(), fused_forward=True)
    RLOOModule(tiny_lm.model, tiny_lm.tokenizer, reward=CharFractionReward())  # the default is unaffected


@pytest.mark.parametrize("fused", [False, True])
def test_rloo_shared_prompt_matches_per_row_forward(tmp_path, monkeypatch, fused):
    """algo.share_prompt runs each prompt once per group of k samples in the policy and reference
    forwards: the same KL, rewards and updates as one row per sample."""
    import alignlab.models.completion as completion

    calls = {"grouped": 0}
    inner = completion.grouped_completion_logits

    def counting(*a, **kw):
        out = inner(*a, **kw)
        calls["grouped"] += out is not None
        return out

    monkeypatch.setattr(completion, "grouped_completion_logits", counting)
    ref_params, ref_rows = _fit_rloo(tmp_path / "rows", fused, "lora", ["algo.share_prompt=false"])
    assert calls["grouped"] == 0
    params, rows = _fit_rloo(tmp_path / "shared", fused, "lora", ["algo.share_prompt=true"])
    assert calls["grouped"] == (6 if fused else 9)  # per batch: reference, update (+ pi_old unless fused)
    for key in ("objective/score", "objective/kl", "policy/seq_logprob", "policy/grad_norm"):
        got, want = [float(r[key]) for r in rows], [float(r[key]) for r in ref_rows]
        assert got == pytest.approx(want, rel=1e-4, abs=1e-5), key
    for n, p in params.items():
        torch.testing.assert_close(p, ref_params[n], rtol=1e-4, atol=1e-5, msg=n)


def test_rloo_lean_lora_sampling_trains_the_same(tmp_path, monkeypatch):
    """algo.lean_lora_sampling decodes through minimal LoRA modules instead of peft's wrappers: the same
    rollouts (same seed, same function), hence the same training."""
    import alignlab.models.peft as peft_mod

    swaps = {"n": 0}
    inner = peft_mod._LeanLoraLinear.__init__

    def counting(self, *a, **kw):
        swaps["n"] += 1
        inner(self, *a, **kw)

    monkeypatch.setattr(peft_mod._LeanLoraLinear, "__init__", counting)
    ref_params, ref_rows = _fit_rloo(tmp_path / "peft", True, "lora", ["algo.lean_lora_sampling=false"])
    assert swaps["n"] == 0
    params, rows = _fit_rloo(tmp_path / "lean", True, "lora", ["algo.lean_lora_sampling=true"])
    assert swaps["n"] > 0  # the lean path was taken
    for key in ("objective/score", "objective/kl", "policy/seq_logprob", "completion/length"):
        got, want = [float(r[key]) for r in rows], [float(r[key]) for r in ref_rows]
        assert got == pytest.approx(want, rel=1e-4, abs=1e-5), key
    for n, p in params.items():
        torch.testing.assert_close(p, ref_params[n], rtol=1e-4, atol=1e-5, msg=n)

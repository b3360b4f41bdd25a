"""PPO: the tiny policy learns a toy reward; the checkpoint holds what a resumed run needs; LoRA with a
separate value adapter trains adapters only; the bundled SmolLM2 runs a couple of steps (slow)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from alignlab.train import train
from conftest import compose


def _series(run_dir: Path, key: str) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


def test_ppo_tiny_raises_score_and_writes_artifacts(tmp_path):
    cfg = compose(
        [
            "experiment=ppo_tiny",
            f"paths.output_dir={tmp_path}",
            "trainer.enable_progress_bar=false",
            "trainer.log_every_n_steps=1",
            "algo.kl_target=3.0",
            "algo.kl_horizon=200",
            "algo.reward_normalize=true",
            "trainer.max_steps=80",
            "callbacks.checkpoint.every_n_train_steps=40",
        ]
    )
    metrics, objs = train(cfg)
    scores = _series(tmp_path, "objective/score")
    assert len(scores) >= 8
    first, last = sum(scores[:3]) / 3, sum(scores[-3:]) / 3
    # a random byte model writes ~10% lowercase letters; PPO must raise that clearly
    assert last > first + 0.2, scores
    for key in (
        "objective/kl",
        "objective/kl_coef",
        "objective/entropy",
        "policy/clipfrac",
        "policy/approx_kl",
        "value/loss",
        "value/explained_variance",
        "completion/length",
        "val/score",
        "val/kl",
    ):
        assert key in metrics, key
    assert metrics["objective/kl_coef"] != pytest.approx(0.01)  # the adaptive controller moved it
    assert (tmp_path / "policy" / "config.json").exists() and (tmp_path / "metrics.json").exists()
    assert list((tmp_path / "samples").glob("rollouts_*.jsonl"))

    # the checkpoint holds KL controller, running reward statistics, optimiser and RNG state
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    module = objs["module"]
    assert ckpt["rl_state"]["kl_controller"]["value"] == pytest.approx(module.kl_ctl.value)
    assert ckpt["rl_state"]["reward"]["moments"]["count"] == module.reward_fn.moments.count > 0
    assert ckpt["optimizer_states"][0]["state"]
    assert {"torch", "python", "numpy"} <= set(ckpt["rng_state"])
    assert any(k.startswith("value_head.") for k in ckpt["state_dict"])
    assert not any(k.startswith("ref_model.") for k in ckpt["state_dict"])

    # resuming restores them and continues
    cfg2 = compose(
        [
            "experiment=ppo_tiny",
            f"paths.output_dir={tmp_path / 'resumed'}",
            "logger=none",
            "trainer.enable_progress_bar=false",
            "algo.kl_target=3.0",
            "algo.kl_horizon=200",
            "algo.reward_normalize=true",
            "trainer.max_steps=84",
            "trainer.val_check_interval=1000",
            f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}",
            "~callbacks.checkpoint",
        ]
    )
    seen = {}

    from alignlab.modules.ppo import PPOModule

    original = PPOModule.load_rl_state

    def spy(self, state):
        original(self, state)
        seen["kl"], seen["count"] = self.kl_ctl.value, self.reward_fn.moments.count

    PPOModule.load_rl_state = spy
    try:
        _, objs2 = train(cfg2)
    finally:
        PPOModule.load_rl_state = original
    assert seen["kl"] == pytest.approx(ckpt["rl_state"]["kl_controller"]["value"])
    assert seen["count"] == ckpt["rl_state"]["reward"]["moments"]["count"]
    assert objs2["trainer"].global_step == 84
    assert objs2["module"].reward_fn.moments.count > seen["count"]


def test_ppo_lora_separate_value_adapter(tmp_path, tiny_lm):
    from alignlab.models import LoraSpec, apply_peft
    from alignlab.modules.ppo import PPOModule
    from alignlab.rewards.base import CharFractionReward

    base = {n: p.clone() for n, p in tiny_lm.model.named_parameters()}
    policy = apply_peft(tiny_lm.model, LoraSpec(r=4, alpha=8))
    module = PPOModule(
        policy,
        tiny_lm.tokenizer,
        reward=CharFractionReward("abc"),
        value_model="separate",
        max_new_tokens=4,
        ppo_epochs=1,
        num_minibatches=1,
        log_samples_every=0,
    )
    assert module.ref_model.kind == "adapter"  # the reference is the adapter switched off, not a copy
    assert not list(module.ref_model.parameters())
    value_params = [p for n, p in policy.named_parameters() if ".value." in n]
    assert value_params and all(p.requires_grad for p in value_params)
    cfg = compose(
        [
            "experiment=ppo_tiny",
            "peft=lora",
            f"paths.output_dir={tmp_path}",
            "logger=none",
            "callbacks=none",
            "trainer.max_steps=2",
            "trainer.val_check_interval=1000",
            "trainer.enable_progress_bar=false",
        ]
    )
    import lightning as L
    from hydra.utils import instantiate

    dm = instantiate(cfg.data, tokenizer=tiny_lm.tokenizer)
    trainer = L.Trainer(
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        accelerator="cpu",
        enable_model_summary=False,
    )
    before = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    trainer.fit(module, datamodule=dm)
    moved = {n for n, p in policy.named_parameters() if n in before and not torch.equal(p, before[n])}
    assert any(".value." in n for n in moved) and any(".default." in n for n in moved), sorted(moved)[:5]
    for n, p in policy.named_parameters():  # base weights never move
        if "lora_" not in n:
            key = n.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(p, base[key]), n
    out = module.save_policy(tmp_path / "policy")
    assert (out / "adapter_config.json").exists() and not (out / "value").exists()


def test_ppo_config_errors(tiny_lm):
    from alignlab.modules.ppo import PPOModule
    from alignlab.rewards.base import CharFractionReward

    with pytest.raises(ValueError, match="algo.reward is required"):
        PPOModule(tiny_lm.model, tiny_lm.tokenizer)
    with pytest.raises(ValueError, match="shared or separate"):
        PPOModule(tiny_lm.model, tiny_lm.tokenizer, reward=CharFractionReward(), value_model="both")
    with pytest.raises(ValueError, match="k1, k2 or k3"):
        PPOModule(tiny_lm.model, tiny_lm.tokenizer, reward=CharFractionReward(), kl_estimator="k9")


@pytest.mark.parametrize(
    "name", ["ppo_tiny", "rloo_tiny", "reward_tiny", "reward_sentiment", "ppo_sentiment", "rloo_sentiment"]
)
def test_experiments_compose(name):
    cfg = compose([f"experiment={name}"])
    assert cfg.algo._target_.startswith("alignlab.modules.")


@pytest.mark.slow
def test_ppo_smollm2_lora_two_steps(tmp_path):
    cfg = compose(
        [
            "experiment=ppo_tiny",
            "model=smollm2_135m",
            "peft=lora",
            f"paths.output_dir={tmp_path}",
            "logger=none",
            "trainer.enable_progress_bar=false",
            "data.batch_size=4",
            "algo.max_new_tokens=8",
            "algo.ppo_epochs=1",
            "algo.num_minibatches=1",
            "algo.kl_target=2.0",
            "algo.optimizer.lr=1e-4",
            "trainer.max_steps=2",
            "trainer.val_check_interval=1000",
            "data.limit=12",
            "callbacks.checkpoint.every_n_train_steps=2",
        ]
    )
    metrics, objs = train(cfg)
    assert objs["trainer"].global_step == 2 and objs["module"].ref_model.kind == "adapter"
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert "kl_controller" in ckpt["rl_state"] and ckpt["optimizer_states"]
    assert all("lora_" in k or k.startswith("value_head.") for k in ckpt["state_dict"])
    assert (tmp_path / "policy" / "adapter_config.json").exists()
    assert metrics["objective/kl"] == metrics["objective/kl"]  # finite, not NaN


@pytest.mark.parametrize("peft,value_model", [("none", "shared"), ("lora", "separate")])
def test_ppo_fused_forward_matches_separate_forwards(tmp_path, monkeypatch, peft, value_model):
    """With one update per rollout batch, fused_forward takes pi_old's log-probs and the rollout values
    from the update's own forward: the same KL, advantages and updates as the separate no-grad forwards
    (policy log-probs, values), which it skips."""
    import alignlab.modules.rollout as rollout

    calls = {"n": 0}
    inner = rollout.completion_logprobs

    def counting(*a, **kw):
        calls["n"] += 1
        return inner(*a, **kw)

    monkeypatch.setattr(rollout, "completion_logprobs", counting)

    def fit(out: Path, fused: bool):
        over = [
            "experiment=ppo_tiny",
            f"peft={peft}",
            f"algo.value_model={value_model}",
            f"paths.output_dir={out}",
            "trainer.enable_progress_bar=false",
            "trainer.log_every_n_steps=1",
            "trainer.max_steps=3",
            "trainer.val_check_interval=1000",
            "++trainer.limit_val_batches=0",
            "callbacks=none",
            "algo.ppo_epochs=1",
            "algo.num_minibatches=1",
            "algo.log_samples_every=0",
            f"++algo.fused_forward={str(fused).lower()}",
        ]
        calls["n"] = 0
        _, objs = train(compose(over))
        m = objs["module"]
        params = {n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad}
        with open(out / "csv" / "metrics.csv") as f:
            rows = [r for r in csv.DictReader(f) if r.get("objective/kl")]
        return params, rows, calls["n"]

    ref_params, ref_rows, ref_calls = fit(tmp_path / "separate", False)
    params, rows, fused_calls = fit(tmp_path / "fused", True)
    assert (ref_calls, fused_calls) == (6, 3)  # policy + reference per batch, then the reference only
    assert len(rows) == len(ref_rows) == 3
    keys = ("objective/kl", "objective/score", "policy/pg_loss", "value/loss", "value/mean", "policy/ratio")
    for key in keys:
        got, want = [float(r[key]) for r in rows], [float(r[key]) for r in ref_rows]
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6), key
    assert [float(r["policy/ratio"]) for r in rows] == pytest.approx([1.0] * 3)
    assert params.keys() == ref_params.keys()
    for n, p in params.items():
        torch.testing.assert_close(p, ref_params[n], rtol=1e-5, atol=1e-6, msg=n)


def test_ppo_fused_forward_needs_one_update(tiny_lm):
    from alignlab.modules.ppo import PPOModule
    from alignlab.rewards.base import CharFractionReward

    with pytest.raises(ValueError, match="algo.ppo_epochs=1 and algo.num_minibatches=1"):
        PPOModule(tiny_lm.model, tiny_lm.tokenizer, reward=CharFractionReward(), fused_forward=True)
    m = PPOModule(
        tiny_lm.model,
        tiny_lm.tokenizer,
        reward=CharFractionReward(),
        fused_forward=True,
        ppo_epochs=1,
        num_minibatches=1,
    )
    assert m.fused_forward


def test_rl_state_is_computed_from_every_rank(tiny_lm):
    """Under DDP the running reward statistics and the adaptive KL coefficient come from all ranks' rollouts
    (gathered), so every rank keeps the same state; here a second rank is simulated by ``all_gather``."""
    from types import SimpleNamespace

    from alignlab.modules.ppo import PPOModule
    from alignlab.rewards.base import CharFractionReward

    def make():
        return PPOModule(
            tiny_lm.model,
            tiny_lm.tokenizer,
            reward=CharFractionReward("abc"),
            reward_normalize=True,
            kl_target=1.0,
            kl_horizon=100,
            max_new_tokens=4,
            log_samples_every=0,
        )

    single, two = make(), make()
    # rank 1's tensors: rank 0's plus 1 (scores, KL), as all_gather stacks them: (world, N, ...)
    two._trainer = SimpleNamespace(world_size=2)
    two.all_gather = lambda x: torch.stack([x, x + 1])
    x = torch.tensor([0.1, 0.4, 0.2])
    assert torch.equal(single.across_ranks(x), x)
    assert torch.equal(two.across_ranks(x), torch.cat([x, x + 1]))

    torch.manual_seed(0)
    prompt_ids = [tiny_lm.tokenizer("ab").input_ids] * 3
    r = two.collect_rollouts(prompt_ids, ["ab"] * 3)
    both = torch.cat([r.raw_scores, r.raw_scores + 1]).double()
    assert two.reward_fn.moments.count == 6
    assert two.reward_fn.moments.mean == pytest.approx(both.mean().item())
    assert r.scores == pytest.approx(((r.raw_scores - both.mean()) / both.std()).float(), abs=1e-5)

    r.kl = torch.full_like(r.response_mask, 0.5) * r.response_mask
    two.update_kl_controller(r)
    single.update_kl_controller(SimpleNamespace(kl=torch.cat([r.kl, r.kl + r.response_mask])))
    assert two.kl_ctl.value == pytest.approx(single.kl_ctl.value) and two.kl_ctl.value != 0.05

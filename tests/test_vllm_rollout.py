"""PPO and RLOO with ``algo.rollout.engine=vllm`` end to end against the stand-in server (tests/fake_vllm.py,
the tiny model behind vLLM's routes): every update reaches the server, the engine/trainer gap is measured,
and truncated importance weights enter the loss. Plus the weighted PPO surrogate in closed form."""

from __future__ import annotations

import pytest
import torch

from alignlab.losses.rl import pg_loss
from alignlab.models import ModelSpec
from conftest import compose
from fake_vllm import FakeVLLM


def fit(tmp_path, base_url: str, algo: str = "rloo", extra: list[str] = ()):
    from alignlab.train import train

    over = [
        f"experiment={algo}_tiny",
        "peft=lora",
        f"paths.output_dir={tmp_path}",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        "trainer.max_steps=3",
        "trainer.val_check_interval=1000",
        "++trainer.limit_val_batches=0",
        "callbacks=none",
        "logger=none",
        "algo.log_samples_every=0",
        "algo.rollout.engine=vllm",
        f"algo.rollout.base_url={base_url}",
        f"algo.rollout.sync_dir={tmp_path / 'sync'}",
        "optimized_metric=null",
        *extra,
    ]
    return train(compose(over))


def lora_state(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.policy.named_parameters() if "lora_" in n}


@pytest.mark.parametrize("algo", ["rloo", "rloo_fused", "ppo"])
def test_training_through_the_engine_syncs_every_update(tmp_path, algo):
    lm = ModelSpec(source="tiny", dtype="float32").load()
    extra = ["algo.ppo_epochs=1", "algo.num_minibatches=1"] if algo == "ppo" else []
    if algo == "rloo_fused":  # pi_old from the update's own forward: corrected once it is known
        algo, extra = "rloo", ["++algo.fused_forward=true"]
    with FakeVLLM(lm.model, lm.tokenizer) as fake:
        metrics, objs = fit(tmp_path, fake.base_url, algo, extra)
        loads = [b["lora_name"] for p, b in fake.calls if p == "/v1/load_lora_adapter"]
        completions = [b for p, b in fake.calls if p == "/v1/completions"]
    module = objs["module"]
    assert len(completions) == 3  # every rollout batch sampled by the server
    # a new adapter per rollout batch, named after the optimiser step it holds
    assert loads == [f"alignlab-base-lora-{v}" for v in (0, 1, 2)]
    assert module.rollout_engine.syncs == 3
    # the server sampled the trainer's own policy: the trainer's recomputed pi_old agrees (fp32 both)
    assert metrics["rollout/engine_logp_gap"] < 1e-4
    assert metrics["rollout/is_weight_mean"] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("algo", ["rloo", "ppo"])
def test_truncated_importance_weights_scale_the_policy_gradient(tmp_path, algo):
    """The engine reports log-probs 1 nat below the trainer's: every weight exp(1) is capped at 2, so with
    plain SGD and no clipping the first update is exactly twice the uncorrected one (PPO: ratio 1 at the
    first update, no value loss)."""
    lm = ModelSpec(source="tiny", dtype="float32").load()
    sgd = ["algo.optimizer._target_=torch.optim.SGD", "algo.optimizer.lr=0.5", "algo.max_grad_norm=null"]
    one_step = ["trainer.max_steps=1", *sgd]
    if algo == "ppo":
        one_step += ["algo.ppo_epochs=1", "algo.num_minibatches=1", "algo.vf_coef=0.0"]
    deltas, gaps = {}, {}
    for cap in ("null", "2.0"):
        with FakeVLLM(lm.model, lm.tokenizer, logprob_noise=-1.0) as fake:
            torch.manual_seed(0)
            metrics, objs = fit(
                tmp_path / cap, fake.base_url, algo, [*one_step, f"algo.rollout.tis_cap={cap}"]
            )
        after = lora_state(objs["module"])
        # LoRA A starts random, B at zero: the first update moves B only
        deltas[cap] = torch.cat([v.flatten() for n, v in after.items() if "lora_B" in n])
        gaps[cap] = metrics["rollout/engine_logp_gap"]
    assert gaps["null"] == pytest.approx(1.0, abs=1e-3) and gaps["2.0"] == pytest.approx(1.0, abs=1e-3)
    assert deltas["null"].abs().max() > 0
    torch.testing.assert_close(deltas["2.0"], 2 * deltas["null"], rtol=1e-4, atol=1e-7)


def test_weighted_ppo_surrogate_closed_form():
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    old = torch.tensor([[-1.0, -1.0, -0.5]])
    adv = torch.tensor([[1.0, 1.0, -2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # ratios 1, e^-1 (inside [0.8, 1.2]? no: clipped to 0.8 but max(-A r, -A clip) takes -e^-1 vs -0.8)
    plain = pg_loss(logp, old, adv, mask, 0.2)
    per_token = torch.tensor([-1.0, max(-torch.exp(torch.tensor(-1.0)).item(), -0.8)])
    assert plain.pg_loss.item() == pytest.approx(per_token.mean().item())
    w = torch.tensor([[2.0, 0.5, 7.0]])
    weighted = pg_loss(logp, old, adv, mask, 0.2, weights=w)
    assert weighted.pg_loss.item() == pytest.approx(((per_token * w[0, :2]).sum() / 2).item())


@pytest.mark.slow  # two 40-update runs: about 100 s here
def test_rloo_learns_through_the_engine_as_it_does_in_process(tmp_path):
    """The tiny RLOO run of test_rloo.py (full fine-tuning: the weights reloaded on the server every step)
    raises the toy reward through the engine as it does with in-process sampling."""
    import csv

    from alignlab.train import train

    def scores(run_dir) -> list[float]:
        with open(run_dir / "csv" / "metrics.csv") as f:
            return [float(r["objective/score"]) for r in csv.DictReader(f) if r.get("objective/score")]

    over = [
        "experiment=rloo_tiny",
        "reward@algo.reward=char_fraction",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        "trainer.max_steps=40",
        "callbacks=none",
        "optimized_metric=null",
        "++trainer.limit_val_batches=0",
    ]
    lm = ModelSpec(source="tiny", dtype="float32").load()
    with FakeVLLM(lm.model, lm.tokenizer) as fake:
        engine_run = [f"algo.rollout.base_url={fake.base_url}", "algo.rollout.engine=vllm"]
        train(compose([*over, f"paths.output_dir={tmp_path / 'vllm'}", *engine_run]))
        reloads = [p for p, _ in fake.calls if p == "/collective_rpc"]
    train(compose([*over, f"paths.output_dir={tmp_path / 'hf'}"]))
    assert len(reloads) == 40  # full weights to the server before every rollout batch
    gains = {}
    for engine in ("vllm", "hf"):
        s = scores(tmp_path / engine)
        assert len(s) == 40
        gains[engine] = sum(s[-5:]) / 5 - sum(s[:5]) / 5
    print("score gain over 40 updates (last 5 - first 5):", gains)
    assert gains["vllm"] > 0.15 and gains["hf"] > 0.15, gains


def test_vllm_engine_refuses_multi_process_training(tiny_lm):
    from types import SimpleNamespace

    from alignlab.models.vllm_engine import RolloutSpec
    from alignlab.modules.rloo import RLOOModule
    from alignlab.rewards.base import CharFractionReward

    spec = RolloutSpec(engine="vllm", base_url="http://127.0.0.1:9/v1")
    module = RLOOModule(tiny_lm.model, tiny_lm.tokenizer, reward=CharFractionReward(), k=2, rollout=spec)
    module._trainer = SimpleNamespace(world_size=2)
    with pytest.raises(ValueError, match="trainer.devices=1"):
        module.setup("fit")
    module._trainer = SimpleNamespace(world_size=1)
    module.setup("fit")  # one process: fine
    assert (
        RLOOModule(tiny_lm.model, tiny_lm.tokenizer, reward=CharFractionReward(), k=2).rollout_engine is None
    )

"""PPO's implementation details (issue 28, item 4), each a switch of conf/algo/ppo.yaml that is off by default:
the KL penalty per token or at the sequence end, reward whitening per rollout batch, a value warm-up, the
value function initialised from the reward model, several minibatches per rollout batch. The math against
hand-computed tensors; the wiring on the tiny model."""

from __future__ import annotations

import pytest
import torch

import alignlab.modules.ppo as ppo_module
from alignlab.losses import rl
from alignlab.train import train
from conftest import compose


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


# -- the math ------------------------------------------------------------------------------------------
def test_sequence_end_kl_moves_the_summed_penalty_to_the_last_token():
    scores, kl = t(2.0, 5.0), t([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    mask = t([1, 1, 0], [1, 1, 1])
    rewards, nsr = rl.token_rewards(scores, kl, mask, kl_coef=0.5, kl_penalty="sequence")
    # row 0: -0.5 * (0.1 + 0.2) = -0.15 on token 1 (the padded 0.3 is not counted); row 1: -0.5 * 1.5 = -0.75
    assert torch.allclose(nsr, t([0.0, -0.15, 0.0], [0.0, 0.0, -0.75]))
    assert torch.allclose(rewards, t([0.0, 1.85, 0.0], [0.0, 0.0, 4.25]))
    per_token, _ = rl.token_rewards(scores, kl, mask, kl_coef=0.5, kl_penalty="token")
    assert torch.allclose(per_token, t([-0.05, 1.9, 0.0], [-0.2, -0.25, 4.7]))  # today's default
    # the same total reward per sequence; with gamma = lam = 1 and zero values the advantage of token t is
    # the reward still to come: all of it under the sequence penalty, less the tokens already passed per token
    zero = torch.zeros_like(kl)
    adv_seq, _ = rl.compute_gae(rewards, zero, mask, gamma=1.0, lam=1.0)
    adv_tok, _ = rl.compute_gae(per_token, zero, mask, gamma=1.0, lam=1.0)
    assert torch.allclose(adv_seq, t([1.85, 1.85, 0.0], [4.25, 4.25, 4.25]))
    assert torch.allclose(adv_tok, t([1.85, 1.9, 0.0], [4.25, 4.45, 4.7]))
    with pytest.raises(ValueError, match="token or sequence"):
        rl.token_rewards(scores, kl, mask, 0.5, kl_penalty="end")


def test_reward_whitening_is_per_batch_unit_variance_mean_kept():
    x, mask = t([1.0, 3.0, 9.0], [2.0, 6.0, 4.0]), t([1, 1, 0], [1, 1, 1])
    # real tokens 1, 3, 2, 6, 4: mean 3.2, unbiased variance (4.84 + 0.04 + 1.44 + 7.84 + 0.64) / 4 = 3.7
    out = rl.masked_whiten(x, mask, shift_mean=False)
    sd = 3.7**0.5
    want = t(
        [(1 - 3.2) / sd + 3.2, (3 - 3.2) / sd + 3.2, 0.0], [(2 - 3.2) / sd + 3.2, (6 - 3.2) / sd + 3.2, 4.0]
    )
    want[1, 2] = (4 - 3.2) / sd + 3.2
    assert torch.allclose(out, want, atol=1e-6)


def test_value_warmup_loss_drops_the_policy_term():
    pg = torch.tensor(2.0, requires_grad=True)
    vl = torch.tensor(3.0, requires_grad=True)
    assert rl.ppo_total_loss(pg, vl, 0.1).item() == pytest.approx(2.3)
    warm = rl.ppo_total_loss(pg, vl, 0.1, critic_only=True)
    assert warm.item() == pytest.approx(0.3)  # the value term at the same scale as after the warm-up
    warm.backward()
    assert pg.grad is None and vl.grad.item() == pytest.approx(0.1)


# -- the wiring on the tiny model ----------------------------------------------------------------------
def _fit(tmp_path, *extra: str, max_steps: int = 2):
    cfg = compose(
        [
            "experiment=ppo_tiny",
            f"paths.output_dir={tmp_path}",
            "logger=none",
            "callbacks=none",
            "trainer.enable_progress_bar=false",
            f"trainer.max_steps={max_steps}",
            "trainer.val_check_interval=1000",
            "++trainer.limit_val_batches=0",
            "algo.ppo_epochs=1",
            "algo.num_minibatches=1",
            "algo.log_samples_every=0",
            *extra,
        ]
    )
    return train(cfg)[1]


def _spy_gae(monkeypatch) -> list:
    seen = []
    inner = ppo_module.compute_gae

    def spy(rewards, values, mask, gamma, lam):
        seen.append((rewards.detach().clone(), mask.detach().clone()))
        return inner(rewards, values, mask, gamma, lam)

    monkeypatch.setattr(ppo_module, "compute_gae", spy)
    return seen


def _last_token(mask: torch.Tensor) -> torch.Tensor:
    pos = torch.arange(mask.shape[1])
    return (pos * (mask > 0)).argmax(-1)


@pytest.mark.parametrize("penalty", ["token", "sequence"])
def test_kl_penalty_placement_reaches_gae(tmp_path, monkeypatch, penalty):
    seen = _spy_gae(monkeypatch)
    _fit(tmp_path, f"algo.kl_penalty={penalty}", "algo.kl_coef=0.5")
    rewards, mask = seen[-1]  # the second rollout batch: the policy has moved, so KL is not 0
    rows = torch.arange(mask.shape[0])
    before_last = rewards.clone()
    before_last[rows, _last_token(mask)] = 0.0
    if penalty == "sequence":
        assert torch.count_nonzero(before_last) == 0  # only the last real token carries a reward
    else:
        assert torch.count_nonzero(before_last) > 0  # every token carries its own -kl_coef * KL_t


@pytest.mark.parametrize("whiten", [False, True])
def test_reward_whitening_switch_reaches_gae(tmp_path, monkeypatch, whiten):
    seen = _spy_gae(monkeypatch)
    _fit(tmp_path, f"algo.whiten_rewards={str(whiten).lower()}", "algo.kl_coef=0.5", max_steps=1)
    rewards, mask = seen[0]
    var = rl.masked_var(rewards, mask).item()
    assert (var == pytest.approx(1.0, rel=1e-4)) is whiten


def _policy_params(module) -> dict:
    return {
        n: p.detach().clone()
        for n, p in module.named_parameters()
        if p.requires_grad and not n.startswith("value_head.")
    }


def test_value_warmup_trains_the_critic_only_then_the_policy(tmp_path):
    from hydra.utils import instantiate

    cfg = compose(["experiment=ppo_tiny", f"paths.output_dir={tmp_path}"])
    start = instantiate(cfg.model).load().model.state_dict()  # the deterministic tiny base
    objs = _fit(tmp_path / "warm", "algo.value_warmup_steps=2", max_steps=2)
    module = objs["module"]
    assert objs["trainer"].global_step == 2
    for n, p in module.policy.state_dict().items():  # two critic-only updates: the policy did not move
        assert torch.equal(p, start[n]), n
    assert module.value_warmup_steps == 2
    # the third update is a PPO update again
    moved = _fit(tmp_path / "after", "algo.value_warmup_steps=2", max_steps=3)["module"]
    assert any(not torch.equal(p, start[n]) for n, p in moved.policy.state_dict().items())


def test_value_warmup_off_moves_the_policy_at_once(tmp_path):
    from hydra.utils import instantiate

    cfg = compose(["experiment=ppo_tiny", f"paths.output_dir={tmp_path}"])
    start = instantiate(cfg.model).load().model.state_dict()
    module = _fit(tmp_path / "run", max_steps=1)["module"]
    assert any(not torch.equal(p, start[n]) for n, p in module.policy.state_dict().items())


def test_minibatches_and_epochs_per_rollout_batch(tmp_path, monkeypatch):
    """One rollout batch of 16 with ppo_epochs=2 and num_minibatches=4: 8 updates of 4 sequences each, every
    sequence once per epoch."""
    sizes, rollouts = [], []
    fwd = ppo_module.PPOModule.forward_policy_value
    collect = ppo_module.PPOModule.collect_rollouts

    def spy_fwd(self, qr, *a, **kw):
        sizes.append(qr.shape[0])
        return fwd(self, qr, *a, **kw)

    def spy_collect(self, *a, **kw):
        rollouts.append(1)
        return collect(self, *a, **kw)

    monkeypatch.setattr(ppo_module.PPOModule, "forward_policy_value", spy_fwd)
    monkeypatch.setattr(ppo_module.PPOModule, "collect_rollouts", spy_collect)
    objs = _fit(tmp_path, "algo.ppo_epochs=2", "algo.num_minibatches=4", "data.batch_size=16", max_steps=8)
    assert objs["trainer"].global_step == 8 and len(rollouts) == 1
    assert sizes == [4] * 8


# -- the value function initialised from the reward model ----------------------------------------------
@pytest.fixture(scope="module")
def reward_dirs(tmp_path_factory):
    out = {}
    for peft in ("none", "lora"):
        d = tmp_path_factory.mktemp(f"rm_{peft}")
        cfg = compose(
            [
                "experiment=reward_tiny",
                f"peft={peft}",
                f"paths.output_dir={d}",
                "logger=none",
                "callbacks=none",
                "trainer.max_steps=2",
                "trainer.val_check_interval=2",
                "trainer.enable_progress_bar=false",
            ]
        )
        train(cfg)
        out[peft] = str(d / "policy")
    return out


def _ppo(policy, tokenizer, reward, **kw):
    return ppo_module.PPOModule(policy, tokenizer, reward=reward, max_new_tokens=4, ppo_epochs=1,
                                num_minibatches=1, log_samples_every=0, **kw)  # fmt: skip


def _ids(tokenizer):
    ids = torch.tensor([tokenizer("The plot felt warm")["input_ids"]])
    return ids, torch.ones_like(ids)


@pytest.mark.parametrize("value_model", ["shared", "separate"])
def test_value_from_full_weight_reward_model(reward_dirs, tiny_lm, value_model):
    from alignlab.models.heads import last_hidden_state
    from alignlab.rewards.reward_model import RewardModelReward

    reward = RewardModelReward(reward_dirs["none"])
    module = _ppo(
        tiny_lm.model, tiny_lm.tokenizer, reward, value_model=value_model, value_init="reward_model"
    )
    for k, v in reward.head.state_dict().items():
        assert torch.equal(module.value_head.state_dict()[k], v), k
    if value_model == "separate":  # the value backbone is the reward model's, trainable
        ids, mask = _ids(tiny_lm.tokenizer)
        want = reward.head(last_hidden_state(reward.model, ids, mask))[:, :-1]
        got = module.separate_values(ids, mask, 1)
        torch.testing.assert_close(got, want)
        assert all(p.requires_grad for p in module.value_backbone.parameters())
    random = _ppo(tiny_lm.model, tiny_lm.tokenizer, reward, value_model=value_model)  # today's default
    assert not torch.equal(random.value_head.summary.weight, reward.head.summary.weight)


def test_value_adapter_from_lora_reward_model(reward_dirs, tiny_lm):
    from alignlab.models import LoraSpec, apply_peft
    from alignlab.models.heads import last_hidden_state
    from alignlab.rewards.reward_model import RewardModelReward

    reward = RewardModelReward(reward_dirs["lora"])
    policy = apply_peft(tiny_lm.model, LoraSpec(r=4, alpha=8))
    module = _ppo(policy, tiny_lm.tokenizer, reward, value_model="separate", value_init="reward_model")
    ids, mask = _ids(tiny_lm.tokenizer)
    # the value adapter and head compute the reward model's scores at every position
    want = reward.head(last_hidden_state(reward.model, ids, mask))[:, :-1]
    torch.testing.assert_close(module.separate_values(ids, mask, 1), want)
    value_params = [p for n, p in policy.named_parameters() if ".value." in n]
    assert value_params and all(p.requires_grad for p in value_params)


def test_value_init_errors(tiny_lm, reward_dirs):
    from alignlab.models import LoraSpec, apply_peft
    from alignlab.rewards.base import CharFractionReward
    from alignlab.rewards.reward_model import RewardModelReward

    with pytest.raises(ValueError, match="use reward=reward_model"):
        _ppo(tiny_lm.model, tiny_lm.tokenizer, CharFractionReward(), value_init="reward_model")
    with pytest.raises(ValueError, match="random or reward_model"):
        _ppo(tiny_lm.model, tiny_lm.tokenizer, CharFractionReward(), value_init="sft")
    with pytest.raises(ValueError, match="token or sequence"):
        _ppo(tiny_lm.model, tiny_lm.tokenizer, CharFractionReward(), kl_penalty="end")
    with pytest.raises(ValueError, match="value_warmup_steps must be >= 0"):
        _ppo(tiny_lm.model, tiny_lm.tokenizer, CharFractionReward(), value_warmup_steps=-1)
    policy = apply_peft(tiny_lm.model, LoraSpec(r=4, alpha=8))
    with pytest.raises(ValueError, match="needs a LoRA reward model"):
        _ppo(policy, tiny_lm.tokenizer, RewardModelReward(reward_dirs["none"]), value_model="separate",
             value_init="reward_model")  # fmt: skip

"""PPO with a KL penalty to the reference (``algo=ppo``; Ziegler et al. 2019, Ouyang et al. 2022).

Manual optimisation: each training step is one batch of rollouts followed by several PPO epochs over
minibatches. ``trainer.max_steps`` counts optimiser updates (= iterations x ppo_epochs x num_minibatches).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from alignlab.losses.rl import (
    compute_gae,
    explained_variance,
    masked_mean,
    masked_whiten,
    pg_loss,
    ppo_total_loss,
    token_rewards,
    vf_loss,
)
from alignlab.models.completion import forward_completion
from alignlab.models.heads import ScalarHead, hidden_size, last_hidden_state
from alignlab.models.logprobs import gather_logprobs
from alignlab.models.peft import active_adapter, is_peft
from alignlab.models.value_init import VALUE_INITS
from alignlab.modules.rollout import OnlineRLModule
from alignlab.utils.errors import ConfigError

VALUE_ADAPTER = "value"


class PPOModule(OnlineRLModule):
    """PPO-clip with GAE from a value head; logs objective/*, policy/*, value/* and completion/*."""

    def __init__(
        self,
        policy,
        tokenizer,
        optimizer=None,
        scheduler=None,
        ppo_epochs: int = 4,
        num_minibatches: int = 2,
        cliprange: float = 0.2,
        cliprange_value: float = 0.2,
        vf_coef: float = 0.1,
        gamma: float = 1.0,
        lam: float = 0.95,
        whiten_rewards: bool = False,
        value_model: str = "shared",
        value_init: str = "random",
        value_warmup_steps: int = 0,
        kl_penalty: str = "token",
        **rollout_kwargs,
    ):
        """
        Args:
            policy: the causal LM being trained (LoRA-wrapped or not).
            tokenizer: its tokenizer.
            optimizer: partial optimiser factory taking ``params`` (policy and value parameters together).
            scheduler: partial scheduler factory taking ``optimizer``, stepped once per optimiser update.
            ppo_epochs: passes over each batch of rollouts.
            num_minibatches: optimiser updates per pass (the rollout batch is split this many ways).
            cliprange: epsilon of the clipped policy surrogate.
            cliprange_value: how far a value prediction may move from its rollout value before clipping.
            vf_coef: weight of the value loss in the total loss.
            gamma: discount factor of GAE.
            lam: lambda of GAE.
            whiten_rewards: whiten the per-token rewards of each rollout batch (unit variance over its
                real tokens, mean kept) before GAE.
            value_model: ``shared`` (value head on the policy's last hidden state) or ``separate`` (its own
                backbone: a second LoRA adapter under LoRA, a trainable copy under full fine-tuning).
            value_init: ``random`` (a fresh head, the separate backbone a copy of the policy) or
                ``reward_model`` (InstructGPT: copied from the reward model of ``reward=reward_model``; with
                ``value_model=shared`` the head only, see ``alignlab.models.value_init``).
            value_warmup_steps: the first this many optimiser updates train the value function only (the
                policy term is dropped and a shared head reads detached hidden states, so the policy does
                not move); they count in ``trainer.max_steps`` like every update.
            kl_penalty: ``token`` (-kl_coef * KL_t on every completion token) or ``sequence`` (the summed
                penalty on the last token, beside the score).
            **rollout_kwargs: reward, sampling, KL and logging settings (see ``OnlineRLModule``).
        """
        super().__init__(policy, tokenizer, optimizer, scheduler, **rollout_kwargs)
        if value_model not in ("shared", "separate"):
            raise ConfigError(f"algo.value_model={value_model!r}: choose shared or separate")
        if value_init not in VALUE_INITS:
            raise ConfigError(f"algo.value_init={value_init!r}: choose {' or '.join(VALUE_INITS)}")
        if kl_penalty not in ("token", "sequence"):
            raise ConfigError(f"algo.kl_penalty={kl_penalty!r}: choose token or sequence")
        if value_warmup_steps < 0:
            raise ConfigError(f"algo.value_warmup_steps must be >= 0 (got {value_warmup_steps})")
        if ppo_epochs < 1 or num_minibatches < 1:
            raise ConfigError(
                f"algo.ppo_epochs ({ppo_epochs}) and algo.num_minibatches ({num_minibatches}) must be >= 1"
            )
        if self.fused_forward and (ppo_epochs, num_minibatches) != (1, 1):
            raise ConfigError(
                f"algo.fused_forward=true needs one update per rollout batch: algo.ppo_epochs=1 and "
                f"algo.num_minibatches=1 (got {ppo_epochs} and {num_minibatches})"
            )
        self.ppo_epochs, self.num_minibatches = ppo_epochs, num_minibatches
        self.cliprange, self.cliprange_value, self.vf_coef = cliprange, cliprange_value, vf_coef
        self.gamma, self.lam, self.whiten_rewards = gamma, lam, whiten_rewards
        self.value_model, self.value_init = value_model, value_init
        self.value_warmup_steps, self.kl_penalty = value_warmup_steps, kl_penalty
        self.value_head = ScalarHead(hidden_size(policy))
        self.value_backbone = None
        rm = None
        if value_init == "reward_model":  # InstructGPT: the value function starts as the reward model
            from alignlab.models import value_init as vi

            rm = vi.reward_model_parts(rollout_kwargs.get("reward"))
            vi.check_compatible(policy, *rm)
            vi.copy_head(self.value_head, rm[1])
        if value_model == "separate":
            if is_peft(policy):  # a second adapter on the same frozen base
                if rm is not None:
                    vi.copy_adapter(policy, rm[0], VALUE_ADAPTER)
                else:
                    policy.add_adapter(
                        VALUE_ADAPTER, copy.deepcopy(policy.peft_config[policy.active_adapter])
                    )
                for n, p in policy.named_parameters():
                    if f".{VALUE_ADAPTER}." in n:
                        p.requires_grad_(True)
            elif rm is not None:
                self.value_backbone = vi.backbone_copy(rm[0], policy)
            else:
                self.value_backbone = copy.deepcopy(policy).train().requires_grad_(True)

    # -- values -----------------------------------------------------------------------------------------
    def separate_values(self, qr: torch.Tensor, attn: torch.Tensor, ctx: int) -> torch.Tensor:
        position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
        if self.value_backbone is not None:
            hidden = last_hidden_state(self.value_backbone, qr, attn, position_ids)
        else:
            with active_adapter(self.policy, VALUE_ADAPTER):
                hidden = last_hidden_state(self.policy, qr, attn, position_ids)
        return self.value_head(hidden[:, ctx - 1 : -1])  # (B, L)

    def forward_policy_value(self, qr, attn, ctx, responses, critic_only: bool = False):
        """log-probs (B, L), values (B, L) and logits (B, L, V) of one minibatch, with gradient (a shared
        value head reads detached hidden states when ``critic_only``: the value loss cannot move the policy)."""
        shared = self.value_model == "shared"
        logits, hidden = forward_completion(
            self.policy, qr, attn, ctx, self.sampling.temperature, with_hidden=shared
        )
        if shared:
            values = self.value_head(hidden.detach() if critic_only else hidden)
        else:
            values = self.separate_values(qr, attn, ctx)
        return gather_logprobs(logits, responses), values, logits

    @torch.no_grad()
    def rollout_values(self, qr, attn, ctx) -> torch.Tensor:
        if self.value_model == "separate":
            return self.separate_values(qr, attn, ctx)
        chunk = self.forward_batch_size or qr.shape[0]
        out = []
        for i in range(0, qr.shape[0], chunk):
            _, hidden = forward_completion(
                self.policy, qr[i : i + chunk], attn[i : i + chunk], ctx, with_hidden=True
            )
            out.append(self.value_head(hidden))
        return torch.cat(out)

    # -- one PPO iteration ------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> None:
        # 1. rollouts, 2. scores, 3. policy / reference log-probs and per-token KL (no gradient; with
        # fused_forward the policy's log-probs and values come from the one gradient forward instead)
        fused = self.fused_forward
        r = self.collect_rollouts(batch["prompt_ids"], batch["prompt"], policy_logprobs=not fused)
        mask = r.response_mask  # (B, L)
        n = len(r.prompts)
        if fused:  # the single update's forward, before the update: log-probs and values of pi_old
            perm = torch.randperm(n, device=self.device)  # the same draw as the minibatch loop makes
            fwd = self.forward_policy_value(
                r.query_responses[perm],
                r.attention_mask[perm],
                r.context_length,
                r.responses[perm],
                critic_only=self.global_step < self.value_warmup_steps,
            )
            inverse = torch.argsort(perm)
            self.set_policy_logprobs(r, fwd[0][inverse])
            values = fwd[1].detach()[inverse] * mask
        else:
            values = self.rollout_values(r.query_responses, r.attention_mask, r.context_length) * mask
        # 4. per-token reward: the score on the last token plus -kl_coef * KL (per token, or summed at the end)
        rewards, _ = token_rewards(r.scores, r.kl, mask, self.kl_ctl.value, self.kl_penalty)
        if self.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        # 5. GAE advantages and returns from the value head
        advantages, returns = compute_gae(rewards, values, mask, self.gamma, self.lam)
        # 6. whiten advantages
        advantages = masked_whiten(advantages, mask)
        # 7. several PPO epochs over minibatches: clipped policy loss + clipped value loss
        stats = {
            k: []
            for k in (
                "pg_loss",
                "vf_loss",
                "clipfrac",
                "approx_kl",
                "vf_clipfrac",
                "entropy",
                "ratio",
                "grad_norm",
            )
        }
        for _ in range(self.ppo_epochs):
            order = perm if fused else torch.randperm(n, device=self.device)
            for idx in order.tensor_split(self.num_minibatches):
                if idx.numel() == 0:
                    continue
                mb = r.index(idx)
                mb_mask = mb["response_mask"]
                critic_only = self.global_step < self.value_warmup_steps  # value warm-up
                if fused:  # the one minibatch is the whole permuted batch, already forwarded
                    logprobs, vpred, logits = fwd
                    del fwd
                else:
                    logprobs, vpred, logits = self.forward_policy_value(
                        mb["query_responses"],
                        mb["attention_mask"],
                        r.context_length,
                        mb["responses"],
                        critic_only,
                    )
                is_weights = None if r.is_weights is None else r.is_weights[idx]  # engine rollouts (TIS)
                pg = pg_loss(logprobs, mb["logprobs"], advantages[idx], mb_mask, self.cliprange, is_weights)
                vl, vclip = vf_loss(vpred, values[idx], returns[idx], mb_mask, self.cliprange_value)
                loss = ppo_total_loss(pg.pg_loss, vl, self.vf_coef, critic_only)
                # 8. update with gradient clipping
                norm = self.optimizer_update(loss)
                stats["pg_loss"].append(pg.pg_loss.detach())
                stats["vf_loss"].append(vl.detach())
                stats["clipfrac"].append(pg.clipfrac)
                stats["approx_kl"].append(pg.approx_kl)
                stats["vf_clipfrac"].append(vclip)
                stats["ratio"].append(pg.ratio)
                stats["entropy"].append(self.entropy(logits, mb_mask))
                if norm is not None:
                    stats["grad_norm"].append(norm.detach())
                del logits
        # 9. KL controller: adapt the coefficient to the measured KL (adaptive mode)
        self.update_kl_controller(r)
        # 10. metrics and a samples table
        self.log_rollout_metrics(r)
        mean = {k: torch.stack(v).float().mean() for k, v in stats.items() if v}
        self.log("objective/entropy", mean["entropy"], batch_size=n, sync_dist=True)
        self.log("policy/pg_loss", mean["pg_loss"], batch_size=n, sync_dist=True)
        self.log("policy/clipfrac", mean["clipfrac"], batch_size=n, sync_dist=True)
        self.log("policy/approx_kl", mean["approx_kl"], batch_size=n, sync_dist=True)
        self.log("policy/ratio", mean["ratio"], batch_size=n, sync_dist=True)
        self.log("value/loss", mean["vf_loss"], batch_size=n, sync_dist=True)
        self.log("value/clipfrac", mean["vf_clipfrac"], batch_size=n, sync_dist=True)
        self.log(
            "value/explained_variance",
            explained_variance(values, returns, mask),
            batch_size=n,
            sync_dist=True,
        )
        self.log("value/mean", masked_mean(values, mask), batch_size=n, sync_dist=True)
        if "grad_norm" in mean:
            self.log("policy/grad_norm", mean["grad_norm"], batch_size=n, sync_dist=True)
        self.write_samples(r)

    def save_policy(self, directory: str | Path) -> Path:
        """The policy only (the value adapter, head and backbone are training machinery)."""
        if self.value_model == "separate" and is_peft(self.policy):
            directory = Path(directory)
            directory.mkdir(parents=True, exist_ok=True)
            self.policy.save_pretrained(directory, selected_adapters=["default"])
            self.tokenizer.save_pretrained(directory)
            return directory
        return super().save_policy(directory)

"""REINFORCE with a baseline (``algo=reinforce``) and RLOO (``algo=rloo``; Ahmadian et al. 2024).

No value head: each completion's reward is its score minus kl_coef times its summed KL to the reference,
and the baseline is the mean reward of the other k-1 samples of the same prompt (RLOO), a running mean
of past rewards (REINFORCE), or the batch mean. One optimiser update per batch of rollouts.
"""

from __future__ import annotations

import torch

from alignlab.losses.rl import group_std_normalize, reinforce_loss, rloo_advantages
from alignlab.models.completion import forward_completion
from alignlab.models.logprobs import gather_logprobs
from alignlab.modules.rl_state import Rollout
from alignlab.modules.rollout import OnlineRLModule
from alignlab.utils.errors import ConfigError

BASELINES = ("rloo", "ema", "mean", "none")


class RLOOModule(OnlineRLModule):
    """k samples per prompt, sequence-level rewards, a baseline, one policy-gradient step per batch."""

    def __init__(
        self,
        policy,
        tokenizer,
        optimizer=None,
        scheduler=None,
        k: int = 4,
        baseline: str = "rloo",
        ema_decay: float = 0.9,
        normalize_advantages: bool | str = False,
        **rollout_kwargs,
    ):
        """
        Args:
            policy: the causal LM being trained (LoRA-wrapped or not).
            tokenizer: its tokenizer.
            optimizer: partial optimiser factory taking ``params``.
            scheduler: partial scheduler factory taking ``optimizer``, stepped once per update.
            k: completions sampled per prompt (the batch holds data.batch_size x k sequences).
            baseline: ``rloo`` (leave-one-out, needs k >= 2), ``ema`` (running mean of past rewards),
                ``mean`` (batch mean) or ``none``.
            ema_decay: decay of the running-mean baseline (``baseline=ema``).
            normalize_advantages: divide advantages by a standard deviation: ``false``, ``true`` or
                ``batch`` (the batch's), ``group`` (each prompt's k samples by their own; needs k >= 2).
            **rollout_kwargs: reward, sampling, KL and logging settings (see ``OnlineRLModule``).
        """
        super().__init__(policy, tokenizer, optimizer, scheduler, **rollout_kwargs)
        if baseline not in BASELINES:
            raise ConfigError(f"algo.baseline={baseline!r}: choose one of {', '.join(BASELINES)}")
        if baseline == "rloo" and k < 2:
            raise ConfigError(f"algo.baseline=rloo needs algo.k >= 2 samples per prompt (got k={k})")
        if k < 1 or not 0.0 <= ema_decay < 1.0:
            raise ConfigError(f"algo.k ({k}) must be >= 1 and algo.ema_decay ({ema_decay}) in [0, 1)")
        self.k, self.baseline, self.ema_decay = k, baseline, ema_decay
        self.samples_per_prompt = k
        norm = {False: None, True: "batch", "none": None, "batch": "batch", "group": "group"}
        if normalize_advantages not in norm:
            raise ConfigError(
                f"algo.normalize_advantages={normalize_advantages!r}: choose false, true, batch or group"
            )
        if norm[normalize_advantages] == "group" and k < 2:
            raise ConfigError(f"algo.normalize_advantages=group needs algo.k >= 2 (got k={k})")
        self.normalize_advantages = norm[normalize_advantages]
        self.baseline_value: float | None = None  # running mean for baseline=ema

    def advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        if self.baseline == "rloo":
            adv = rloo_advantages(rewards, self.k)
        elif self.baseline == "mean":
            adv = rewards - rewards.mean()
        elif self.baseline == "ema":
            adv = rewards - (rewards.mean().item() if self.baseline_value is None else self.baseline_value)
            batch_mean = rewards.mean().item()
            self.baseline_value = (
                batch_mean
                if self.baseline_value is None
                else (self.ema_decay * self.baseline_value + (1 - self.ema_decay) * batch_mean)
            )
        else:
            adv = rewards
        if self.normalize_advantages == "batch" and adv.numel() > 1:
            adv = adv / (adv.std() + 1e-8)
        elif self.normalize_advantages == "group":
            adv = group_std_normalize(adv, self.k)
        return adv

    def training_step(self, batch: dict, batch_idx: int) -> None:
        # 1. rollouts: k completions per prompt, the k copies of a prompt contiguous
        prompt_ids = [p for p in batch["prompt_ids"] for _ in range(self.k)]
        prompts = [p for p in batch["prompt"] for _ in range(self.k)]
        # 2. scores, 3. policy / reference log-probs and per-token KL (no gradient; with fused_forward
        # the policy's log-probs come from the gradient forward below instead)
        r = self.collect_rollouts(prompt_ids, prompts, policy_logprobs=not self.fused_forward)
        mask = r.response_mask  # (B * k, L)
        n = len(prompts)
        step = n if self.fused_forward else (self.forward_batch_size or n)
        chunks = [slice(i, i + step) for i in range(0, n, step)]
        if self.fused_forward:  # one forward with gradient over the whole batch, before the update
            logits, logprobs = self.policy_logprobs(r, chunks[0])
            self.set_policy_logprobs(r, logprobs)
        # 4. sequence reward: score minus the KL penalty summed over the completion
        rewards = r.scores - self.kl_ctl.value * r.kl.sum(-1)  # (B * k,)
        # 5. baseline -> advantages
        adv = self.advantages(rewards)
        # 6. policy gradient: -A * log pi(y), gradients accumulated over chunks, one update
        entropy = []
        for sl in chunks:
            if not self.fused_forward:
                logits, logprobs = self.policy_logprobs(r, sl)
            # engine rollouts: each token weighted by min(pi_trainer / pi_engine, cap) (truncated IS)
            weights = mask[sl] if r.is_weights is None else r.is_weights[sl]
            loss = reinforce_loss(logprobs, adv[sl], weights) * (logprobs.shape[0] / n)
            self.manual_backward(loss)
            entropy.append(self.entropy(logits, mask[sl]))
            del logits
        # 7. gradient clipping and the update
        norm = self.optimizer_update()
        # 8. KL controller (adaptive mode)
        self.update_kl_controller(r)
        # 9. metrics and a samples table
        self.log_rollout_metrics(r)
        self.log("objective/entropy", torch.stack(entropy).mean(), batch_size=n, sync_dist=True)
        self.log(
            "policy/advantage_std", adv.std() if n > 1 else torch.zeros(()), batch_size=n, sync_dist=True
        )
        self.log("policy/seq_logprob", r.logprobs.sum(-1).mean(), batch_size=n, sync_dist=True)
        if norm is not None:
            self.log("policy/grad_norm", norm, batch_size=n, sync_dist=True)
        self.write_samples(r)

    def policy_logprobs(self, r: Rollout, sl: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (b, L, V) and log-probs (b, L) of rollout rows ``sl`` under the policy, with gradient."""
        logits, _ = forward_completion(
            self.policy,
            r.query_responses[sl],
            r.attention_mask[sl],
            r.context_length,
            self.sampling.temperature,
            group=self.rollout_group,  # the grouped layout declines rows not in runs of k identical prompts
        )
        return logits, gather_logprobs(logits, r.responses[sl])

    def rl_state(self) -> dict:
        return {**super().rl_state(), "baseline_value": self.baseline_value}

    def load_rl_state(self, state: dict) -> None:
        super().load_rl_state(state)
        self.baseline_value = state.get("baseline_value")

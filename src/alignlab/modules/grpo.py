"""GRPO (``algo=grpo``; Shao et al. 2024) and its variants Dr. GRPO (Liu et al. 2025) and DAPO (Yu et al.
2025): k samples per prompt, group-relative advantages, the clipped importance-ratio surrogate, several
optimisation passes per rollout batch. No value head.

The rollouts, scores, reference (the adapter disabled under LoRA), KL and rollout engines (hf, vLLM) are
``OnlineRLModule``'s, as for RLOO; the math is ``alignlab.losses.grpo``. ``trainer.max_steps`` counts
optimiser updates: ``num_iterations`` per rollout batch.
"""

from __future__ import annotations

import torch

from alignlab.losses.grpo import LOSS_AGGREGATIONS, group_advantages, grpo_loss, informative_groups
from alignlab.models.completion import forward_completion
from alignlab.models.logprobs import gather_logprobs
from alignlab.modules.rl_state import Rollout
from alignlab.modules.rollout import OnlineRLModule
from alignlab.utils.config import ConfigError


class GRPOModule(OnlineRLModule):
    """k samples per prompt, group-relative advantages, ``num_iterations`` clipped-surrogate updates."""

    max_empty_batches = 20  # dynamic sampling: consecutive rollout batches without a group left, then stop

    def __init__(
        self,
        policy,
        tokenizer,
        optimizer=None,
        scheduler=None,
        k: int = 4,
        scale_rewards: bool = True,
        loss_aggregation: str = "grpo",
        epsilon_low: float | None = 0.2,
        epsilon_high: float | None = 0.2,
        num_iterations: int = 1,
        beta: float = 0.04,
        kl_in_reward: bool = False,
        loss_constant: float | None = None,
        dynamic_sampling: bool = False,
        **rollout_kwargs,
    ):
        """
        Args:
            policy: the causal LM being trained (LoRA-wrapped or not).
            tokenizer: its tokenizer.
            optimizer: partial optimiser factory taking ``params``.
            scheduler: partial scheduler factory taking ``optimizer``, stepped once per update.
            k: completions sampled per prompt, the group (>= 2; the batch holds data.batch_size x k).
            scale_rewards: divide each group's centred rewards by the group's std (GRPO); false = Dr. GRPO.
            loss_aggregation: ``grpo`` (sequence mean, then batch mean), ``dr_grpo`` (token sum over the
                constant ``batch x loss_constant``) or ``dapo`` (token mean over the batch).
            epsilon_low: lower clip range of the ratio (1 - epsilon_low); null = no lower clip.
            epsilon_high: upper clip range (1 + epsilon_high; DAPO's clip-higher: 0.28); null = none.
            num_iterations: optimisation passes (one update each) over each rollout batch, mu in the paper;
                the rollout policy's log-probs are kept as pi_old for all of them.
            beta: KL coefficient; a k3 loss term to the reference, or (``kl_in_reward``) the penalty
                ``beta x summed KL`` (``algo.kl_estimator``) subtracted from each sequence's reward. 0 = off.
            kl_in_reward: put the KL in the reward (as RLOO and PPO do) instead of the loss.
            loss_constant: the ``dr_grpo`` constant per sequence (null = ``max_new_tokens``).
            dynamic_sampling: DAPO's filter: drop the groups whose scores are all equal before the update
                (a batch with none left makes no update).
            **rollout_kwargs: reward, sampling, KL-estimator and logging settings (see ``OnlineRLModule``);
                ``kl_target`` (adaptive KL) needs ``kl_in_reward``.
        """
        if "kl_coef" in rollout_kwargs:
            raise ConfigError("algo=grpo takes its KL coefficient as algo.beta, not algo.kl_coef")
        if rollout_kwargs.get("kl_target") is not None and not kl_in_reward:
            raise ConfigError("algo.kl_target (adaptive KL) needs algo.kl_in_reward=true")
        super().__init__(
            policy, tokenizer, optimizer, scheduler, kl_coef=beta if kl_in_reward else 0.0, **rollout_kwargs
        )
        if k < 2:
            raise ConfigError(f"algo=grpo needs algo.k >= 2 samples per prompt (got k={k})")
        if loss_aggregation not in LOSS_AGGREGATIONS:
            raise ConfigError(
                f"algo.loss_aggregation={loss_aggregation!r}: choose one of {', '.join(LOSS_AGGREGATIONS)}"
            )
        if num_iterations < 1 or beta < 0:
            raise ConfigError(
                f"algo.num_iterations ({num_iterations}) must be >= 1 and algo.beta ({beta}) >= 0"
            )
        for name, eps in (("epsilon_low", epsilon_low), ("epsilon_high", epsilon_high)):
            if eps is not None and eps < 0:
                raise ConfigError(f"algo.{name} must be >= 0 or null (got {eps})")
        if epsilon_low is not None and epsilon_low >= 1:
            raise ConfigError(
                f"algo.epsilon_low must be < 1: the ratio's lower bound is 1 - epsilon_low (got {epsilon_low})"
            )
        if loss_constant is not None and loss_constant <= 0:
            raise ConfigError(f"algo.loss_constant must be > 0 or null (got {loss_constant})")
        self.k, self.samples_per_prompt = k, k
        self.scale_rewards, self.loss_aggregation = scale_rewards, loss_aggregation
        self.epsilon_low, self.epsilon_high = epsilon_low, epsilon_high
        self.num_iterations, self.beta, self.kl_in_reward = num_iterations, beta, kl_in_reward
        self.loss_constant = float(loss_constant or self.sampling.max_new_tokens)
        self.dynamic_sampling = dynamic_sampling
        self.empty_batches = 0  # consecutive rollout batches dynamic sampling left empty

    def training_step(self, batch: dict, batch_idx: int) -> None:
        # 1. rollouts: k completions per prompt, the k copies of a prompt contiguous; scores, reference
        # log-probs, and (unless fused) pi_old's log-probs and the per-token KL, all without gradient
        prompt_ids = [p for p in batch["prompt_ids"] for _ in range(self.k)]
        prompts = [p for p in batch["prompt"] for _ in range(self.k)]
        fused = self.fused_forward
        r = self.collect_rollouts(prompt_ids, prompts, policy_logprobs=not fused)
        mask = r.response_mask  # (B * k, L)
        n = len(prompts)
        first = None
        if fused:  # the first pass's forward, before any update, gives pi_old's log-probs
            first = self.policy_logprobs(r, torch.arange(n, device=self.device))
            self.set_policy_logprobs(r, first[1])
        # 2. sequence rewards: the score, minus beta x summed KL when the KL is in the reward
        rewards = r.scores - self.kl_ctl.value * r.kl.sum(-1)  # (B * k,); kl_ctl.value = 0 otherwise
        # 3. group-relative advantages
        adv = group_advantages(rewards, self.k, self.scale_rewards)  # (B * k,)
        # 4. dynamic sampling: keep the groups whose scores differ
        keep = informative_groups(r.scores, self.k) if self.dynamic_sampling else torch.ones_like(adv).bool()
        rows = keep.nonzero().squeeze(-1)  # (B',)
        n_seq, n_tok = rows.numel(), float(mask[rows].sum())
        self.check_not_starved(n_seq)
        step = n_seq if fused else (self.forward_batch_size or n_seq)
        chunks = [rows[i : i + step] for i in range(0, n_seq, step)]
        # 5. num_iterations passes over the kept rows, one update each (gradients accumulated over chunks)
        stats = {name: [] for name in ("pg_loss", "kl_loss", "clipfrac_low", "clipfrac_high", "ratio")}
        entropy, norms = [], []
        for it in range(self.num_iterations if n_seq else 0):
            for chunk in chunks:
                if first is not None and it == 0:
                    logits, logprobs = first[0][chunk], first[1][chunk]
                else:
                    logits, logprobs = self.policy_logprobs(r, chunk)
                weights = None if r.is_weights is None else r.is_weights[chunk]  # engine rollouts (TIS)
                out = grpo_loss(
                    logprobs,
                    r.logprobs[chunk],
                    r.ref_logprobs[chunk] if self.beta and not self.kl_in_reward else None,
                    adv[chunk],
                    mask[chunk],
                    self.epsilon_low,
                    self.epsilon_high,
                    0.0 if self.kl_in_reward else self.beta,
                    self.loss_aggregation,
                    self.loss_constant,
                    num_sequences=n_seq,
                    num_tokens=n_tok,
                    weights=weights,
                )
                self.manual_backward(out.loss)
                # the chunks' aggregated losses add up to the batch's; their token means are weighted
                for name, value in zip(stats, out[1:]):
                    stats[name].append(value if name == "pg_loss" else value * len(chunk) / n_seq)
                if it == 0:
                    entropy.append(self.entropy(logits, mask[chunk]))
                del logits
            first = None
            # 6. gradient clipping and the update
            norm = self.optimizer_update()
            if norm is not None:
                norms.append(norm.detach())
        # 7. KL controller (adaptive mode, KL in the reward)
        self.update_kl_controller(r)
        # 8. metrics and a samples table
        self.log_rollout_metrics(r)
        log = dict(batch_size=n, sync_dist=True)
        for name, values in stats.items():
            if values:
                self.log(f"policy/{name}", torch.stack(values).sum() / self.num_iterations, **log)
        if entropy:
            self.log("objective/entropy", torch.stack(entropy).mean(), **log)
        if norms:
            self.log("policy/grad_norm", torch.stack(norms).mean(), **log)
        self.log("policy/kept_groups_frac", torch.tensor(n_seq / n, device=self.device), **log)
        self.log("policy/advantage_std", adv.std(), **log)
        self.log("policy/seq_logprob", r.logprobs.sum(-1).mean(), **log)
        self.write_samples(r)

    def check_not_starved(self, kept: int) -> None:
        """Dynamic sampling makes no update from a batch it leaves empty; many in a row would loop forever."""
        self.empty_batches = 0 if kept else self.empty_batches + 1
        if self.empty_batches >= self.max_empty_batches:
            raise ConfigError(
                f"algo.dynamic_sampling=true dropped every group of {self.empty_batches} rollout batches in a "
                f"row (all {self.k} scores of each prompt equal): the reward does not separate the samples; "
                "raise algo.k or algo.temperature, or set algo.dynamic_sampling=false"
            )

    def policy_logprobs(self, r: Rollout, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (b, L, V) and log-probs (b, L) of rollout rows ``rows`` under the policy, with gradient."""
        logits, _ = forward_completion(
            self.policy,
            r.query_responses[rows],
            r.attention_mask[rows],
            r.context_length,
            self.sampling.temperature,
            group=self.rollout_group,  # the grouped layout declines rows not in runs of k identical prompts
        )
        return logits, gather_logprobs(logits, r.responses[rows])

"""Shared online-RL machinery for PPO, REINFORCE and RLOO: rollouts, scores, KL to the reference.

A rollout is laid out as the generator produced it: left-padded prompt (width P) then right-padded
completion (width L), so every per-token tensor is (B, L) and aligned with the completion tokens.
"""

from __future__ import annotations

import torch

from alignlab.losses.rl import kl_estimate, masked_mean
from alignlab.models.completion import completion_kl, completion_logprobs
from alignlab.models.generation import SamplingConfig, left_pad, sample
from alignlab.models.loader import has_dropout
from alignlab.models.logprobs import entropy_from_logits
from alignlab.models.reference import ReferenceModel
from alignlab.models.vllm_engine import RolloutSpec
from alignlab.models.vllm_rollout import build_engine, engine_correction
from alignlab.modules.base import PolicyModule
from alignlab.modules.rl_state import KLController, Rollout, write_samples
from alignlab.rewards.base import NormalizedReward, RewardFunction
from alignlab.utils.errors import ConfigError
from alignlab.utils.rng import rng_state, set_rng_state


class OnlineRLModule(PolicyModule):
    """What PPO, REINFORCE and RLOO share: sampling, scoring, the reference, KL, validation, RL state."""

    def __init__(
        self,
        policy,
        tokenizer,
        optimizer=None,
        scheduler=None,
        reward: RewardFunction | None = None,
        val_rewards: dict | None = None,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        val_temperature: float = 1.0,
        kl_coef: float = 0.05,
        kl_target: float | None = None,
        kl_horizon: int = 10000,
        kl_estimator: str = "k1",
        missing_eos_penalty: float | None = None,
        reward_normalize: bool = False,
        reward_clip: float | None = None,
        max_grad_norm: float | None = 1.0,
        forward_batch_size: int | None = None,
        fused_forward: bool = False,
        share_prompt: bool = True,
        lean_lora_sampling: bool = True,
        log_samples_every: int = 10,
        num_log_samples: int = 8,
        rollout: RolloutSpec | None = None,
    ):
        """
        Args:
            policy: the causal LM being trained (LoRA-wrapped or not); the reference is the same model
                with the adapter disabled under LoRA, a frozen copy otherwise.
            tokenizer: its tokenizer.
            optimizer: partial optimiser factory taking ``params``.
            scheduler: partial scheduler factory taking ``optimizer``, stepped once per optimiser update.
            reward: the reward function (``alignlab.rewards``) maximised.
            val_rewards: extra reward functions evaluated on validation samples, logged as ``val/<name>``.
            max_new_tokens: completion length cap.
            temperature: sampling temperature of the rollouts (log-probs use the same temperature).
            top_p: nucleus mass of the rollouts.
            top_k: top-k of the rollouts (0 = off).
            val_temperature: validation sampling temperature (0 = greedy); ``val/kl`` is the exact
                per-token KL(pi || pi_ref) at this temperature (1 when greedy), summed per completion.
            kl_coef: weight of the KL penalty (the initial value when adaptive).
            kl_target: target KL per sequence for the adaptive controller (Ziegler et al. 2019); None = fixed.
            kl_horizon: horizon (in samples) of the adaptive controller.
            kl_estimator: per-token KL estimator in the reward: k1, k2 or k3.
            missing_eos_penalty: subtracted from the score of completions that never emit EOS (None = off).
            reward_normalize: standardise scores with running statistics (saved in checkpoints).
            reward_clip: clip (normalised) scores to [-clip, clip] (None = off).
            max_grad_norm: gradient-norm clipping of each update (None = off).
            forward_batch_size: sequences per no-grad forward pass (None = the whole batch).
            fused_forward: with one update per rollout batch, take the rollout policy's log-probs (and
                PPO's values) from the gradient forward of that update instead of a separate no-grad
                forward: the same numbers, one forward fewer per batch. The update's forward then runs
                over the whole batch at once (``forward_batch_size`` bounds only the no-grad passes).
                Needs a dropout-free policy.
            share_prompt: with k >= 2 samples per prompt (RLOO), run each prompt once per group of k:
                when sampling (the prompt's KV cache computed once and repeated) and in the log-prob
                forwards (one row ``prompt | completion 1 | ... | completion k`` with a 4D attention
                mask, up to ``models.logprobs.MAX_GROUP_WIDTH`` tokens per row); the same numbers up to
                float rounding. False runs every sample's row.
            lean_lora_sampling: sample rollouts (and validation completions) from a LoRA policy with peft's
                wrappers swapped for minimal modules computing the same function (faster decoding, no
                extra memory; ``alignlab.models.peft.lean_adapter``); false samples through peft.
            log_samples_every: write a samples table every this many rollout batches (0 = never).
            num_log_samples: rows per samples table.
            rollout: the rollout engine (``algo.rollout``): ``engine=hf`` samples here with ``generate``,
                ``engine=vllm`` through a vLLM server (``alignlab.models.vllm_rollout``: the policy synced to
                it before each batch, its log-probs compared with the trainer's and corrected by truncated
                importance weights up to ``tis_cap``); None = hf. Validation always samples here.
        """
        super().__init__(policy, tokenizer, optimizer, scheduler)
        if reward is None:
            raise ConfigError(
                "algo.reward is required: e.g. reward=gold, or reward=reward_model reward.path=DIR"
            )
        if kl_estimator not in ("k1", "k2", "k3"):
            raise ConfigError(f"algo.kl_estimator={kl_estimator!r}: choose k1, k2 or k3")
        if temperature <= 0:
            raise ConfigError("algo.temperature must be > 0 for rollouts (log-probs need a distribution)")
        self.automatic_optimization = False
        self.reward_fn = NormalizedReward(reward, reward_normalize, reward_clip)
        self.val_rewards = dict(val_rewards or {})
        self.sampling = SamplingConfig(max_new_tokens, temperature, top_p, top_k)
        self.val_sampling = SamplingConfig(
            max_new_tokens, val_temperature, top_p if val_temperature > 0 else 1.0, top_k
        )
        self.kl_ctl = KLController(kl_coef, kl_target, kl_horizon)
        self.kl_estimator = kl_estimator
        self.missing_eos_penalty = missing_eos_penalty
        self.max_grad_norm = max_grad_norm
        self.forward_batch_size = forward_batch_size
        self.fused_forward = fused_forward
        self.share_prompt = share_prompt
        self.lean_lora_sampling = lean_lora_sampling
        if fused_forward and has_dropout(policy):
            raise ConfigError(
                "algo.fused_forward=true needs a dropout-free policy (the update's forward then stands in "
                "for the rollout log-probs): set the model's dropout to 0 or algo.fused_forward=false"
            )
        self.log_samples_every = log_samples_every
        self.num_log_samples = num_log_samples
        # pi_ref: under LoRA the adapter switched off, under full fine-tuning a frozen copy
        self.ref_model = ReferenceModel.of(policy)
        self.iteration = 0  # rollout batches done (trainer.global_step counts optimiser updates)
        self.rollout_engine = build_engine(rollout)  # None: in-process generate
        self.tis_cap = rollout.tis_cap if self.rollout_engine is not None else None

    samples_per_prompt = 1  # RLOO: k consecutive rollout rows share a prompt
    clips_own_gradients = True  # manual optimisation: algo.max_grad_norm, never trainer.gradient_clip_val

    @property
    def rollout_group(self) -> int:
        """Rows per prompt group that sampling and log-prob forwards may share a prompt across (1 = none)."""
        return self.samples_per_prompt if self.share_prompt else 1

    @property
    def sampling_dtype(self) -> torch.dtype | None:
        """bf16 decoding weights under a bf16 trainer (autocast would re-cast them at every step)."""
        return torch.bfloat16 if str(getattr(self._trainer, "precision", "")).startswith("bf16") else None

    # -- rollouts ------------------------------------------------------------------------------------
    def reference_logprobs(self, qr, mask, ctx, temperature: float, group: int = 1) -> torch.Tensor:
        """log pi_ref of the completion tokens (``self.ref_model``)."""
        with self.ref_model as ref:
            return completion_logprobs(ref, qr, mask, ctx, temperature, self.forward_batch_size, group)

    @torch.no_grad()
    def collect_rollouts(
        self, prompt_ids: list[list[int]], prompts: list[str], policy_logprobs: bool = True
    ) -> Rollout:
        """Steps 1-3 of every algorithm: sample, score, log-probs of policy and reference, per-token KL.

        With ``policy_logprobs=False`` the policy's log-probs and the KL are left unset (``None``): the
        caller computes them in its gradient forward and hands them to ``set_policy_logprobs``.
        """
        self.reward_fn.to(self.device)
        # 1. sample completions (batched, KV cache, no gradient), here or on the engine's server (synced
        # to this policy version first: a LoRA adapter hot-loaded, or full weights reloaded)
        if self.rollout_engine is not None:
            gen = self.rollout_engine.sample(
                self.policy, self.tokenizer, prompt_ids, self.sampling, self.global_step, self.rollout_group
            )
        else:
            gen = sample(
                self.policy,
                self.tokenizer,
                prompt_ids,
                self.sampling,
                lean_lora=self.lean_lora_sampling,
                group=self.rollout_group,
                weights_dtype=self.sampling_dtype,
            )
        ctx_ids, ctx_mask = left_pad(prompt_ids, self.tokenizer.pad_token_id, self.device)
        responses = gen.completion_ids.to(self.device)
        response_mask = gen.completion_mask.to(self.device).float()  # (B, L)
        qr = torch.cat([ctx_ids, responses], 1)  # (B, P + L)
        attn = torch.cat([ctx_mask, gen.completion_mask.to(self.device)], 1)
        ctx = ctx_ids.shape[1]
        # 2. score them; completions that never stop are penalised
        raw = self.reward_fn.score(prompts, gen.texts).to(self.device).float()
        # running statistics over every rank's scores, so all ranks normalise alike
        pooled = self.across_ranks(raw) if self.reward_fn.normalize else None
        scores = self.reward_fn.transform(raw, pooled=pooled)
        stopped = gen.stopped.to(self.device)
        if self.missing_eos_penalty is not None:
            scores = scores - self.missing_eos_penalty * (~stopped).float()
        # 3. log-probs under the policy and the reference (adapter disabled), per-token KL
        self.policy.eval()
        logprobs = kl = None
        if policy_logprobs:
            logprobs = (
                completion_logprobs(
                    self.policy,
                    qr,
                    attn,
                    ctx,
                    self.sampling.temperature,
                    self.forward_batch_size,
                    self.rollout_group,
                )
                * response_mask
            )
        ref_logprobs = (
            self.reference_logprobs(qr, attn, ctx, self.sampling.temperature, self.rollout_group)
            * response_mask
        )
        self.policy.train()
        if logprobs is not None:
            kl = kl_estimate(logprobs, ref_logprobs, self.kl_estimator) * response_mask
        r = Rollout(
            prompts,
            gen.texts,
            qr,
            attn,
            ctx,
            responses,
            response_mask,
            stopped,
            raw,
            scores,
            logprobs,
            ref_logprobs,
            kl,
            engine_logprobs=getattr(gen, "engine_logprobs", None),
        )
        self.correct_engine_mismatch(r)
        return r

    def correct_engine_mismatch(self, r: Rollout) -> None:
        """Engine rollouts, once the trainer's pi_old is known: the engine/trainer log-prob gap logged,
        truncated importance weights set (``engine_correction``). Nothing for in-process rollouts."""
        for name, value in engine_correction(r, self.tis_cap).items():
            self.log(name, value, batch_size=len(r.prompts), sync_dist=True)

    def setup(self, stage: str) -> None:
        if self.rollout_engine is not None and self.trainer.world_size > 1:
            raise ConfigError(
                "algo.rollout.engine=vllm samples from one server for one training process: use one device "
                "(trainer.devices=1), or algo.rollout.engine=hf for multi-process training"
            )

    def teardown(self, stage: str) -> None:
        """Stop the vLLM server this run started (one given by ``algo.rollout.base_url`` keeps running)."""
        if self.rollout_engine is not None:
            self.rollout_engine.close()

    def across_ranks(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (N, ...) from every rank, concatenated (``x`` itself in one process). What steers training
        beyond the gradients (running reward statistics, the adaptive KL coefficient) is computed from it,
        so every rank keeps the same state under DDP."""
        trainer = self._trainer
        if trainer is None or trainer.world_size <= 1:
            return x
        return self.all_gather(x.contiguous()).flatten(0, 1)

    def update_kl_controller(self, r: Rollout) -> None:
        """Adaptive KL (Ziegler et al.): the coefficient follows the mean sequence KL over all ranks."""
        seq_kl = self.across_ranks(r.kl.sum(-1).detach())
        self.kl_ctl.update(seq_kl.mean().item(), seq_kl.numel())

    def set_policy_logprobs(self, r: Rollout, logprobs: torch.Tensor) -> None:
        """Fused forward: the rollout policy's log-probs (B, L) from the update's own forward (detached;
        before the update they are the rollout policy's) and the per-token KL they give."""
        r.logprobs = logprobs.detach() * r.response_mask
        r.kl = kl_estimate(r.logprobs, r.ref_logprobs, self.kl_estimator) * r.response_mask
        self.correct_engine_mismatch(r)

    def optimizer_update(self, loss: torch.Tensor | None = None) -> torch.Tensor | None:
        """(Backward,) clip, step, zero; the scheduler steps once per update. Returns the grad norm."""
        opt = self.optimizers()
        if loss is not None:
            self.manual_backward(loss)
        norm = None
        if self.max_grad_norm:
            norm = torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), self.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()
        return norm

    def log_rollout_metrics(self, r: Rollout) -> None:
        bs = len(r.prompts)
        seq_kl = r.kl.sum(-1)
        self.log("objective/score", r.raw_scores.mean(), prog_bar=True, batch_size=bs, sync_dist=True)
        self.log("objective/kl", seq_kl.mean(), prog_bar=True, batch_size=bs, sync_dist=True)
        self.log("objective/kl_coef", self.kl_ctl.value, batch_size=bs, sync_dist=True)
        self.log(
            "objective/non_score_reward", -self.kl_ctl.value * seq_kl.mean(), batch_size=bs, sync_dist=True
        )
        self.log(
            "objective/rlhf_reward",
            (r.scores - self.kl_ctl.value * seq_kl).mean(),
            batch_size=bs,
            sync_dist=True,
        )
        self.log("completion/length", r.lengths.mean(), batch_size=bs, sync_dist=True)
        self.log("completion/stopped_frac", r.stopped.float().mean(), batch_size=bs, sync_dist=True)
        queries = getattr(self.reward_fn.reward, "queries", None)  # a judge reward counts its judgements
        if queries is not None:
            self.log("reward/judge_queries", float(queries), reduce_fx="max", batch_size=bs)

    def entropy(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_mean(entropy_from_logits(logits.detach()), mask)

    def write_samples(self, r: Rollout) -> None:
        """Every ``log_samples_every`` iterations: ``<run>/samples/rollouts_<step>.jsonl`` (+ a wandb table)."""
        trainer = self._trainer
        self.iteration += 1
        if not self.log_samples_every or (self.iteration - 1) % self.log_samples_every or trainer is None:
            return
        if not trainer.is_global_zero:
            return
        write_samples(trainer, r, self.num_log_samples)

    # -- validation: mean score (and any extra rewards) of samples on held-out prompts ----------------
    def on_validation_epoch_start(self) -> None:
        self._val = {"score": [], "kl": [], "length": [], **{k: [] for k in self.val_rewards}}

    @torch.no_grad()
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # validation must not move the training RNG
            torch.manual_seed(1234 + batch_idx)
            gen = sample(
                self.policy,
                self.tokenizer,
                batch["prompt_ids"],
                self.val_sampling,
                lean_lora=self.lean_lora_sampling,
                weights_dtype=self.sampling_dtype,
            )
        ctx_ids, ctx_mask = left_pad(batch["prompt_ids"], self.tokenizer.pad_token_id, self.device)
        cmask = gen.completion_mask.to(self.device)
        qr, attn = (
            torch.cat([ctx_ids, gen.completion_ids.to(self.device)], 1),
            torch.cat([ctx_mask, cmask], 1),
        )
        # KL(pi || pi_ref) of the distribution the completions were sampled from (val_temperature; 1 when
        # greedy), exact per token over the vocabulary, summed over each completion
        temperature = self.val_sampling.temperature or 1.0
        kl = completion_kl(
            self.policy, self.ref_model, qr, attn, ctx_ids.shape[1], temperature, self.forward_batch_size
        )
        self._val["kl"].append((kl * cmask).sum(-1).cpu())
        self._val["score"].append(self.reward_fn.score(batch["prompt"], gen.texts).float().cpu())
        self._val["length"].append(cmask.sum(-1).float().cpu())
        for name, fn in self.val_rewards.items():
            self._val[name].append(fn.to(self.device)(batch["prompt"], gen.texts).float().cpu())

    def on_validation_epoch_end(self) -> None:
        for name, values in self._val.items():
            if values:
                self.log(
                    f"val/{name}",
                    torch.cat(values).mean().to(self.device),
                    sync_dist=True,
                    prog_bar=name == "score",
                )

    # -- checkpoints: KL controller, running reward statistics, RNG ------------------------------------
    def rl_state(self) -> dict:
        """Algorithm state beyond parameters and optimiser; subclasses extend it."""
        return {
            "kl_controller": self.kl_ctl.state_dict(),
            "reward": self.reward_fn.state_dict(),
            "iteration": self.iteration,
        }

    def load_rl_state(self, state: dict) -> None:
        self.kl_ctl.load_state_dict(state["kl_controller"])
        self.reward_fn.load_state_dict(state["reward"])
        self.iteration = int(state.get("iteration", 0))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("ref_model.")
        }
        checkpoint["rl_state"] = self.rl_state()
        checkpoint["rng_state"] = rng_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "rl_state" in checkpoint:
            self.load_rl_state(checkpoint["rl_state"])
        if "rng_state" in checkpoint:
            set_rng_state(checkpoint["rng_state"])

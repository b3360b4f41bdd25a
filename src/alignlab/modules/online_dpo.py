"""Online DPO with AI feedback (``algo=online_dpo``; Guo et al. 2024, "Direct language model alignment from
online AI feedback").

One training step, on a batch of prompts:
  1. sample two completions per prompt from the current policy (no gradient; the pair's prompt encoded once);
  2. the judge (``conf/judge``: an LLM judge asks both presentation orders; ``judge=gold``: the simulated
     annotators) labels each pair; ties and invalid answers are dropped, never given a winner;
  3. log-probs of the kept pairs under the policy (gradient) and the reference (the adapter disabled under
     LoRA, a frozen copy otherwise), summed over each completion's tokens;
  4. any DPO-family loss of ``alignlab.losses.preference`` on (chosen, rejected), one optimiser update;
  5. metrics: the loss and implicit rewards, the label counts, the judge's queries (cumulative, cache hits
     included, as offline labelling counts them) and its agreement with the gold ordering of the pairs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from alignlab.judges.base import PairwiseJudge, bind_task
from alignlab.losses.preference import LOSS_TYPES, preference_loss
from alignlab.models.completion import completion_logprobs, forward_completion
from alignlab.models.generation import SamplingConfig, left_pad, sample
from alignlab.models.logprobs import gather_logprobs
from alignlab.models.reference import ReferenceModel
from alignlab.modules.base import PolicyModule
from alignlab.utils.config import ConfigError


def judged_pairs(judgements: list[dict]) -> tuple[list[int], list[bool], list[float]]:
    """From one ``Judgement`` per (first, second) pair: the indices of the decided pairs, whether the first
    completion won each, and P(chosen ≻ rejected) of each. Ties and invalid answers are dropped."""
    keep, first_won, p_chosen = [], [], []
    for i, j in enumerate(judgements):
        if j["verdict"] not in ("first", "second"):
            continue
        keep.append(i)
        first_won.append(j["verdict"] == "first")
        p = j["p_first"] if j["p_first"] is not None else (1.0 if first_won[-1] else 0.0)
        p_chosen.append(p if first_won[-1] else 1.0 - p)
    return keep, first_won, p_chosen


class OnlineDPOModule(PolicyModule):
    """DPO on the current policy's own pairs, labelled by a judge at every step."""

    def __init__(
        self,
        policy,
        tokenizer,
        judge: PairwiseJudge | None = None,
        task: Any = None,
        optimizer=None,
        scheduler=None,
        loss_type: str = "sigmoid",
        beta: float = 0.1,
        label_smoothing: float = 0.0,
        simpo_gamma: float = 0.5,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        lean_lora_sampling: bool = True,
    ):
        """
        Args:
            policy: the causal LM being trained (LoRA-wrapped or not).
            tokenizer: its tokenizer.
            judge: the pairwise judge (``alignlab.judges``) that labels every step's pairs.
            task: the run's task (``${task}``): the judge's rubric or gold reward, and the gold ordering the
                labels' agreement is measured against.
            optimizer: partial optimiser factory taking ``params``.
            scheduler: partial scheduler factory taking ``optimizer``.
            loss_type: a DPO-family loss of ``alignlab.losses.preference`` (sigmoid, ipo, hinge, soft, ...).
            beta: inverse temperature of the implicit reward.
            label_smoothing: assumed label flip rate (cdpo, robust; optional for sigmoid).
            simpo_gamma: SimPO's target reward margin (SimPO's log-probs are per-token means).
            max_new_tokens: completion length cap of the sampled pairs.
            temperature: sampling temperature of the pairs (log-probs are the policy's own, at 1).
            top_p: nucleus mass of the sampling.
            top_k: top-k of the sampling (0 = off).
            lean_lora_sampling: decode a LoRA policy through minimal modules (same function, faster).
        """
        super().__init__(policy, tokenizer, optimizer, scheduler)
        if judge is None:
            raise ConfigError(
                "algo.judge is required: e.g. judge@algo.judge=gold or judge@algo.judge=tuned_smollm2"
            )
        if loss_type not in LOSS_TYPES:
            raise ConfigError(f"algo.loss_type={loss_type!r} is not one of {', '.join(sorted(LOSS_TYPES))}")
        if beta <= 0 or temperature <= 0:
            raise ConfigError(f"algo.beta={beta} and algo.temperature={temperature} must be > 0")
        from alignlab.tasks import build_task

        self.task = build_task(task) if task is not None and not hasattr(task, "gold_scores") else task
        self.judge = judge
        if self.task is not None:
            bind_task(judge, self.task)
        self.loss_type, self.beta, self.label_smoothing = loss_type, beta, label_smoothing
        self.simpo_gamma = simpo_gamma
        self.needs_ref = LOSS_TYPES[loss_type][0]
        self.sampling = SamplingConfig(max_new_tokens, temperature, top_p, top_k)
        self.lean_lora_sampling = lean_lora_sampling
        self.ref_model = ReferenceModel.of(policy) if self.needs_ref else None
        self.queries = 0  # judgements asked (each presentation order of a pair counts), cache hits included
        self.labels = {"pairs": 0, "decided": 0, "agree": 0, "gold_decided": 0}

    def on_fit_start(self) -> None:
        if hasattr(self.judge, "to"):  # an LLM judge runs beside the policy
            self.judge.to(self.device)

    # -- 1. pairs from the current policy --------------------------------------------------------------
    @torch.no_grad()
    def sample_pairs(self, prompt_ids: list[list[int]]):
        """Two completions per prompt: rows (2i, 2i+1) are prompt i's pair. Returns the generation and
        its left-padded layout (query_responses, attention mask, context width, completion mask)."""
        ids = [p for p in prompt_ids for _ in range(2)]  # (2B,)
        was_training = self.policy.training
        self.policy.eval()
        gen = sample(
            self.policy, self.tokenizer, ids, self.sampling, lean_lora=self.lean_lora_sampling, group=2
        )
        self.policy.train(was_training)
        ctx_ids, ctx_mask = left_pad(ids, self.tokenizer.pad_token_id, self.device)
        qr = torch.cat([ctx_ids, gen.completion_ids.to(self.device)], 1)  # (2B, P + L)
        attn = torch.cat([ctx_mask, gen.completion_mask.to(self.device)], 1)
        return gen, qr, attn, ctx_ids.shape[1], gen.completion_mask.to(self.device).float()

    # -- 2. labels ---------------------------------------------------------------------------------------
    def label(self, prompts: list[str], firsts: list[str], seconds: list[str]):
        """The judge's labels of the pairs (both orders for an LLM judge), counted, with gold agreement."""
        judgements = self.judge.judge_pairs(prompts, firsts, seconds)
        stats = self.judge.report_stats() if hasattr(self.judge, "report_stats") else {}
        if (
            "queries" in stats
        ):  # an LLM judge counts its own (cache hits included), as offline labelling reads
            self.queries = int(stats["queries"])
        else:  # one judgement per order of a pair (pairwise) or per text (pointwise); one for the oracle
            self.queries += len(prompts) * (1 if getattr(self.judge, "mode", "pairwise") == "gold" else 2)
        keep, first_won, p_chosen = judged_pairs(judgements)
        self.labels["pairs"] += len(prompts)
        self.labels["decided"] += len(keep)
        if self.task is not None and getattr(self.task, "has_gold", True) and keep:  # label vs the gold order
            kp = [prompts[i] for i in keep]
            g1 = np.asarray(self.task.gold_scores(kp, [firsts[i] for i in keep]), dtype=float)
            g2 = np.asarray(self.task.gold_scores(kp, [seconds[i] for i in keep]), dtype=float)
            decided = g1 != g2
            self.labels["gold_decided"] += int(decided.sum())
            self.labels["agree"] += int(((g1 > g2) == np.asarray(first_won))[decided].sum())
        return keep, first_won, p_chosen

    # -- 3.-4. loss ---------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int):
        prompts = list(batch["prompt"])
        n = len(prompts)
        gen, qr, attn, ctx, mask = self.sample_pairs(batch["prompt_ids"])  # 1.
        keep, first_won, p_chosen = self.label(prompts, gen.texts[0::2], gen.texts[1::2])  # 2.
        self.log_labels(n)
        if not keep:  # every pair a tie: nothing to learn from this batch
            return None
        # chosen and rejected rows of the kept pairs, (K,) each
        first = torch.tensor([2 * i for i in keep], device=self.device)
        won = torch.tensor(first_won, device=self.device)
        chosen, rejected = torch.where(won, first, first + 1), torch.where(won, first + 1, first)
        rows = torch.cat([chosen, rejected])  # (2K,)
        qr, attn, mask, responses = qr[rows], attn[rows], mask[rows], qr[rows, ctx:]
        # 3. summed completion log-probs: the policy with gradient, the reference without
        logits, _ = forward_completion(self.policy, qr, attn, ctx, 1.0)
        logps = (gather_logprobs(logits, responses) * mask).sum(-1)  # (2K,)
        if self.loss_type == "simpo":  # SimPO is defined on the mean token log-prob (reference-free)
            logps = logps / mask.sum(-1).clamp(min=1)
        ref_logps = None
        if self.needs_ref:
            with torch.no_grad(), self.ref_model as ref:
                ref_logps = (completion_logprobs(ref, qr, attn, ctx, 1.0) * mask).sum(-1)
        k = len(keep)
        out = preference_loss(
            self.loss_type, logps[:k], logps[k:],
            None if ref_logps is None else ref_logps[:k], None if ref_logps is None else ref_logps[k:],
            p_chosen=torch.tensor(p_chosen, device=self.device, dtype=logps.dtype),
            beta=self.beta, label_smoothing=self.label_smoothing, gamma=self.simpo_gamma,
        )  # fmt: skip
        loss = out.losses.mean()
        # 5. metrics
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=k)
        self.log_dict({"train/rewards/chosen": out.chosen_rewards.mean(),
                       "train/rewards/rejected": out.rejected_rewards.mean(),
                       "train/rewards/accuracy": (out.chosen_rewards > out.rejected_rewards).float().mean(),
                       "train/rewards/margin": (out.chosen_rewards - out.rejected_rewards).mean()}, batch_size=k)  # fmt: skip
        return loss

    def log_labels(self, n: int) -> None:
        lab = self.labels
        self.log("label/decided_frac", lab["decided"] / max(lab["pairs"], 1), batch_size=n)
        self.log("label/decided", float(lab["decided"]), reduce_fx="max", batch_size=n)  # pairs trained on
        self.log("reward/judge_queries", float(self.queries), reduce_fx="max", batch_size=n)
        if lab["gold_decided"]:
            self.log("label/gold_agreement", lab["agree"] / lab["gold_decided"], batch_size=n)

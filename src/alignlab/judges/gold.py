"""``judge=gold``: simulated human annotators, Bradley–Terry noise over the task's gold reward.

Given gold rewards r₁, r₂ of the two completions, each annotator prefers the first with probability

    P(first ≻ second) = σ((r₁ − r₂) / temperature)

and votes by a draw from that Bernoulli, because real annotators disagree on close pairs. ``annotators``
(m) independent annotators vote on each pair; the label is what they said: ``p_first`` = the share of
votes for the first completion (m = 1: a hard 0/1 label), the verdict the majority, and an even split a
``tie`` (never a preference). So a soft-label loss sees the annotators' noise too, not the noise-free
σ(Δ/T). At ``temperature=0`` every vote is the gold ordering itself. Pairs whose gold rewards differ by at
most ``tie_margin`` are ties (p = 0.5, never given a random winner); a gold reward that is not a finite
number makes the pair ``invalid``.

The default temperature is calibrated on the real raters of the task's source archive
(``scripts/calibrate_annotators.py``, docs/rlaif.md): the temperature at which one simulated annotator
agrees with VADER's order on the archive's sentence pairs as often as one real rater agrees with the
other raters' mean (83.1%, T = 0.254; the earlier slope mapping gave T = 0.092 and 93.3%).

The draws for a pair are a hash of (seed, prompt, the two completions, the annotator), so they do not
depend on batching or on the order the pair is presented in: asked (b, a) the annotators give the same
answers as for (a, b).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence

import numpy as np

from alignlab.judges.base import Judgement, PairwiseJudge, check_pairs


def pair_uniform(seed: int, prompt: str, first: str, second: str, annotator: int = 0) -> float:
    """A uniform number in [0, 1) for the pair and annotator, from a hash; swapping first and second
    gives 1 − u."""
    a, b = (first, second) if first <= second else (second, first)
    parts = (str(seed), prompt, a, b) + ((str(annotator),) if annotator else ())
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    return u if first <= second else 1.0 - u


def bt_probability(delta: np.ndarray, temperature: float) -> np.ndarray:
    """σ(delta / temperature); at temperature 0 the step function (0.5 at delta = 0)."""
    delta = np.asarray(delta, dtype=np.float64)
    if temperature == 0:
        return np.where(delta > 0, 1.0, np.where(delta < 0, 0.0, 0.5))
    return 0.5 * (1.0 + np.tanh(delta / (2.0 * temperature)))  # = σ(delta / T), overflow-free


class GoldJudge(PairwiseJudge):
    """Labels pairs from the task's gold reward through a Bradley–Terry model with a noise temperature."""

    name = "gold"
    mode = "gold"  # no presentation order, so no position-bias metrics

    def __init__(
        self, temperature: float = 0.1, tie_margin: float = 0.0, seed: int = 0, task=None, annotators: int = 1
    ):
        """
        Args:
            temperature: Bradley–Terry temperature on the gold-reward difference; 0 = noiseless gold ordering.
            tie_margin: gold rewards that differ by at most this much make a tie.
            seed: seed of the simulated annotators' draws.
            task: a ``Task`` or a conf/task config; None until the label app calls ``set_task``.
            annotators: independent votes per pair; ``p_first`` is the share for the first completion.
        """
        if int(annotators) < 1:
            raise ValueError(f"judge.annotators={annotators} must be >= 1 (votes per pair)")
        if temperature < 0 or not math.isfinite(temperature):
            raise ValueError(f"judge.temperature={temperature} must be a finite number >= 0 (0 = noiseless)")
        if tie_margin < 0:
            raise ValueError(f"judge.tie_margin={tie_margin} must be >= 0")
        self.temperature = float(temperature)
        self.tie_margin = float(tie_margin)
        self.seed = int(seed)
        self.annotators = int(annotators)
        self.task = None
        self.seconds = 0.0
        if task is not None:
            self.set_task(task)

    def set_task(self, task) -> None:
        from alignlab.tasks import build_task, compose_task

        if isinstance(task, str):
            task = compose_task(task)
        elif not hasattr(task, "gold_scores"):  # a conf/task config
            task = build_task(task)
        if not hasattr(task, "gold_scores"):
            raise TypeError(f"judge=gold needs a task with gold_scores(); got {type(task).__name__}")
        from alignlab.evaluator import GOLD_TARGETS, has_gold, no_gold_error

        if not has_gold(task):  # a task without a gold reward: one line, the fix
            raise no_gold_error(task, *GOLD_TARGETS["alignlab.judges.gold.GoldJudge"])
        self.task = task

    def identity(self) -> str:
        task = "unbound" if self.task is None else f"{self.task.name}[{getattr(self.task, 'score_on', '')}]"
        m = f":m={self.annotators}" if self.annotators > 1 else ""
        return f"gold:{task}:T={self.temperature:g}:tie={self.tie_margin:g}:seed={self.seed}{m}"

    def judge_pairs(
        self, prompts: Sequence[str], firsts: Sequence[str], seconds: Sequence[str]
    ) -> list[Judgement]:
        check_pairs(prompts, firsts, seconds)
        if self.task is None:
            raise RuntimeError("judge=gold has no task: pass task=... or call set_task(task) first")
        t0 = time.perf_counter()
        r1 = np.asarray(self.task.gold_scores(list(prompts), list(firsts)), dtype=np.float64)
        r2 = np.asarray(self.task.gold_scores(list(prompts), list(seconds)), dtype=np.float64)
        # 1. P(first ≻ second) = σ((r₁ − r₂) / T)
        delta = r1 - r2
        p = bt_probability(np.nan_to_num(delta), self.temperature)
        meta = self._meta()
        out: list[Judgement] = []
        for i in range(len(prompts)):
            raw = f"gold_first={r1[i]:.6g} gold_second={r2[i]:.6g}"
            if not (math.isfinite(r1[i]) and math.isfinite(r2[i])):  # 2. no gold reward: invalid
                out.append(
                    {
                        "p_first": None,
                        "verdict": "invalid",
                        "p_forward": None,
                        "p_backward": None,
                        "raw": [raw],
                        **meta,
                    }
                )
                continue
            if abs(delta[i]) <= self.tie_margin:  # 3. ties stay ties
                pi, verdict = 0.5, "tie"
            else:  # 4. the annotators' votes: the label is their share, never the noise-free σ(Δ/T)
                us = [
                    pair_uniform(self.seed, prompts[i], firsts[i], seconds[i], k)
                    for k in range(self.annotators)
                ]
                pi = sum(u < p[i] for u in us) / self.annotators
                verdict = "first" if pi > 0.5 else "second" if pi < 0.5 else "tie"
                raw += f" p_bt={float(p[i]):.6g} votes_first={round(pi * self.annotators)}/{self.annotators}"
            out.append(
                {"p_first": pi, "verdict": verdict, "p_forward": pi, "p_backward": pi, "raw": [raw], **meta}
            )
        self.seconds += time.perf_counter() - t0
        return out

    def report_stats(self) -> dict:
        return {
            "temperature": self.temperature,
            "annotators": self.annotators,
            "tie_margin": self.tie_margin,
            "seconds": round(self.seconds, 3),
        }

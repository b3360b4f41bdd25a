"""``judge=gold``: simulated human annotators, Bradley–Terry noise over the task's gold reward.

Given gold rewards r₁, r₂ of the two completions, the annotator prefers the first with probability

    P(first ≻ second) = σ((r₁ − r₂) / temperature)

and the label is drawn from that Bernoulli, because real annotators disagree on close pairs. At
``temperature=0`` the label is the gold ordering itself (deterministic). Pairs whose gold rewards differ by
at most ``tie_margin`` are ties (p = 0.5, recorded as ``tie``, never given a random winner); a gold reward
that is not a finite number makes the pair ``invalid``.

The draw for a pair is a hash of (seed, prompt, the two completions), so it does not depend on batching
or on which order the pair is presented in: asked (b, a) the annotator gives the same answer as for (a, b).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence

import numpy as np

from alignlab.judges.base import Judgement, PairwiseJudge, check_pairs


def pair_uniform(seed: int, prompt: str, first: str, second: str) -> float:
    """A uniform number in [0, 1) for the pair, from a hash; swapping first and second gives 1 − u."""
    a, b = (first, second) if first <= second else (second, first)
    digest = hashlib.sha256("\x00".join((str(seed), prompt, a, b)).encode("utf-8")).digest()
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

    def __init__(self, temperature: float = 0.1, tie_margin: float = 0.0, seed: int = 0, task=None):
        """
        Args:
            temperature: Bradley–Terry temperature on the gold-reward difference; 0 = noiseless gold ordering.
            tie_margin: gold rewards that differ by at most this much make a tie.
            seed: seed of the simulated annotators' draws.
            task: a ``Task`` or registered task name; None until the label app calls ``set_task``.
        """
        if temperature < 0 or not math.isfinite(temperature):
            raise ValueError(f"judge.temperature={temperature} must be a finite number >= 0 (0 = noiseless)")
        if tie_margin < 0:
            raise ValueError(f"judge.tie_margin={tie_margin} must be >= 0")
        self.temperature = float(temperature)
        self.tie_margin = float(tie_margin)
        self.seed = int(seed)
        self.task = None
        self.seconds = 0.0
        if task is not None:
            self.set_task(task)

    def set_task(self, task) -> None:
        if isinstance(task, str):
            from alignlab.tasks import get_task

            task = get_task(task)
        if not hasattr(task, "gold_scores"):
            raise TypeError(f"judge=gold needs a task with gold_scores(); got {type(task).__name__}")
        self.task = task

    def identity(self) -> str:
        task = "unbound" if self.task is None else f"{self.task.name}[{getattr(self.task, 'score_on', '')}]"
        return f"gold:{task}:T={self.temperature:g}:tie={self.tie_margin:g}:seed={self.seed}"

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
            else:  # 4. one annotator's draw
                pi = float(p[i])
                u = pair_uniform(self.seed, prompts[i], firsts[i], seconds[i])
                verdict = "first" if u < pi else "second"
                raw += f" u={u:.6f}"
            out.append(
                {"p_first": pi, "verdict": verdict, "p_forward": pi, "p_backward": pi, "raw": [raw], **meta}
            )
        self.seconds += time.perf_counter() - t0
        return out

    def report_stats(self) -> dict:
        return {
            "temperature": self.temperature,
            "tie_margin": self.tie_margin,
            "seconds": round(self.seconds, 3),
        }

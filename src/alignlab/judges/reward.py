"""``judge=reward``: any reward function (``conf/reward``) as a pairwise judge: the completion it scores
higher wins. A reward model so becomes online DPO's labeller, and the toy ``char_fraction`` reward gives
the tiny model's pairs labels that are not all ties (``experiment=online_dpo_tiny``).

P(first ≻ second) = σ((r₁ − r₂) / temperature) (the step function at temperature 0); pairs whose scores
differ by at most ``tie_margin`` are ties (p = 0.5), never given a winner.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from alignlab.judges.base import Judgement, PairwiseJudge, bind_task, check_pairs
from alignlab.judges.gold import bt_probability


class RewardJudge(PairwiseJudge):
    """Labels a pair by the difference of a reward function's scores of its two completions."""

    name = "reward"
    mode = "gold"  # scores each text alone: no presentation order, so no position-bias metrics

    def __init__(self, reward, temperature: float = 0.0, tie_margin: float = 0.0):
        """
        Args:
            reward: the ``alignlab.rewards`` function whose scores decide.
            temperature: Bradley–Terry temperature of ``p_first`` on the score difference (0 = hard labels).
            tie_margin: scores that differ by at most this much make a tie.
        """
        if temperature < 0 or not math.isfinite(temperature) or tie_margin < 0:
            raise ValueError(
                f"judge.temperature={temperature} and judge.tie_margin={tie_margin} must be >= 0"
            )
        self.reward, self.temperature, self.tie_margin = reward, float(temperature), float(tie_margin)
        self.name = f"reward[{getattr(reward, 'name', type(reward).__name__)}]"
        self.seconds = 0.0

    def set_task(self, task) -> None:
        bind_task(self.reward, task)  # a reward that needs the task (a judge's P(yes)) gets it

    def identity(self) -> str:
        return f"{self.name}:T={self.temperature:g}:tie={self.tie_margin:g}"

    def judge_pairs(
        self, prompts: Sequence[str], firsts: Sequence[str], seconds: Sequence[str]
    ) -> list[Judgement]:
        check_pairs(prompts, firsts, seconds)
        t0 = time.perf_counter()
        r1 = np.asarray(self.reward(list(prompts), list(firsts)), dtype=np.float64)
        r2 = np.asarray(self.reward(list(prompts), list(seconds)), dtype=np.float64)
        delta = r1 - r2
        p = bt_probability(delta, self.temperature)
        meta, out = self._meta(), []
        for i in range(len(prompts)):
            tie = abs(delta[i]) <= self.tie_margin
            pi = 0.5 if tie else float(p[i])
            verdict = "tie" if tie else "first" if delta[i] > 0 else "second"
            raw = f"score_first={r1[i]:.6g} score_second={r2[i]:.6g}"
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

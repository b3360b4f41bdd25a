"""One interface for the rewards of online RL, and a wrapper that normalises and clips them.

A reward function maps (prompts, completions) texts to a (N,) float tensor of scores. Texts, not token
ids, so that any reward (a reward model with its own tokenizer, a task's gold scorer, a judge) plugs in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from alignlab.utils.errors import UserError


class NonFiniteRewardError(UserError, ValueError):
    """A reward returned NaN or ±inf; the message names the reward, the count and an example."""


def check_finite(scores: torch.Tensor, name: str, completions: Sequence[str]) -> torch.Tensor:
    """``scores`` (N,) unchanged when all are finite; else ``NonFiniteRewardError`` naming the reward, how
    many values, and the first such completion (cut to 80 characters)."""
    bad = (~torch.isfinite(scores)).nonzero().flatten().tolist()
    if not bad:
        return scores
    i, text = bad[0], str(completions[bad[0]])
    shown = text[:80] + ("..." if len(text) > 80 else "")
    raise NonFiniteRewardError(
        f"reward {name} returned {len(bad)} non-finite value(s) among {len(scores)} completions "
        f"({scores[i].item()} for completion {i}: {shown!r}); make it return finite numbers (a function: "
        "guard its divisions and parsing; a reward model: check its weights or retrain it)"
    )


class RewardFunction:
    """Scores completions. Subclasses implement ``__call__``; ``to`` moves any network they hold."""

    name: str = "reward"

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    def to(self, device) -> RewardFunction:
        return self

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class RunningMoments:
    """Running mean and variance over every score seen (Chan et al.'s parallel update)."""

    def __init__(self):
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 1.0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double().flatten()
        n = x.numel()
        if n == 0:
            return
        mean, var_sum = x.mean().item(), ((x - x.mean()) ** 2).sum().item()
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += var_sum + delta**2 * self.count * n / total
        self.count = total

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])


class NormalizedReward(RewardFunction):
    """Wraps a reward: scores are standardised with running statistics and/or clipped.

    The running statistics are state: ``state_dict``/``load_state_dict`` put them into checkpoints so a
    resumed run normalises exactly as the interrupted one would have.
    """

    def __init__(
        self,
        reward: RewardFunction,
        normalize: bool = True,
        clip: float | None = None,
    ):
        """
        Args:
            reward: the reward function to wrap.
            normalize: standardise with the running mean and std of all scores seen so far (this batch included).
            clip: clip the (normalised) score to [-clip, clip]; None disables.
        """
        if clip is not None and clip <= 0:
            raise ValueError(f"reward clip must be positive (got {clip})")
        self.reward = reward
        self.normalize = normalize
        self.clip = clip
        self.moments = RunningMoments()
        self.name = reward.name

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        return self.transform(self.score(prompts, completions))

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        """The wrapped reward's raw scores, checked finite where they are produced."""
        return check_finite(self.reward(prompts, completions), self.name, completions)

    def transform(
        self, scores: torch.Tensor, update: bool = True, pooled: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Normalise and clip raw ``scores`` (N,), updating the running statistics when ``update`` with
        ``pooled`` (e.g. every DDP rank's scores, so all ranks keep the same statistics) or ``scores``."""
        scores = scores.float()
        if self.normalize:
            if update:
                self.moments.update(scores if pooled is None else pooled)
            scores = (scores - self.moments.mean) / max(self.moments.std, 1e-6)
        if self.clip is not None:
            scores = scores.clamp(-self.clip, self.clip)
        return scores

    def to(self, device) -> NormalizedReward:
        self.reward.to(device)
        return self

    def state_dict(self) -> dict:
        return {"moments": self.moments.state_dict(), "inner": self.reward.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.moments.load_state_dict(state["moments"])
        self.reward.load_state_dict(state.get("inner", {}))


class CharFractionReward(RewardFunction):
    """A toy reward for tests and tiny runs: the share of completion characters in ``chars``."""

    def __init__(self, chars: str = "a", empty_score: float = 0.0):
        """
        Args:
            chars: the characters that count.
            empty_score: score of an empty completion.
        """
        if not chars:
            raise ValueError("CharFractionReward needs at least one character")
        self.chars = set(chars)
        self.empty_score = empty_score
        self.name = f"char_fraction[{chars}]"

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        return torch.tensor(
            [sum(ch in self.chars for ch in c) / len(c) if c else self.empty_score for c in completions],
            dtype=torch.float32,
        )

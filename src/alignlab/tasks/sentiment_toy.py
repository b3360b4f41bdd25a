"""``sentiment_toy``: the sentiment task's gold reward on 32 shipped synthetic prompts, for fast tests.

Same scorers and rubric as ``sentiment``; the prompts are ``resources/prompts_toy.jsonl`` ("The movie
was", "The plot felt", ...), split 24/4/4 by seed. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

from alignlab.resources import resource
from alignlab.tasks import prepare as prep
from alignlab.tasks.sentiment import SentimentTask


class SyntheticSentimentTask(SentimentTask):
    """Synthetic review openings (no download); gold reward = VADER compound."""

    name = "sentiment_toy"

    def __init__(
        self,
        prompt_template: str = "{opening}",
        val_fraction: float = 0.125,
        test_fraction: float = 0.125,
        **kwargs,
    ):
        """
        Args:
            prompt_template: how an opening becomes the prompt text; must contain ``{opening}``.
            val_fraction: share of the 32 prompts in the validation split.
            test_fraction: share of the 32 prompts in the test split.
            **kwargs: the other ``SentimentTask`` arguments (score_on, seed, cache_dir, ...).
        """
        kwargs.pop("archive", None)  # nothing to fetch
        super().__init__(
            prompt_template=prompt_template, val_fraction=val_fraction, test_fraction=test_fraction, **kwargs
        )

    def prepare(self, force: bool = False) -> Path:
        if not force and prep.split_paths(self.prompt_dir) is not None:
            return self.prompt_dir
        rows = [{"opening": r["prompt"]} for r in prep.read_jsonl(resource("prompts_toy.jsonl"))]
        prep.write_splits(
            self.prompt_dir, rows, self.params, self.prompt_template, {"source": "prompts_toy.jsonl"}
        )
        return self.prompt_dir

    def third_scores(self, prompts, completions) -> None:
        """None: the learned scorer is fitted on the human ratings of task sentiment's splits, not these."""
        return None

    def scorer_agreement(self) -> dict:
        raise NotImplementedError("sentiment_toy has no human ratings; use task sentiment")

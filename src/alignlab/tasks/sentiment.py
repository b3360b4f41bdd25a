"""The sentiment task: continue a real movie review so that the continuation is positive.

The offline counterpart of the DPO paper's IMDb experiment. Prompts are openings of human-rated
Rotten Tomatoes review sentences (prepared on first use, see ``alignlab.tasks.prepare``); the gold reward
is the VADER compound score of the completion; AFINN is reported beside it as a second scorer, and a
ridge model fitted on human ratings (``alignlab.tasks.learned_scorer``, no lexicon) as a third.

Prompt format (measured, see docs/sentiment_task.md): the prompt is the opening after a short header,
``Movie review: <opening>``, fed to the model as plain text (``use_chat_template: false``), so the model
continues the review and the completion is the rest of the review, which is what the gold reward scores.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from alignlab.tasks import prepare as prep
from alignlab.tasks.base import Task
from alignlab.tasks.learned_scorer import NgramRidge, RidgeRecipe, ensure_model
from alignlab.tasks.scorers import afinn_polarity, pearson, spearman, vader_compound
from alignlab.utils.io import write_json

RUBRIC = (
    "Both responses continue the same opening of a movie review. Prefer the continuation that expresses "
    "the more positive sentiment about the movie. Judge only the sentiment of the continuation, not its "
    "grammar, length or style."
)
SCORE_ON = ("completion", "prompt+completion")


class SentimentTask(Task):
    """Positive continuation of real movie-review openings; gold reward = VADER compound in [-1, 1]."""

    name = "sentiment"
    rubric = RUBRIC
    question = "Is the sentiment of this text positive?"  # what the tuned labeller was tuned to answer
    max_prompt_tokens = 64  # prompts are "Movie review: " + 2-8 words (under 32 tokens)
    max_new_tokens = 48
    labeller = "tuned_smollm2"  # tuned on the human ratings of this task's source (docs/rlaif.md)
    judge_data = "sentiment"  # what a tuned judge learns from: this task's human ratings (the toy's too)
    # how an untuned judge asks about one text (judge=smollm2_135m_pointwise): picked among 6 framings on
    # 100 human-rated review pairs (docs/rlaif.md); it sees the continuation only, what the gold reward scores
    pointwise = "Movie review: {text}\n\n{question} Answer yes or no."
    pointwise_question = "Is this movie review positive?"
    pointwise_includes_prompt = False
    principles = (  # constitution=task
        "Which continuation expresses a more positive opinion of the movie?",
        "Which continuation would make a reader more eager to watch the movie?",
        "Which continuation praises the movie more?",
    )
    splits = prep.SPLITS

    def __init__(
        self,
        score_on: str = "completion",
        prompt_template: str = "Movie review: {opening}",
        use_chat_template: bool = False,
        min_words: int = 2,
        max_words: int = 8,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        afinn_scale: float = 5.0,
        cache_dir: str | None = None,
        archive: str | None = None,
    ):
        """
        Args:
            score_on: ``completion`` (the gold reward sees the completion only) or ``prompt+completion``.
            prompt_template: how an opening becomes the prompt text; must contain ``{opening}``.
            use_chat_template: how the prompts are meant to be fed to a chat model (label/eval/data configs
                read it); false = plain-text continuation.
            min_words: shortest opening, in words.
            max_words: longest opening, in words.
            val_fraction: share of the distinct openings in the validation split.
            test_fraction: share of the distinct openings in the test split.
            seed: seed of the opening lengths and the split (part of the data set's identity, not the run's).
            afinn_scale: the second scorer is ``tanh(AFINN sum / afinn_scale)``.
            cache_dir: cache root; default ``$ALIGNLAB_CACHE`` or ``~/.cache/alignlab``.
            archive: a local ``vaderSentiment-3.3.2.tar.gz`` to read instead of fetching it with pip.
        """
        if score_on not in SCORE_ON:
            raise ValueError(f"task.score_on={score_on!r}: choose one of {', '.join(SCORE_ON)}")
        if "{opening}" not in prompt_template:
            raise ValueError(f"task.prompt_template={prompt_template!r} must contain {{opening}}")
        self.score_on = score_on
        self.prompt_template = prompt_template
        self.use_chat_template = use_chat_template
        self.afinn_scale = afinn_scale
        self.archive = archive
        self.params = {
            "min_words": min_words,
            "max_words": max_words,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "seed": seed,
        }
        if cache_dir is None:
            from alignlab.models.bundled import default_cache_dir

            cache_dir = str(default_cache_dir())
        self.task_dir = Path(cache_dir).expanduser() / "tasks" / self.name
        self._prompts: dict[str, list[str]] = {}
        self._learned: NgramRidge | None = None

    # -- prompts -----------------------------------------------------------------------------------------
    @property
    def prompt_dir(self) -> Path:
        """Where this parameter set's split files live (a hash of the parameters names it)."""
        return self.task_dir / f"prompts-{prep.params_hash(self.params, self.prompt_template)}"

    def prepare(self, force: bool = False) -> Path:
        """Build the split files once (fetching the source on first use); returns their directory."""
        if not force and prep.split_paths(self.prompt_dir) is not None:
            return self.prompt_dir
        ratings = prep.ensure_ratings(self.task_dir, self.archive, force=force)
        rows = prep.make_openings(
            prep.read_jsonl(ratings), self.params["min_words"], self.params["max_words"], self.params["seed"]
        )
        prep.write_splits(
            self.prompt_dir,
            rows,
            self.params,
            self.prompt_template,
            {"ratings_sha256": prep.file_sha256(ratings)},
        )
        print(f"[alignlab] {self.name}: {prep.describe(self.prompt_dir)}", flush=True)
        return self.prompt_dir

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ValueError(f"task {self.name!r} has splits {', '.join(self.splits)}; got split={split!r}")

    def prompt_file(self, split: str) -> str:
        self._check_split(split)
        return str(self.prepare() / f"{split}.jsonl")

    def prompts(self, split: str) -> list[str]:
        self._check_split(split)
        if split not in self._prompts:
            self._prompts[split] = [r["prompt"] for r in prep.read_jsonl(self.prompt_file(split))]
        return list(self._prompts[split])

    # -- rewards -----------------------------------------------------------------------------------------
    def _texts(self, prompts: Sequence[str], completions: Sequence[str]) -> list[str]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        if self.score_on == "completion":
            return list(completions)
        return [p + c for p, c in zip(prompts, completions)]

    def gold_scores(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """VADER compound of each completion (or prompt + completion), shape (N,), in [-1, 1]."""
        return vader_compound(self._texts(prompts, completions))

    def second_scores(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """tanh(AFINN sum / afinn_scale) of the same texts, shape (N,), in (-1, 1)."""
        return afinn_polarity(self._texts(prompts, completions), self.afinn_scale)

    def third_scores(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """The learned scorer of the same texts: ridge on word uni/bi-grams fitted on human ratings
        (``learned_scorer``), clip(predicted rating / 4, -1, 1), shape (N,); shares no lexicon with VADER."""
        texts = self._texts(prompts, completions)
        return self.learned_scorer().score(texts)

    def judge_tuning_data(self, sources: Sequence[str] | None = None):
        """The human ratings of the source archive's corpora (``sentiment_judge_data``): movie sentences of
        the train split only."""
        from alignlab.tasks.sentiment_judge_data import judge_tuning_data

        return judge_tuning_data(self, sources)

    def learned_scorer_rows(self, human_rows: list[dict]) -> list[dict]:
        """What the learned scorer is fitted on: the tweets, Amazon and NYT sentences, and the movie-review
        sentences of the task's train split only (never a sentence whose opening is a val/test prompt)."""
        from alignlab.tasks.human_ratings import MOVIES, movie_sentences_in_split

        train = movie_sentences_in_split(self, [r for r in human_rows if r["corpus"] == MOVIES], "train")
        return [r for r in human_rows if r["corpus"] != MOVIES] + train

    def learned_scorer(self, recipe: RidgeRecipe = RidgeRecipe()) -> NgramRidge:
        """The fitted learned scorer, cached under ``<task dir>/learned_scorer`` (a few seconds the first
        time; the human ratings are fetched with the source archive on first use)."""
        if self._learned is None or self._learned.recipe != recipe:
            from alignlab.tasks.human_ratings import ensure_human_ratings

            rows = self.learned_scorer_rows(
                prep.read_jsonl(ensure_human_ratings(self.task_dir, self.archive))
            )
            self._learned = ensure_model(
                self.task_dir / "learned_scorer",
                [r["text"] for r in rows],
                [r["rating"] for r in rows],
                recipe,
            )
        return self._learned

    def scorer_agreement(self) -> dict:
        """Pearson and Spearman correlation of each scorer with the mean human rating of the review
        sentences (all of them); written to ``<task dir>/agreement.json``."""
        self.prepare()
        rows = prep.read_jsonl(self.task_dir / "ratings.jsonl")
        texts, human = [r["text"] for r in rows], np.array([r["rating"] for r in rows])
        out: dict = {"sentences": len(rows), "scorers": {}}
        for name, fn in (
            ("vader_compound", vader_compound),
            (f"afinn_tanh_{self.afinn_scale:g}", lambda t: afinn_polarity(t, self.afinn_scale)),
        ):
            t0 = time.perf_counter()
            s = fn(texts)
            out["scorers"][name] = {
                "pearson": pearson(s, human),
                "spearman": spearman(s, human),
                "seconds": time.perf_counter() - t0,
            }
        write_json(self.task_dir / "agreement.json", out)
        return out

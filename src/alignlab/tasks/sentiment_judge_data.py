"""The sentiment task's judge tuning data (``SentimentTask.judge_tuning_data``): the human ratings of the
four corpora of its source archive (``alignlab.tasks.human_ratings``): tweets, Amazon and NYT sentences,
and the movie-review sentences of the task's **train** split only. The task's val/test prompts are openings
of the other movie sentences: a judge tuned on this data never sees them.
"""

from __future__ import annotations

from collections.abc import Sequence

from alignlab.tasks.human_ratings import CORPORA, MOVIES, ensure_human_ratings, movie_sentences_in_split
from alignlab.tasks.judge_data import JudgeData
from alignlab.tasks.prepare import file_sha256, read_jsonl


def training_sentences(task, sources: Sequence[str], human_rows: list[dict]) -> list[dict]:
    """The rated sentences of ``sources`` a judge may learn from: movie sentences of the train split only."""
    rows = [r for r in human_rows if r["corpus"] in sources and r["corpus"] != MOVIES]
    if MOVIES in sources:
        rows += movie_sentences_in_split(task, [r for r in human_rows if r["corpus"] == MOVIES], "train")
    return rows


def judge_tuning_data(task, sources: Sequence[str] | None = None) -> JudgeData:
    """``task``'s judge tuning data drawn from ``sources`` (None: all four corpora). Nothing is read or
    fetched until the tuning stage asks for the files' hashes or the rows."""
    from alignlab.utils.config import ConfigError

    sources = tuple(CORPORA if sources is None else sources)
    unknown = [s for s in sources if s not in CORPORA]
    if unknown:
        raise ConfigError(
            f"judge.model.tuning.corpora: {', '.join(unknown)} is not a corpus of task {task.name!r}; "
            f"choose among {', '.join(CORPORA)} (or null: all)"
        )

    def ratings():
        return ensure_human_ratings(task.task_dir, getattr(task, "archive", None))

    def files() -> dict[str, str]:
        return {"ratings": file_sha256(ratings()), "train_prompts": file_sha256(task.prompt_file("train"))}

    return JudgeData(sources, files, lambda: training_sentences(task, sources, read_jsonl(ratings())))

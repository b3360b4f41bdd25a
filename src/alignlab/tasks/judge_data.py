"""What a task hands a judge to be tuned on (``Task.judge_tuning_data``): human judgements of single texts.

The tuning stage (``alignlab.judges.tuning``) turns each row into a yes/no question about its text and
answers it with the sign of the human vote; it reads nothing else about the task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class JudgeData:
    """Human judgements of single texts, read only when a judge is tuned."""

    sources: tuple[str, ...]
    """The sources the rows are drawn from, in a fixed order (part of the tuned judge's recipe and key)."""
    files: Callable[[], dict[str, str]]
    """Name -> SHA-256 of each file the rows come from (part of the tuned judge's key; may fetch them)."""
    rows: Callable[[], list[dict]]
    """The rows ``{corpus, id, text, rating, ratings}``: ``corpus`` one of ``sources``, ``rating`` the mean
    human rating (its sign is the vote; 0: no vote), ``ratings`` each rater's vote or None."""

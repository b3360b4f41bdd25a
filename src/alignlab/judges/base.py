"""The one pairwise-judge interface: every labeller (gold oracle, local LM, HTTP server) answers it.

``judge.judge_pairs(prompts, firsts, seconds)`` returns, for each pair, a ``Judgement`` dict:

* ``p_first``: P(first ≻ second) in [0, 1] (None when the judge could not answer);
* ``verdict``: ``first``, ``second``, ``tie`` or ``invalid`` (an unparseable or missing answer is
  ``invalid``, never a verdict);
* ``p_forward`` / ``p_backward``: P(first ≻ second) read from each presentation order alone (first shown
  first, then swapped), so position bias can be measured; a judge without an order gives the same value
  twice, a pointwise judge P(yes) of each text;
* provenance: ``judge`` (identity: changes whenever the labels could), ``judge_name``, ``template_hash``
  (None when no prompt template is involved) and ``raw`` (the raw outputs, as strings).

A judge also has ``identity()``, ``template_hash()``, ``set_task(task)`` (called by the label app before
judging: LLM judges take the task's rubric, the gold judge its gold reward), ``report_stats()`` (calls,
cache hits, seconds, ... copied into the labelling report) and ``mode`` (``pairwise`` judges get
position-bias metrics in the report). Subclass ``PairwiseJudge``, or provide the same methods.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypedDict

VERDICTS = ("first", "second", "tie", "invalid")


class Judgement(TypedDict):
    """One pair's label and where it came from."""

    p_first: float | None
    verdict: str
    p_forward: float | None
    p_backward: float | None
    raw: list[str]
    judge: str
    judge_name: str
    template_hash: str | None


class PairwiseJudge:
    """Base class of pairwise judges: implement ``identity`` and ``judge_pairs``."""

    name: str = "judge"
    mode: str = "pairwise"

    def identity(self) -> str:
        """A string that changes whenever the labels could change (model, settings, scorer)."""
        raise NotImplementedError

    def template_hash(self) -> str | None:
        """Hash of the prompt template the judge is asked with (None: no template)."""
        return None

    def set_rubric(self, rubric: str | None) -> None:
        """Use ``rubric`` as the judging criterion (judges that read no rubric ignore it)."""

    def set_task(self, task) -> None:
        """Bind the task being labelled (by default: take its rubric)."""
        self.set_rubric(getattr(task, "rubric", None))

    def judge_pairs(
        self, prompts: Sequence[str], firsts: Sequence[str], seconds: Sequence[str]
    ) -> list[Judgement]:
        """One ``Judgement`` per (prompt, first, second)."""
        raise NotImplementedError

    def report_stats(self) -> dict:
        """Counters for the labelling report (calls, cache hits, seconds, ...)."""
        return {}

    def _meta(self) -> dict:
        return {"judge": self.identity(), "judge_name": self.name, "template_hash": self.template_hash()}


def pair_confidence(result: dict, mode: str = "pairwise") -> float:
    """How sure a judgement is, in [0.5, 1]: max(p, 1 − p) of ``p_first``; for a pairwise judgement asked
    in both orders, the smaller of the two single-order confidences when both orders lean the same way,
    0.5 when they disagree (``judge.min_confidence`` keeps a pair only when it is sure in both orders)."""
    p = result.get("p_first")
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return 0.5
    conf = max(p, 1.0 - p)
    fwd, bwd = result.get("p_forward"), result.get("p_backward")
    if mode == "pairwise" and fwd is not None and bwd is not None and fwd != bwd:
        if (fwd - 0.5) * (bwd - 0.5) <= 0:
            return 0.5
        conf = min(max(fwd, 1.0 - fwd), max(bwd, 1.0 - bwd))
    return conf


def bind_task(judge, task) -> None:
    """Give ``judge`` the task it labels for: ``set_task`` when it has one, else ``set_rubric``."""
    if hasattr(judge, "set_task"):
        judge.set_task(task)
    elif hasattr(judge, "set_rubric"):
        judge.set_rubric(getattr(task, "rubric", None))


def check_pairs(prompts: Sequence[str], firsts: Sequence[str], seconds: Sequence[str]) -> None:
    if not (len(prompts) == len(firsts) == len(seconds)):
        raise ValueError(
            f"judge got {len(prompts)} prompts, {len(firsts)} first and {len(seconds)} second completions"
        )


def check_judgements(results: Sequence[dict], n: int, who: str = "judge") -> None:
    """Fail loudly when a judge breaks the interface (wrong count, unknown verdict, p outside [0, 1])."""
    if len(results) != n:
        raise ValueError(f"{who} returned {len(results)} judgements for {n} pairs")
    for i, r in enumerate(results):
        v, p = r.get("verdict"), r.get("p_first")
        if v not in VERDICTS:
            raise ValueError(f"{who}: pair {i} has verdict {v!r}; expected one of {', '.join(VERDICTS)}")
        if v != "invalid" and (p is None or not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0)):
            raise ValueError(f"{who}: pair {i} has verdict {v!r} but p_first={p!r} (need a number in [0, 1])")
        if p is not None and isinstance(p, float) and math.isnan(p) and v != "invalid":
            raise ValueError(f"{who}: pair {i} has p_first=nan with verdict {v!r}")

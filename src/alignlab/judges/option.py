"""Judges that read an answer as a choice between options: the shared base of the local and HTTP judges.

``OptionJudge`` holds what every LLM judge shares: queries from a template, the cache, and how answers
combine into P(first ≻ second):

* ``pairwise``: the judge sees both responses and picks A or B. Each comparison is asked **in both
  orders** and the two probabilities averaged, as in RLAIF (Lee et al. 2023), so position bias cancels
  instead of deciding the label; the single-order probabilities are kept to measure that bias.
* ``pointwise``: the judge sees each response alone and answers yes/no ("is this review positive?");
  P(first ≻ second) = σ(logit P(yes|first) − logit P(yes|second)), a Bradley–Terry comparison of the two
  log-odds. No order, hence no position bias. (Small models that cannot compare two texts can often
  still answer this question.)

A verdict is ``tie`` when |P − 0.5| ≤ ``tie_margin``, and also (``unsure: true``) when the judge is less
sure than ``min_confidence`` (``alignlab.judges.base.pair_confidence``: pairwise, in both orders);
``invalid`` when an answer gave no probability. Neither ever becomes a training preference.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from alignlab.judges.base import Judgement, PairwiseJudge, check_pairs, pair_confidence
from alignlab.judges.cache import JudgeCache, cache_key
from alignlab.judges.templates import JudgeTemplate, text_hash
from alignlab.utils.config import config_children
from alignlab.utils.errors import ConfigError

MODES = ("pairwise", "pointwise")


@dataclass
class Query:
    """One question to the judge: chat messages and the options its answer must be one of."""

    messages: list[dict]
    options: tuple[str, ...]


@dataclass
class JudgeStats:
    """What a judge spent: model calls (forward batches or HTTP requests), queries computed, seconds."""

    calls: int = 0
    queries: int = 0
    seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    extra: dict = field(default_factory=dict)


def verdict_of(p: float | None, tie_margin: float) -> str:
    """``first``/``second``/``tie`` from P(first ≻ second); ``invalid`` when there is no probability."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "invalid"
    if p > 0.5 + tie_margin:
        return "first"
    if p < 0.5 - tie_margin:
        return "second"
    return "tie"


def _logit(p: float, eps: float = 1e-6) -> float:
    p = min(max(p, eps), 1 - eps)
    return math.log(p / (1 - p))


def check_bound_task(judge, task) -> None:
    """One line when ``judge`` is made for other tasks than ``task`` (``judge.bound_tasks``), or needs a task
    setting that ``task`` leaves unset (``judge.task_requires``, e.g. ``judge_data``: its tuning data)."""
    bound = list(getattr(judge, "bound_tasks", None) or [])
    name = getattr(task, "name", None)
    for key in getattr(judge, "task_requires", None) or []:
        if getattr(task, key, None) in (None, "", (), []):
            raise ConfigError(
                f"judge {judge.name!r} needs the task's {key} setting (judge.task_requires: its recipe is "
                f"made from it) and task {name!r} has none; label with another conf/judge option (judge=...) "
                f"or set task.{key} (docs/tasks.md)"
            )
    if bound and name not in bound:
        raise ConfigError(
            f"judge {judge.name!r} is made for task {' / '.join(bound)} (judge.bound_tasks: its recipe asks "
            f"about that task), not task {name!r}; label with the task's own labeller "
            f"({getattr(task, 'labeller', None)!r}: drop the judge override) or another conf/judge option"
        )


def check_bound_judges(node, task) -> None:
    """``check_bound_task`` for every judge config in ``node`` (a stage's config), before anything loads."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if task is None:
        return
    if isinstance(node, DictConfig):
        if (node.get("bound_tasks") or node.get("task_requires")) and "_target_" in node:
            keys = ("bound_tasks", "task_requires")
            found = {k: OmegaConf.to_container(node[k], resolve=True) if node.get(k) else None for k in keys}
            target = str(node._target_).rsplit(".", 1)[-1]
            check_bound_task(type("judge", (), {"name": target, **found})(), task)
    elif not isinstance(node, ListConfig):
        return
    for child in config_children(node):
        check_bound_judges(child, task)


class OptionJudge(PairwiseJudge):
    """Base of LLM judges: subclasses implement ``_answer(queries) -> [{"probs": [..] | None, "raw": str}]``
    and ``identity()``; ``judge`` handles templates, both orders, the cache and the combination."""

    name = "option_judge"

    def __init__(
        self,
        template: JudgeTemplate | None = None,
        mode: str = "pairwise",
        both_orders: bool = True,
        tie_margin: float = 0.0,
        batch_size: int = 8,
        cache_path: str | None = None,
        max_text_chars: int = 2000,
        min_confidence: float = 0.5,
    ):
        """
        Args:
            template: questions and options; its rubric is replaced by the task's when ``set_rubric`` is called.
            mode: ``pairwise`` (pick A or B, both orders averaged) or ``pointwise`` (yes/no per text).
            both_orders: ask each comparison in both orders (pairwise); False asks (first, second) only.
            tie_margin: |P(first ≻ second) − 0.5| at or below this is a tie.
            batch_size: queries per model call (local) or per cache commit (HTTP).
            cache_path: SQLite cache file; None keeps judgements in memory for this process only.
            max_text_chars: each prompt and response shown to the judge is cut to this many characters.
            min_confidence: a pair the judge is less sure of (``pair_confidence``, in [0.5, 1]) is a tie
                marked ``unsure``; 0.5 keeps every decided pair.
        """
        if mode not in MODES:
            raise ConfigError(f"judge.mode={mode!r}: choose one of {', '.join(MODES)}")
        if not 0 <= tie_margin < 0.5:
            raise ConfigError(f"judge.tie_margin={tie_margin} must be in [0, 0.5)")
        if batch_size < 1:
            raise ConfigError(f"judge.batch_size={batch_size} must be >= 1")
        if not 0.5 <= min_confidence < 1:
            raise ConfigError(
                f"judge.min_confidence={min_confidence} must be in [0.5, 1) (0.5: keep every pair)"
            )
        self.template = template if template is not None else JudgeTemplate()
        self.mode = mode
        self.both_orders = both_orders
        self.tie_margin = tie_margin
        self.batch_size = batch_size
        self.max_text_chars = max_text_chars
        self.min_confidence = min_confidence
        self.cache = JudgeCache(cache_path)
        self.stats = JudgeStats()

    # -- subclass hooks ---------------------------------------------------------------------------------
    def identity(self) -> str:
        raise NotImplementedError

    def _answer(self, queries: list[Query]) -> list[dict]:
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------------------
    def set_rubric(self, rubric: str | None) -> None:
        """Use a task's rubric as the criterion (no effect when the template has a constitution)."""
        if rubric:
            self.template.rubric = rubric

    def set_task(self, task, pointwise: bool = False) -> None:
        """Judge for ``task``: its rubric, and its yes/no question when asked pointwise (``mode`` or
        ``pointwise``) and the template has no question of its own. A judge whose recipe is made for
        other tasks (``bound_tasks``) refuses with one line."""
        check_bound_task(self, task)
        self.set_rubric(getattr(task, "rubric", None))
        question = getattr(task, "question", None)
        if question and self.template.question is None and (pointwise or self.mode == "pointwise"):
            self.template.question = question

    def template_hash(self) -> str:
        return text_hash(self.template.hash(), self.mode, self.max_text_chars)

    def _run(self, keys: list[str], kinds: list[str], queries: list[Query]) -> list[dict]:
        def compute(idx: list[int]) -> list[dict]:
            t0 = time.perf_counter()
            out = self._answer([queries[i] for i in idx])
            self.stats.seconds += time.perf_counter() - t0
            self.stats.queries += len(idx)
            return out

        return self.cache.map(
            keys, compute, (self.identity(), self.template_hash()), kinds, batch_size=self.batch_size
        )

    def judge_pairs(
        self, prompts: Sequence[str], firsts: Sequence[str], seconds: Sequence[str]
    ) -> list[Judgement]:
        """Per pair: ``p_first`` = P(first ≻ second), ``verdict`` (first/second/tie/invalid), ``p_forward``
        and ``p_backward`` (P(first ≻ second) from each order alone; pointwise: P(yes) of first/second),
        ``raw`` (raw outputs), ``judge`` and ``template_hash``."""
        check_pairs(prompts, firsts, seconds)
        jid, th, t = self.identity(), self.template_hash(), self.template
        n = self.max_text_chars
        prompts, firsts, seconds = ([x[:n] for x in xs] for xs in (prompts, firsts, seconds))
        if self.mode == "pointwise":
            keys, kinds, queries = [], [], []
            for p, a, b in zip(prompts, firsts, seconds):
                crit = t.criterion(p, a, b)
                for text in (a, b):
                    keys.append(cache_key(jid, th, "point", p, text, crit))
                    kinds.append("point")
                    queries.append(Query(t.pointwise_messages(p, text, crit), t.yes_no))
            answers = self._run(keys, kinds, queries)
            return [self._combine_pointwise(answers[2 * i], answers[2 * i + 1]) for i in range(len(prompts))]
        keys, kinds, queries = [], [], []
        for p, a, b in zip(prompts, firsts, seconds):
            crit = t.criterion(p, a, b)
            for x, y in ((a, b), (b, a)) if self.both_orders else ((a, b),):
                keys.append(cache_key(jid, th, "pair", p, x, y))
                kinds.append("pair")
                queries.append(Query(t.pairwise_messages(p, x, y, crit), t.options))
        answers = self._run(keys, kinds, queries)
        k = 2 if self.both_orders else 1
        return [self._combine_pairwise(answers[k * i : k * i + k]) for i in range(len(prompts))]

    def _combine_pairwise(self, answers: list[dict]) -> dict:
        fwd = answers[0]["probs"][0] if answers[0]["probs"] is not None else None
        bwd = None
        if len(answers) > 1:  # the swapped order: the first response was shown as B
            bwd = answers[1]["probs"][1] if answers[1]["probs"] is not None else None
        vals = [fwd] if len(answers) == 1 else [fwd, bwd]
        p = None if any(v is None for v in vals) else sum(vals) / len(vals)
        return self._judgement(p, fwd, bwd, [a["raw"] for a in answers])

    def _combine_pointwise(self, a: dict, b: dict) -> dict:
        ya = a["probs"][0] if a["probs"] is not None else None
        yb = b["probs"][0] if b["probs"] is not None else None
        p = None
        if ya is not None and yb is not None:
            p = 0.5 if ya == yb else 1 / (1 + math.exp(-(_logit(ya) - _logit(yb))))
        return self._judgement(p, ya, yb, [a["raw"], b["raw"]])

    def _judgement(self, p: float | None, fwd: float | None, bwd: float | None, raw: list[str]) -> dict:
        """The verdict from P(first ≻ second): a tie within ``tie_margin``, an ``unsure`` tie below
        ``min_confidence``."""
        out = {"p_first": p, "verdict": verdict_of(p, self.tie_margin), "p_forward": fwd, "p_backward": bwd}
        out.update(raw=raw, **self._meta())
        if out["verdict"] in ("first", "second") and pair_confidence(out, self.mode) < self.min_confidence:
            out["verdict"], out["unsure"] = "tie", True
        return out

    def report_stats(self) -> dict:
        s = self.stats
        return {
            "calls": s.calls,
            "queries": s.queries,
            "seconds": round(s.seconds, 3),
            "prompt_tokens": s.prompt_tokens,
            "completion_tokens": s.completion_tokens,
            "retries": s.retries,
            **self.cache.stats(),
            **s.extra,
        }

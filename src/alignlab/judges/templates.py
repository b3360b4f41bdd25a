"""What a judge is asked, and how its answer is read.

A template renders one *query* (a list of chat messages) per comparison, per order, or per single text,
and names the option strings the answer must be one of ("A"/"B", "yes"/"no", "1".."10"). Answers are read
from the option tokens' log-probabilities where available; otherwise a strict parser accepts only an
answer that is exactly one option (optionally after ``Answer:``), and anything else is *invalid*, never a
verdict. Constitutions (Bai et al. 2022) are lists of principles; one is sampled per comparison
(deterministically from the comparison itself, so a resumed run asks the same question) or all are used.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from alignlab.utils.hashing import stable_hash

PAIRWISE_SYSTEM = "You are a careful annotator. You compare two responses and answer with a single letter."
PAIRWISE_USER = (
    "{criterion}\n\nPrompt: {prompt}\n\nResponse A: {first}\n\nResponse B: {second}\n\n"
    "Which response is better according to the criterion? Answer with A or B only."
)
POINTWISE_USER = "Text: {text}\n\n{question} Answer yes or no."
SCORE_USER = (
    "{criterion}\n\nPrompt: {prompt}\n\nResponse: {text}\n\n"
    "Rate the response from 1 (worst) to 10 (best) according to the criterion. Answer with the number only."
)
COT_SUFFIX = " First explain your reasoning in one or two sentences, then give the answer on its own line as 'Answer: <option>'."


def text_hash(*parts: object) -> str:
    """A short stable hash of JSON-serialisable parts."""
    return stable_hash(parts, ensure_ascii=False)


@dataclass
class Constitution:
    """A Constitutional-AI style list of principles, used as the judging criterion."""

    principles: list[str] = field(default_factory=list)
    """The principles, each one sentence a judge can apply to a comparison."""
    mode: str = "sample"
    """``sample``: one principle per comparison (chosen from a hash of the comparison); ``all``: all of them."""
    seed: int = 0
    """Changes which principle each comparison gets in ``sample`` mode."""

    def __post_init__(self):
        if self.mode not in ("sample", "all"):
            raise ValueError(f"constitution.mode={self.mode!r}: choose sample or all")
        if not self.principles:
            from alignlab.utils.errors import ConfigError

            raise ConfigError(
                "constitution.principles is empty; give at least one principle (constitution=task reads "
                "the task's principles setting: set it in the task's YAML, or choose another constitution)"
            )

    def criterion(self, prompt: str, first: str, second: str) -> str:
        if self.mode == "all":
            return "Consider all of these principles:\n" + "\n".join(f"- {p}" for p in self.principles)
        # order-independent, so both orders of one comparison get the same principle
        key = text_hash(self.seed, prompt, *sorted([first, second]))
        return self.principles[int(key, 16) % len(self.principles)]


@dataclass
class JudgeTemplate:
    """The questions a judge is asked. ``{criterion}`` is the rubric or a constitution's principle."""

    rubric: str = "Which response is more helpful, honest and harmless?"
    """The judging criterion (the task's rubric by default); ignored when a constitution is given."""
    system: str | None = PAIRWISE_SYSTEM
    """System message (None: no system message)."""
    pairwise: str = PAIRWISE_USER
    """User message of a pairwise query: ``{criterion} {prompt} {first} {second}``."""
    options: tuple[str, str] = ("A", "B")
    """Answer options of a pairwise query: (first is better, second is better)."""
    pointwise: str = POINTWISE_USER
    """User message of a pointwise query: ``{text}`` (prompt + response when shown) and ``{question}``."""
    question: str | None = None
    """The yes/no question of a pointwise query (the task's ``question`` by default); None: the criterion."""
    yes_no: tuple[str, str] = ("yes", "no")
    """Answer options of a pointwise query (positive, negative)."""
    pointwise_includes_prompt: bool = True
    """Show the prompt before the completion in pointwise queries (the text is judged as a whole)."""
    score: str = SCORE_USER
    """User message of a 1-10 score query (direct RLAIF): ``{criterion} {prompt} {text}``."""
    chain_of_thought: bool = False
    """Ask for a short rationale before the answer (the answer is then scored after the rationale)."""
    constitution: Constitution | None = None
    """Principles used instead of the rubric."""

    def __post_init__(self):
        if isinstance(self.constitution, dict):
            self.constitution = Constitution(**self.constitution)
        self.options = tuple(self.options)
        self.yes_no = tuple(self.yes_no)
        if len(self.options) != 2 or self.options[0] == self.options[1]:
            raise ValueError(f"template.options={self.options!r} must be two different strings")
        if len(self.yes_no) != 2 or self.yes_no[0] == self.yes_no[1]:
            raise ValueError(f"template.yes_no={self.yes_no!r} must be two different strings")

    def hash(self) -> str:
        """Hash of everything that changes what the judge is asked (stored with every label)."""
        d = asdict(self)
        return text_hash(d)

    def criterion(self, prompt: str, first: str, second: str) -> str:
        if self.constitution is not None:
            return self.constitution.criterion(prompt, first, second)
        return self.rubric

    def _messages(self, user: str) -> list[dict]:
        if self.chain_of_thought:
            user = (
                user.replace(" Answer with A or B only.", "").replace(" Answer yes or no.", "") + COT_SUFFIX
            )
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return [*msgs, {"role": "user", "content": user}]

    def pairwise_messages(self, prompt: str, first: str, second: str, criterion: str) -> list[dict]:
        """One order of a comparison: ``first`` is shown as option A."""
        return self._messages(
            self.pairwise.format(criterion=criterion, prompt=prompt, first=first, second=second)
        )

    def pointwise_messages(self, prompt: str, text: str, criterion: str) -> list[dict]:
        shown = join_text(prompt, text) if self.pointwise_includes_prompt else text
        question = self.question or criterion
        return self._messages(self.pointwise.format(criterion=criterion, text=shown, question=question))

    def score_messages(self, prompt: str, text: str, criterion: str) -> list[dict]:
        return self._messages(self.score.format(criterion=criterion, prompt=prompt, text=text))


def join_text(prompt: str, completion: str) -> str:
    """Prompt and completion as one text, with a space between them unless one is already there."""
    if not prompt or not completion or prompt[-1].isspace() or completion[0].isspace():
        return prompt + completion
    return prompt + " " + completion


def render_plain(messages: Sequence[dict], answer: bool = True) -> str:
    """Messages as plain text for models without a chat template; ends with ``Answer:`` when ``answer``."""
    text = "\n\n".join(m["content"] for m in messages)
    return text + ("\n\nAnswer:" if answer else "\n\n")


_PREFIX = re.compile(r"^\W*answer\W*[:：]", re.I)


def parse_answer(text: str | None, options: Sequence[str], chain_of_thought: bool = False) -> int | None:
    """Strictly read which option an answer names: its index, or None (invalid) when it is not exactly one.

    Without chain of thought the whole answer must be the option, up to case, surrounding punctuation and
    an ``Answer:`` prefix (``"A"``, ``"A."``, ``"(b)"``, ``"Answer: B"``); with chain of thought the last
    non-empty line must be ``Answer: <option>``. "A or B", "Response A" and empty answers are invalid.
    """
    if text is None:
        return None
    text = text.strip()
    if chain_of_thought:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if not lines or not _PREFIX.match(lines[-1]):
            return None
        text = lines[-1]
    text = _PREFIX.sub("", text).strip().strip("\"'()[]*.:,!` ").strip()
    hits = [i for i, o in enumerate(options) if o.lower() == text.lower()]
    return hits[0] if len(hits) == 1 else None


def option_logprobs_from_top(top: Sequence[tuple[str, float]], options: Sequence[str]) -> list[float] | None:
    """Aggregate an API's top log-probs (token string, logprob) per option: logsumexp over the tokens that
    spell the option (case-insensitive, surrounding whitespace ignored). None when no option appears."""
    out: list[float] = []
    for opt in options:
        lps = [lp for tok, lp in top if tok.strip().lower() == opt.lower()]
        out.append(_logsumexp(lps) if lps else -math.inf)
    return None if all(x == -math.inf for x in out) else out


def _logsumexp(xs: Sequence[float]) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def normalise(logps: Sequence[float]) -> list[float]:
    """Probabilities of the options renormalised over the options only."""
    z = _logsumexp(logps)
    return [math.exp(lp - z) for lp in logps]

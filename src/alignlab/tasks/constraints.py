"""Verifiable constraints of the instruction-following task: how each is stated, parsed back and checked.

Each constraint kind has one English sentence (``Constraint.text``), one regular expression that reads
that sentence back out of a prompt (``parse_constraints``), and one exact checker of a response
(``check``). The checkers are programmatic and deterministic; their definitions:

* a *word* is a maximal run of letters, digits, apostrophes or hyphens that holds at least one letter or
  digit (unicode-aware: "café" and "naïve" are one word each; "--" and "—" are none);
* an *empty* response (no word at all) satisfies no constraint, so silence never earns reward;
* keywords match as whole words, case-insensitively, also with a plural "s"/"es" ("ocean" matches
  "Oceans" but not "oceanic");
* a *sentence* is a part of the text, between runs of ``.``, ``!`` or ``?`` followed by whitespace or the
  end, that holds a word: an unfinished last sentence counts, "..." alone does not, "2.5" is no end, and
  abbreviations such as "e.g." are ends;
* a *bullet* is a line whose first non-space character is ``-``, ``*`` or ``•`` followed by a space and
  text; the other lines do not count;
* the first word and the final character are read after stripping surrounding whitespace; the first
  word is compared case-insensitively, without quotes, ``*``, ``#`` or trailing punctuation.

``PRODUCTIVE`` kinds ask for something the response must contain (a length, a word, a form), so no fixed
short reply passes them all; every prompt's first constraint is one of them (``alignlab.tasks.instruct``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_WORD = re.compile(r"[\w'’-]*\w[\w'’-]*")  # \w is unicode-aware
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
_BULLET = re.compile(r"^\s*[-*•]\s+\S")
_COMMAS = (",", "，", "、")  # ASCII, fullwidth and ideographic commas
_PUNCT_NAME = {"!": "an exclamation mark", "?": "a question mark", ".": "a period"}

KINDS = (
    "min_words",
    "include_keyword",
    "n_sentences",
    "bullets",
    "starts_with",
    "max_words",
    "lowercase",
    "avoid_keyword",
    "no_commas",
    "end_punct",
)
PRODUCTIVE = ("min_words", "include_keyword", "n_sentences", "bullets", "starts_with")
# pairs of kinds that never share a prompt (contradictory, or ill-defined together)
CONFLICTS = frozenset(
    frozenset(p)
    for p in (
        ("min_words", "max_words"),
        ("bullets", "n_sentences"),
        ("bullets", "starts_with"),
        ("bullets", "end_punct"),
    )
)


@dataclass(frozen=True)
class Constraint:
    """One verifiable instruction: its kind and argument (a number, a word, a character or None)."""

    kind: str
    arg: int | str | None = None

    @property
    def text(self) -> str:
        """The instruction as stated in the prompt (``parse_constraints`` reads it back)."""
        k, a = self.kind, self.arg
        return {
            "min_words": f"Answer with at least {a} words.",
            "max_words": f"Answer with at most {a} words.",
            "include_keyword": f'Include the word "{a}" in your response.',
            "avoid_keyword": f'Do not use the word "{a}".',
            "n_sentences": f"Answer in exactly {a} sentences.",
            "bullets": f'Answer with a bullet list of exactly {a} items, each line starting with "- ".',
            "starts_with": f'Start your response with the word "{a}".',
            "lowercase": "Write your whole response in lowercase letters.",
            "no_commas": "Do not use any commas.",
            "end_punct": f"End your response with {_PUNCT_NAME.get(str(a), repr(a))}.",
        }[k]

    def check(self, response: str) -> bool:
        """Whether ``response`` satisfies this constraint (exact; see the module doc)."""
        return CHECKERS[self.kind](response, self.arg)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "arg": self.arg}


# -- the checkers: (response, arg) -> bool ---------------------------------------------------------------
def words(text: str) -> list[str]:
    """The words of ``text`` (runs of letters/digits with inner apostrophes or hyphens)."""
    return _WORD.findall(text)


def _has_word(text: str, word: str) -> bool:
    pattern = rf"(?<![\w'’-]){re.escape(word)}(?:e?s)?(?![\w'’-])"
    return re.search(pattern, text, flags=re.IGNORECASE) is not None


def count_sentences(text: str) -> int:
    """Sentences of ``text``: the parts between runs of end punctuation that hold a word."""
    return sum(1 for part in _SENTENCE_END.split(text) if words(part))


def count_bullets(text: str) -> int:
    return sum(1 for line in text.splitlines() if _BULLET.match(line))


def first_word(text: str) -> str:
    """The first word of ``text``, with leading quotes, ``*``/``#`` markup and its punctuation stripped."""
    head = text.strip().lstrip("\"'“‘*#_ \t")
    found = _WORD.match(head)
    return found.group(0).strip("'’-") if found else ""


def _nonempty(fn):
    def checker(text: str, arg) -> bool:
        return bool(words(text)) and fn(text, arg)

    checker.__name__ = fn.__name__
    checker.__doc__ = fn.__doc__
    return checker


@_nonempty
def min_words(text: str, n) -> bool:
    """At least ``n`` words."""
    return len(words(text)) >= int(n)


@_nonempty
def max_words(text: str, n) -> bool:
    """At most ``n`` words."""
    return len(words(text)) <= int(n)


@_nonempty
def include_keyword(text: str, word) -> bool:
    """``word`` (or its plural) appears as a whole word, any case."""
    return _has_word(text, str(word))


@_nonempty
def avoid_keyword(text: str, word) -> bool:
    """``word`` (or its plural) does not appear as a whole word, in any case."""
    return not _has_word(text, str(word))


@_nonempty
def n_sentences(text: str, n) -> bool:
    """Exactly ``n`` sentences."""
    return count_sentences(text) == int(n)


@_nonempty
def bullets(text: str, n) -> bool:
    """Exactly ``n`` bullet lines."""
    return count_bullets(text) == int(n)


@_nonempty
def starts_with(text: str, word) -> bool:
    """The first word is ``word`` (any case)."""
    return first_word(text).casefold() == str(word).casefold()


@_nonempty
def lowercase(text: str, _arg=None) -> bool:
    """No uppercase letter anywhere (unicode: "É" counts as uppercase)."""
    return not any(ch.isupper() for ch in text)


@_nonempty
def no_commas(text: str, _arg=None) -> bool:
    """No comma (ASCII, fullwidth or ideographic)."""
    return not any(c in text for c in _COMMAS)


@_nonempty
def end_punct(text: str, mark) -> bool:
    """The last non-space character is ``mark``."""
    return text.rstrip().endswith(str(mark))


CHECKERS = {
    "min_words": min_words,
    "max_words": max_words,
    "include_keyword": include_keyword,
    "avoid_keyword": avoid_keyword,
    "n_sentences": n_sentences,
    "bullets": bullets,
    "starts_with": starts_with,
    "lowercase": lowercase,
    "no_commas": no_commas,
    "end_punct": end_punct,
}


# -- reading the constraints back out of a prompt --------------------------------------------------------
_NAME_PUNCT = {v: k for k, v in _PUNCT_NAME.items()}
_PATTERNS: list[tuple[str, re.Pattern, object]] = [
    ("min_words", re.compile(r"Answer with at least (\d+) words\."), int),
    ("max_words", re.compile(r"Answer with at most (\d+) words\."), int),
    ("include_keyword", re.compile(r'Include the word "([^"]+)" in your response\.'), str),
    ("avoid_keyword", re.compile(r'Do not use the word "([^"]+)"\.'), str),
    ("n_sentences", re.compile(r"Answer in exactly (\d+) sentences\."), int),
    ("bullets", re.compile(r'Answer with a bullet list of exactly (\d+) items, each line starting with "- "\.'), int),
    ("starts_with", re.compile(r'Start your response with the word "([^"]+)"\.'), str),
    ("lowercase", re.compile(r"Write your whole response in lowercase letters\.()"), None),
    ("no_commas", re.compile(r"Do not use any commas\.()"), None),
    ("end_punct", re.compile(r"End your response with (an exclamation mark|a question mark|a period)\."), _NAME_PUNCT.get),
]  # fmt: skip
assert {k for k, _, _ in _PATTERNS} == set(KINDS)


def parse_constraints(prompt: str) -> tuple[Constraint, ...]:
    """The constraints stated in ``prompt``, in the order they appear (empty if it states none)."""
    found = []
    for kind, pattern, convert in _PATTERNS:
        for m in pattern.finditer(prompt):
            arg = None if convert is None else convert(m.group(1))
            found.append((m.start(), Constraint(kind, arg)))
    return tuple(c for _, c in sorted(found, key=lambda x: x[0]))


def satisfied(constraints: Sequence[Constraint], response: str) -> list[bool]:
    """Which of ``constraints`` ``response`` satisfies, in order."""
    return [c.check(response) for c in constraints]

"""Sentiment scorers: VADER compound (the gold reward) and AFINN (an independent second scorer).

* ``vader_compound``: VADER's normalised compound score in [-1, 1] (Hutto & Gilbert 2014): a lexicon of
  ~7,500 human-rated words plus rules for negation, intensifiers, "but", punctuation and capitals.
* ``afinn_polarity``: the AFINN-165 word list (Nielsen 2011; integer valences -5..5, summed over the text),
  squashed to (-1, 1) as ``tanh(sum / scale)`` with ``scale=5``: one clearly positive word (+3) gives
  0.54, two give 0.83. Among the normalisations we tried on the human-rated movie sentences (raw sum,
  tanh(sum/3), tanh(sum/5), sum per word) tanh(sum/5) had the highest Pearson correlation with the human
  ratings (see docs/sentiment_task.md).

The two share no code and no lexicon, so a policy that games one scorer's quirks (VADER's exclamation
marks and capitals, say) shows up as a gap between them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_VADER = None
_AFINN = None


def _vader():
    global _VADER
    if _VADER is None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        _VADER = SentimentIntensityAnalyzer()
    return _VADER


def _afinn():
    global _AFINN
    if _AFINN is None:
        from afinn import Afinn

        _AFINN = Afinn(language="en")
    return _AFINN


def _check(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("scorers take a sequence of texts, not a single string")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts must be strings; item {bad[0]} is {type(texts[bad[0]]).__name__}")
    return list(texts)


def vader_compound(texts: Sequence[str]) -> np.ndarray:
    """VADER compound score of each text, shape (N,), in [-1, 1]; empty text scores 0."""
    analyzer = _vader()
    return np.array([analyzer.polarity_scores(t)["compound"] for t in _check(texts)], dtype=np.float64)


def afinn_polarity(texts: Sequence[str], scale: float = 5.0) -> np.ndarray:
    """AFINN sum of word valences squashed to (-1, 1): ``tanh(sum / scale)``, shape (N,)."""
    if scale <= 0:
        raise ValueError(f"afinn scale must be positive, got {scale}")
    afinn = _afinn()
    raw = np.array([afinn.score(t) for t in _check(texts)], dtype=np.float64)
    return np.tanh(raw / scale)


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation of two equally long sequences."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.size < 2:
        raise ValueError(
            f"pearson needs two equally long sequences of >= 2 values, got {x.shape} and {y.shape}"
        )
    return float(np.corrcoef(x, y)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..N with ties given their average rank (as Spearman's rho needs)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson of average ranks)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return pearson(_ranks(x), _ranks(y))

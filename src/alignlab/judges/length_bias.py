"""Length bias of a labeller: does it prefer the longer completion more often than the gold ordering does?

LM judges are known to favour longer answers. Over the pairs a labelling run asked, with both completions'
lengths in words (whitespace-separated; the pairs carry no token counts), this measures:

* ``judge_longer`` / ``gold_longer``: among the *compared* pairs (the judge decided, gold is not a tie and
  the two completions differ in length), the share where the judge's verdict, and the gold ordering,
  prefers the longer completion. Both shares are over the same pairs, so their difference is the bias
  the labeller adds beyond what the gold reward itself rewards.
* ``agreement_by_gap``: agreement of the judge's verdict with gold by |Δwords| bin (``GAP_BINS``), over
  the pairs where the judge decided and gold is not a tie (equal lengths included, in the first bin).

Each share carries a 95% Wilson score interval (``wilson_ci``), as ``{"k", "n", "rate", "ci_low",
"ci_high"}``; an empty cell has ``rate`` None. ``length_bias`` returns a small JSON-ready dict that the
labelling report keeps (``alignlab.judges.report``) and a pipeline record carries in ``label_audit``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy.stats import norm

UNIT = "words"
"""What a completion's length is counted in."""
GAP_BINS = ((0, 2), (3, 5), (6, math.inf))
"""|Δlength| bins of the agreement table, inclusive: 0-2, 3-5, >=6 words."""


def wilson_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial share ``k / n``; (nan, nan) when ``n`` is 0."""
    if not 0 <= k <= n:
        raise ValueError(f"wilson_ci: need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return math.nan, math.nan
    z = float(norm.ppf(0.5 + level / 2))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def share(k: int, n: int) -> dict:
    """``k`` of ``n`` as a cell: counts, rate and its 95% Wilson interval (rate None when ``n`` is 0)."""
    lo, hi = wilson_ci(k, n)
    if n == 0:
        return {"k": 0, "n": 0, "rate": None, "ci_low": None, "ci_high": None}
    return {"k": k, "n": n, "rate": k / n, "ci_low": lo, "ci_high": hi}


def n_words(text: str) -> int:
    """A completion's length in whitespace-separated words."""
    return len(text.split())


def gap_bin(gap: int) -> str:
    """The ``GAP_BINS`` name of an absolute length difference: ``0-2``, ``3-5`` or ``>=6``."""
    for lo, hi in GAP_BINS:
        if lo <= gap <= hi:
            return f"{lo}-{hi}" if math.isfinite(hi) else f">={lo}"
    raise ValueError(f"gap_bin: negative length difference {gap}")


def length_bias(
    firsts: Sequence[str],
    seconds: Sequence[str],
    verdicts: Sequence[str],
    gold_first: Sequence[float],
    gold_second: Sequence[float],
) -> dict:
    """Length bias of the verdicts on pairs (``firsts[i]``, ``seconds[i]``), against the gold scores.

    Args:
        firsts: each pair's first completion.
        seconds: each pair's second completion.
        verdicts: the judge's verdict per pair: ``first``, ``second``, ``tie`` or ``invalid``.
        gold_first: gold score of each first completion.
        gold_second: gold score of each second completion.
    """
    n = len(verdicts)
    if not (len(firsts) == len(seconds) == len(gold_first) == len(gold_second) == n):
        raise ValueError("length_bias: texts, verdicts and gold scores differ in length")
    judge_longer = gold_longer = compared = equal = 0
    bins: dict[str, list[int]] = {gap_bin(lo): [0, 0] for lo, _ in GAP_BINS}  # name -> [agree, n]
    for a, b, v, ga, gb in zip(firsts, seconds, verdicts, gold_first, gold_second):
        if v not in ("first", "second") or ga == gb:
            continue
        gold = "first" if ga > gb else "second"
        la, lb = n_words(a), n_words(b)
        cell = bins[gap_bin(abs(la - lb))]
        cell[0] += v == gold
        cell[1] += 1
        if la == lb:
            equal += 1
            continue
        longer = "first" if la > lb else "second"
        compared += 1
        judge_longer += v == longer
        gold_longer += gold == longer
    return {
        "unit": UNIT,
        "compared": compared,
        "equal_length": equal,
        "judge_longer": share(judge_longer, compared),
        "gold_longer": share(gold_longer, compared),
        "agreement_by_gap": {name: share(k, m) for name, (k, m) in bins.items()},
    }


def format_share(cell: dict | None, digits: int = 0) -> str:
    """``62% [48%, 74%] (n=40)``, or ``n/a`` for an empty or missing cell."""
    if not cell or cell.get("rate") is None:
        return "n/a"
    pct = f"{{:.{digits}%}}"
    return (
        f"{pct.format(cell['rate'])} [{pct.format(cell['ci_low'])}, {pct.format(cell['ci_high'])}] "
        f"(n={cell['n']})"
    )


def format_length_bias(rep: dict) -> str:
    """One log line of a ``length_bias`` result."""
    gaps = ", ".join(f"{k}: {format_share(c)}" for k, c in rep["agreement_by_gap"].items())
    return (
        f"  length bias ({rep['unit']}): longer chosen by judge {format_share(rep['judge_longer'])}, by gold "
        f"{format_share(rep['gold_longer'])}; agreement by |Δ{rep['unit']}| {gaps}"
    )


def pool(reports: Sequence[dict]) -> dict:
    """Several ``length_bias`` results (distinct label sets, e.g. one per seed) as one, counts summed."""

    def add(cells: list[dict]) -> dict:
        return share(sum(c["k"] for c in cells), sum(c["n"] for c in cells))

    return {
        "unit": reports[0]["unit"],
        "compared": sum(r["compared"] for r in reports),
        "equal_length": sum(r["equal_length"] for r in reports),
        "judge_longer": add([r["judge_longer"] for r in reports]),
        "gold_longer": add([r["gold_longer"] for r in reports]),
        "agreement_by_gap": {
            k: add([r["agreement_by_gap"][k] for r in reports]) for k in reports[0]["agreement_by_gap"]
        },
    }


def length_bias_of_rows(rows: Sequence[dict]) -> dict:
    """``length_bias`` of labelled preference rows (a label run's ``pairs.jsonl``: ``chosen``, ``rejected``,
    ``gold_chosen``, ``gold_rejected``, ``tie``), e.g. to measure a label set made before it was recorded.
    The rows hold only decided pairs (and ties with ``keep_ties``), which is what ``length_bias`` counts."""
    decided = [r for r in rows if not r.get("tie")]
    return length_bias(
        [r["chosen"] for r in decided],
        [r["rejected"] for r in decided],
        ["first"] * len(decided),  # the verdict picked the chosen text, shown first here
        [float(r["gold_chosen"]) for r in decided],
        [float(r["gold_rejected"]) for r in decided],
    )

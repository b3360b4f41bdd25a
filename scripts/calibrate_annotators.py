"""Calibrate the simulated annotators' noise (``judge=gold``'s temperature) on real raters.

The sentiment task's source archive keeps every rater's score of each review sentence
(``hutto_ICWSM_2014/movieReviewSnippets_anonDataRatings.txt``, about 19 raters each, integers in [-4, 4]).
For random pairs of sentences whose mean ratings differ, one rater's score of each (two independent
draws) orders the pair. The **human agreement rate** is the share of such draws that agree with the order
of the *other* raters' means (leave-one-out: the rater drawn is left out of the mean it is compared with;
an equal score, or equal means, counts one half). ``--reference all`` compares with the mean of all raters
instead (the rater drawn is then part of the answer: higher).

A simulated annotator prefers the first completion with probability σ((gold₁ − gold₂) / T). On the same
pairs, scored by the gold reward (VADER compound), it agrees with the gold order with probability
σ(|Δgold| / T); pairs with equal gold are ties the gold judge never labels, so they are left out. T is the
root of

    mean over the pairs of σ(|Δgold| / T) = human agreement rate

(one dimension, monotone in T). The script also prints the Bradley–Terry temperature fitted on the human
scale (the table by gap) and what the old mapping ``slope · T_human`` (least-squares slope of VADER on the
mean rating) gives, with its agreement rate: the slope is attenuated by VADER's noise (r = 0.43), so
that mapping made the annotators far more reliable than one real rater.

    python scripts/calibrate_annotators.py [--pairs 20000] [--seed 0] [--reference others|all]

``--json`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import math

import numpy as np


def pair_agreement(ratings_a: list[float], ratings_b: list[float], leave_one_out: bool = True) -> float:
    """P(one rater's scores of a and b order the pair as the reference means do), over independent draws
    of one rater of a and one of b; equal scores or equal reference means count one half.

    The reference is the mean of the *other* raters of each sentence (``leave_one_out``) or of all raters.
    """
    x, y = np.asarray(ratings_a), np.asarray(ratings_b)  # integer scores: the comparisons are exact
    if leave_one_out and (len(x) < 2 or len(y) < 2):
        raise ValueError("leave-one-out agreement needs at least 2 raters per sentence")
    s = np.sign(x[:, None] - y[None, :])  # (n_a, n_b) the drawn rater's order
    if leave_one_out:
        # sign((S_a − x_k)/(n_a − 1) − (S_b − y_l)/(n_b − 1)), in integers: exact
        ref = np.sign((x.sum() - x)[:, None] * (len(y) - 1) - (y.sum() - y)[None, :] * (len(x) - 1))
    else:
        ref = np.sign(x.sum() * len(y) - y.sum() * len(x)) * np.ones_like(s)
    agree = np.where((s == 0) | (ref == 0), 0.5, (s == ref).astype(np.float64))
    return float(agree.mean())


def sample_pairs(means: np.ndarray, n_pairs: int, seed: int) -> np.ndarray:
    """(P, 2) indices of random pairs of distinct sentences with different means, higher mean first."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(means), size=(n_pairs, 2))
    idx = idx[(idx[:, 0] != idx[:, 1]) & (means[idx[:, 0]] != means[idx[:, 1]])]
    swap = means[idx[:, 0]] < means[idx[:, 1]]
    idx[swap] = idx[swap][:, ::-1]
    return idx


def bt_agreement(gold_gaps: np.ndarray, temperature: float) -> float:
    """Mean of σ(|gap| / T) over the pairs with a non-zero gold gap: how often one Bradley–Terry annotator
    orders a pair as the gold reward does (T = 0: always)."""
    g = np.abs(np.asarray(gold_gaps, dtype=np.float64))
    g = g[g > 0]
    if g.size == 0:
        raise ValueError("no pair with a non-zero gold gap")
    if temperature == 0:
        return 1.0
    return float(np.mean(0.5 * (1.0 + np.tanh(g / (2.0 * temperature)))))


def match_temperature(gold_gaps: np.ndarray, target: float) -> float:
    """The T at which ``bt_agreement(gold_gaps, T) == target`` (a root find on log T; the agreement falls
    from 1 at T = 0 to 1/2 as T grows)."""
    from scipy.optimize import brentq

    if not 0.5 < target < 1.0:
        raise ValueError(f"target agreement {target} must lie in (0.5, 1) for a finite T > 0")
    lo, hi = math.log(1e-6), math.log(1e6)
    f = lambda log_t: bt_agreement(gold_gaps, math.exp(log_t)) - target  # noqa: E731
    if f(lo) < 0 or f(hi) > 0:
        raise ValueError(f"target agreement {target} is out of reach for T in [1e-6, 1e6] on these gaps")
    return math.exp(brentq(f, lo, hi, xtol=1e-12, rtol=1e-10))


def fit_temperature(gaps: np.ndarray, agree: np.ndarray) -> float:
    """The T maximising Σ q·log σ(g/T) + (1 − q)·log σ(−g/T) (a 1-D search on log T)."""
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        z = gaps / math.exp(log_t)
        return float(-(agree * -np.logaddexp(0, -z) + (1 - agree) * -np.logaddexp(0, z)).sum())

    res = minimize_scalar(nll, bounds=(math.log(1e-3), math.log(100.0)), method="bounded")
    return math.exp(res.x)


def slope_mapped_temperature(t_human: float, human: np.ndarray, gold: np.ndarray) -> float:
    """The old mapping to the gold scale: ``slope · T_human`` with the least-squares slope of gold on the
    mean human rating (attenuated when gold is a noisy reading of the ratings)."""
    slope = float(np.polyfit(np.asarray(human, float), np.asarray(gold, float), 1)[0])
    return slope * t_human


def calibrate(rows: list[dict], gold: np.ndarray, n_pairs: int, seed: int, leave_one_out: bool) -> dict:
    """Every number of the calibration from rated rows ``{rating, ratings}`` and their gold scores."""
    means = np.asarray([r["rating"] for r in rows], dtype=np.float64)
    gold = np.asarray(gold, dtype=np.float64)
    idx = sample_pairs(means, n_pairs, seed)
    pairs = [(rows[i]["ratings"], rows[j]["ratings"]) for i, j in idx]
    # the table by gap and T_human: against the mean of all raters (the gap is that mean's); with the rater
    # left out, near-ties fall below 1/2 (a rater who puts a above b lowers the others' mean of a)
    agree = np.asarray([pair_agreement(a, b, leave_one_out=False) for a, b in pairs])
    ref = np.asarray([pair_agreement(a, b, leave_one_out=True) for a, b in pairs]) if leave_one_out else agree
    human_rate = float(ref.mean())
    gold_gaps = gold[idx[:, 0]] - gold[idx[:, 1]]
    t_gold = match_temperature(gold_gaps, human_rate)
    gaps = means[idx[:, 0]] - means[idx[:, 1]]
    t_human = fit_temperature(gaps, agree)
    t_slope = slope_mapped_temperature(t_human, means, gold)
    table = []
    for lo, hi in ((0, 0.25), (0.25, 0.5), (0.5, 1), (1, 1.5), (1.5, 2), (2, 3), (3, 8)):
        m = (gaps >= lo) & (gaps < hi)
        if m.any():
            fitted = float(np.mean(0.5 * (1.0 + np.tanh(gaps[m] / (2.0 * t_human)))))
            table.append(
                {"gap": f"{lo:g}-{hi:g}", "pairs": int(m.sum()), "observed": float(agree[m].mean()),
                 "bt_fit": fitted}
            )  # fmt: skip
    return {
        "sentences": len(rows),
        "pairs": len(idx),
        "seed": seed,
        "reference": "others" if leave_one_out else "all",
        "human_agreement": human_rate,
        "human_agreement_with_all_raters_mean": float(agree.mean()),
        "gold_tied_pairs": int((gold_gaps == 0).sum()),
        "t_gold": t_gold,
        "simulated_agreement": bt_agreement(gold_gaps, t_gold),
        "t_human": t_human,
        "t_gold_slope_mapped": t_slope,
        "simulated_agreement_slope_mapped": bt_agreement(gold_gaps, t_slope),
        "by_gap": table,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=20000, help="random sentence pairs drawn")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--corpus", default="movieReviewSnippets", help="a corpus of the archive")
    ap.add_argument(
        "--reference", choices=("others", "all"), default="others",
        help="compare one rater with the mean of the other raters (default) or of all raters",
    )  # fmt: skip
    ap.add_argument(
        "--cache-dir", default=None, help="cache root (default: $ALIGNLAB_CACHE or ~/.cache/alignlab)"
    )
    ap.add_argument("--json", default=None, help="also write the result here")
    args = ap.parse_args(argv)
    if args.pairs < 1:
        ap.error(f"--pairs {args.pairs}: give a positive number of pairs")

    from alignlab.tasks import compose_task
    from alignlab.tasks.human_ratings import ensure_human_ratings
    from alignlab.tasks.prepare import read_jsonl
    from alignlab.tasks.scorers import vader_compound

    task = compose_task("sentiment", cache_dir=args.cache_dir)
    rows = [r for r in read_jsonl(ensure_human_ratings(task.task_dir)) if r["corpus"] == args.corpus]
    rows = [r for r in rows if r["ratings"] and len(r["ratings"]) >= 2]
    gold = vader_compound([r["text"] for r in rows])
    out = {"corpus": args.corpus, **calibrate(rows, gold, args.pairs, args.seed, args.reference == "others")}

    ref = "the other raters' mean" if args.reference == "others" else "the mean of all raters"
    print(f"{args.corpus}: {out['sentences']} sentences, {out['pairs']} random pairs (seed {args.seed})")
    print("gap in mean rating | pairs | one rater agrees with the mean order | Bradley-Terry fit")
    for r in out["by_gap"]:
        print(f"{r['gap']:>8} | {r['pairs']:6d} | {r['observed']:.3f} | {r['bt_fit']:.3f}")
    print(
        f"one real rater agrees with {ref}: {out['human_agreement']:.4f} "
        f"(with the mean of all raters, itself included: {out['human_agreement_with_all_raters_mean']:.4f})"
    )
    print(
        f"T on the gold (VADER) scale matching it: {out['t_gold']:.4f}; one simulated annotator then agrees "
        f"with VADER's order on {out['simulated_agreement']:.4f} of the pairs "
        f"({out['pairs'] - out['gold_tied_pairs']} with unequal VADER scores)"
    )
    print(
        f"(T on the human scale: {out['t_human']:.3f}; the old mapping slope * T_human = "
        f"{out['t_gold_slope_mapped']:.4f} agrees {out['simulated_agreement_slope_mapped']:.4f})"
    )
    if args.json:
        from alignlab.utils.io import write_json

        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()

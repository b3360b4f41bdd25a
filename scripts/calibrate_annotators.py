"""Calibrate the simulated annotators' noise (``judge=gold``'s temperature) on real raters.

The sentiment task's source archive keeps every rater's score of each review sentence
(``hutto_ICWSM_2014/movieReviewSnippets_anonDataRatings.txt``, about 20 raters each, integers in [-4, 4]).
For random pairs of sentences, one rater's score of each (two independent draws) orders the pair; the
share of draws that agree with the order of the mean ratings (an equal score counts one half) is what
one annotator does at that gap. A Bradley–Terry annotator agrees with probability σ(gap / T); T on the
human scale is fitted by maximum likelihood. It is mapped to the gold scale (VADER compound) by the
slope of VADER's compound on the mean human rating over the same sentences (least squares):
T_gold = slope · T_human.

    python scripts/calibrate_annotators.py [--pairs 20000] [--seed 0] [--corpus movieReviewSnippets]

Prints the table of agreement by gap (observed vs fitted) and the temperatures; ``--json`` writes them.
"""

from __future__ import annotations

import argparse
import math

import numpy as np


def pair_agreement(ratings_a: list[int], ratings_b: list[int]) -> float:
    """P(one score of a > one score of b) + ½ P(equal), over independent draws of one rater each."""
    a, b = np.asarray(ratings_a)[:, None], np.asarray(ratings_b)[None, :]
    return float((a > b).mean() + 0.5 * (a == b).mean())


def fit_temperature(gaps: np.ndarray, agree: np.ndarray) -> float:
    """The T maximising Σ q·log σ(g/T) + (1 − q)·log σ(−g/T) (a 1-D search on log T)."""
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        z = gaps / math.exp(log_t)
        return float(-(agree * -np.logaddexp(0, -z) + (1 - agree) * -np.logaddexp(0, z)).sum())

    res = minimize_scalar(nll, bounds=(math.log(1e-3), math.log(100.0)), method="bounded")
    return math.exp(res.x)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=20000, help="random sentence pairs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--corpus", default="movieReviewSnippets", help="a corpus of the archive")
    ap.add_argument(
        "--cache-dir", default=None, help="cache root (default: $ALIGNLAB_CACHE or ~/.cache/alignlab)"
    )
    ap.add_argument("--json", default=None, help="also write the result here")
    args = ap.parse_args(argv)

    from alignlab.tasks import compose_task
    from alignlab.tasks.human_ratings import ensure_human_ratings
    from alignlab.tasks.prepare import read_jsonl
    from alignlab.tasks.scorers import vader_compound

    task = compose_task("sentiment", cache_dir=args.cache_dir)
    rows = [r for r in read_jsonl(ensure_human_ratings(task.task_dir)) if r["corpus"] == args.corpus]
    rows = [r for r in rows if r["ratings"]]
    rng = np.random.default_rng(args.seed)
    idx = rng.integers(0, len(rows), size=(args.pairs, 2))
    idx = idx[idx[:, 0] != idx[:, 1]]
    gaps, agree = [], []
    for i, j in idx:
        a, b = rows[i], rows[j]
        if a["rating"] == b["rating"]:
            continue
        if a["rating"] < b["rating"]:
            a, b = b, a
        gaps.append(a["rating"] - b["rating"])
        agree.append(pair_agreement(a["ratings"], b["ratings"]))
    gaps, agree = np.asarray(gaps), np.asarray(agree)
    t_human = fit_temperature(gaps, agree)
    human = np.asarray([r["rating"] for r in rows])
    vader = np.asarray(vader_compound([r["text"] for r in rows]))
    slope = float(np.polyfit(human, vader, 1)[0])
    t_gold = slope * t_human

    table = []
    for lo, hi in ((0, 0.25), (0.25, 0.5), (0.5, 1), (1, 1.5), (1.5, 2), (2, 3), (3, 8)):
        m = (gaps >= lo) & (gaps < hi)
        if m.any():
            fitted = float(np.mean(1 / (1 + np.exp(-gaps[m] / t_human))))
            table.append(
                {
                    "gap": f"{lo:g}-{hi:g}",
                    "pairs": int(m.sum()),
                    "observed": float(agree[m].mean()),
                    "bt_fit": fitted,
                }
            )
    out = {
        "corpus": args.corpus,
        "sentences": len(rows),
        "pairs": len(gaps),
        "seed": args.seed,
        "t_human": t_human,
        "vader_slope_per_rating_point": slope,
        "t_gold": t_gold,
        "by_gap": table,
    }
    print(f"{args.corpus}: {len(rows)} sentences, {len(gaps)} random pairs (seed {args.seed})")
    print("gap in mean rating | pairs | one rater agrees with the mean order | Bradley-Terry fit")
    for r in table:
        print(f"{r['gap']:>8} | {r['pairs']:6d} | {r['observed']:.3f} | {r['bt_fit']:.3f}")
    print(f"T on the human scale [-4, 4]: {t_human:.3f}")
    print(f"VADER compound per human rating point (least squares): {slope:.4f}")
    print(f"T on the gold (VADER) scale: {t_gold:.4f}")
    if args.json:
        from alignlab.utils.io import write_json

        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()

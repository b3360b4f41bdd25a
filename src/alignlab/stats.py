"""Statistics of the comparison: confidence intervals, paired gains, multiple comparisons, power.

scipy does the standard parts (Student t quantiles, the BCa bootstrap of one sample); the one thing it
has no routine for is the two-level bootstrap of a crossed seeds x prompts design (resample the training
seeds, then the prompts, which every seed shares), written out here in a few lines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as st


def t_quantile(df: int, q: float = 0.975) -> float:
    """Student t quantile (scipy), e.g. the 95% two-sided critical value at ``df`` degrees of freedom."""
    return float(st.t.ppf(q, df))


def t_mean_ci(values: Sequence[float], alpha: float = 0.05) -> tuple[float, float]:
    """Mean and the half-width of its (1 - alpha) Student-t CI; one value gives (v, nan)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), float("nan")
    return float(v.mean()), t_quantile(v.size - 1, 1 - alpha / 2) * float(v.std(ddof=1)) / math.sqrt(v.size)


def bootstrap_mean_ci(
    values: Sequence[float], n_resamples: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """BCa bootstrap (scipy) CI of the mean: (low, high). One value, or all equal, gives (v, v)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("bootstrap CI of an empty sample")
    if v.size == 1 or np.ptp(v) == 0:
        return float(v[0]), float(v[0])
    res = st.bootstrap(
        (v,), np.mean, n_resamples=n_resamples, confidence_level=1 - alpha, method="BCa",
        random_state=np.random.default_rng(seed), vectorized=True,
    )  # fmt: skip
    lo, hi = res.confidence_interval
    if not (math.isfinite(lo) and math.isfinite(hi)):  # BCa is undefined on some degenerate samples
        res = st.bootstrap((v,), np.mean, n_resamples=n_resamples, confidence_level=1 - alpha,
                           method="percentile", random_state=np.random.default_rng(seed), vectorized=True)  # fmt: skip
        lo, hi = res.confidence_interval
    return float(lo), float(hi)


def paired_gain(diffs: np.ndarray, n_resamples: int = 4000, alpha: float = 0.05, seed: int = 0) -> dict:
    """The mean of per-prompt paired differences ``diffs`` (seeds x prompts; one row per training seed,
    the same prompts in every row) with a bootstrap CI and a two-sided bootstrap p-value for "mean = 0".

    One seed: scipy's BCa bootstrap over prompts. Several: the two-level bootstrap (resample seeds, then
    prompts), so the CI carries the variation between training runs as well as between prompts.
    """
    d = np.atleast_2d(np.asarray(diffs, dtype=np.float64))
    s, n = d.shape
    mean = float(d.mean())
    rng = np.random.default_rng(seed)
    if s == 1:
        v = d[0]
        if n < 2 or np.ptp(v) == 0:
            return {
                "mean": mean,
                "ci_low": mean,
                "ci_high": mean,
                "p": 1.0 if mean == 0 else 0.0,
                "seeds": 1,
                "prompts": n,
            }
        res = st.bootstrap((v,), np.mean, n_resamples=n_resamples, confidence_level=1 - alpha, method="BCa",
                           random_state=rng, vectorized=True)  # fmt: skip
        lo, hi = (float(x) for x in res.confidence_interval)
        dist = np.asarray(res.bootstrap_distribution)
    else:
        rows = rng.integers(0, s, size=(n_resamples, s))  # (R, S) seeds drawn
        cols = rng.integers(0, n, size=(n_resamples, n))  # (R, N) prompts drawn, shared by the drawn seeds
        dist = np.stack([d[rows[r]][:, cols[r]].mean() for r in range(n_resamples)])
        lo, hi = (float(x) for x in np.quantile(dist, [alpha / 2, 1 - alpha / 2]))
    p = 2 * min(float((dist <= 0).mean()), float((dist >= 0).mean()))
    p = min(1.0, max(p, 1.0 / n_resamples))  # a bootstrap p-value is no finer than its resamples
    return {"mean": mean, "ci_low": lo, "ci_high": hi, "p": p, "seeds": s, "prompts": n}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the input order."""
    p = np.asarray(pvalues, dtype=float)
    m = p.size
    order = np.argsort(p)
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return adj.tolist()


def minimum_detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean difference a two-sided paired test at level ``alpha`` detects with
    probability ``power``, for ``n`` independent paired units whose differences have std ``sd``:
    (t_{1-alpha/2} + t_{power}) * sd / sqrt(n), with n - 1 degrees of freedom."""
    if n < 2 or not math.isfinite(sd):
        return float("nan")
    df = n - 1
    return (t_quantile(df, 1 - alpha / 2) + t_quantile(df, power)) * sd / math.sqrt(n)

"""Statistics of the comparison: confidence intervals, paired gains, multiple comparisons, power.

scipy does the standard parts (Student t quantiles, the BCa bootstrap of one sample); the one thing it
has no routine for is the standard error of a crossed seeds x prompts design (training seeds vary, every
seed shares the prompts), written out here from the two-way random-effects ANOVA with Satterthwaite's
degrees of freedom. Every interval here is checked by its coverage on simulated data with a known answer
(tests/test_stats.py).
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


SEED_MS_QUANTILE = 0.25
"""The chi-square quantile behind the upper bound on MS_seed used for the degrees of freedom (``crossed_se``)."""


def crossed_se(diffs: np.ndarray) -> tuple[float, float, dict]:
    """Standard error of the grand mean of a crossed seeds x prompts table, and its Satterthwaite degrees
    of freedom, from the two-way random-effects ANOVA.

    Model: ``d[s, p] = mu + a_s + b_p + e_sp`` with seed effects ``a`` (var ``v_seed``: training runs differ),
    prompt effects ``b`` (var ``v_prompt``: every seed shares the prompts) and residual ``e`` (var
    ``v_res``). ``Var(mean) = v_seed / S + v_prompt / N + v_res / (S N)``, estimated without bias by
    ``(MS_seed + MS_prompt - MS_res) / (S N)``, since ``E[MS_seed] = v_res + N v_seed`` and
    ``E[MS_prompt] = v_res + S v_prompt``. The degrees of freedom of that linear combination of mean squares
    follow Satterthwaite (1946), computed with MS_seed at an upper confidence bound (see the code). When the combination comes out at or below ``MS_seed`` or ``MS_prompt``
    alone (``MS_res`` larger than the estimate it corrects, a sampling accident), the larger of the two is
    used instead, with its own degrees of freedom: never narrower than either factor alone.
    Returns (se, df, components) with the components' estimates (clipped at 0) for the report.
    """
    d = np.atleast_2d(np.asarray(diffs, dtype=np.float64))
    s, n = d.shape
    if s < 2 or n < 2:
        raise ValueError(f"crossed_se needs at least 2 seeds and 2 prompts, got {s} x {n}")
    grand = d.mean()
    seed_means, prompt_means = d.mean(axis=1), d.mean(axis=0)
    df_s, df_p, df_e = s - 1, n - 1, (s - 1) * (n - 1)
    ms_s = n * float(((seed_means - grand) ** 2).sum()) / df_s
    ms_p = s * float(((prompt_means - grand) ** 2).sum()) / df_p
    resid = d - seed_means[:, None] - prompt_means[None, :] + grand  # (S, N)
    ms_e = float((resid**2).sum()) / df_e
    combo = ms_s + ms_p - ms_e
    if combo > max(ms_s, ms_p):
        # Satterthwaite's df with MS_seed at its one-sided 75% upper confidence bound: with 2-4 seed degrees
        # of freedom the plug-in df is too large exactly when MS_seed came out small (and the SE with it),
        # which makes the plain version liberal (7-8% false positives at 3 seeds); this keeps 3-5.5%.
        ms_s_up = ms_s * df_s / float(st.chi2.ppf(SEED_MS_QUANTILE, df_s))
        up = ms_s_up + ms_p - ms_e
        df = up**2 / (ms_s_up**2 / df_s + ms_p**2 / df_p + ms_e**2 / df_e)
    elif ms_s >= ms_p:
        combo, df = ms_s, float(df_s)
    else:
        combo, df = ms_p, float(df_p)
    parts = {
        "v_seed": max(0.0, (ms_s - ms_e) / n),
        "v_prompt": max(0.0, (ms_p - ms_e) / s),
        "v_res": ms_e,
    }
    return math.sqrt(max(combo, 0.0) / (s * n)), float(df), parts


def paired_gain(diffs: np.ndarray, n_resamples: int = 4000, alpha: float = 0.05, seed: int = 0) -> dict:
    """The mean of per-prompt paired differences ``diffs`` (seeds x prompts; one row per training seed,
    the same prompts in every row) with a (1 - alpha) CI and a two-sided p-value for "mean = 0".

    One seed: scipy's BCa bootstrap over prompts; its p-value is no finer than ``1 / n_resamples``, and
    one at that floor is flagged (``p_floor``: write it "< p"). Several seeds: a Student-t interval on the
    crossed random-effects standard error with Satterthwaite degrees of freedom (``crossed_se``), so the
    CI carries the variation between training runs as well as between prompts, and its coverage holds at
    3 seeds (tests/test_stats.py simulates it; a two-level percentile bootstrap does not: with 3 seeds it
    draws from only 10 distinct seed multisets and its 95% CI misses about 3 times in 20).
    Keys: mean, ci_low, ci_high, p, p_floor, se, df, seeds, prompts (+ the variance components).
    """
    d = np.atleast_2d(np.asarray(diffs, dtype=np.float64))
    s, n = d.shape
    mean = float(d.mean())
    out = {"mean": mean, "seeds": s, "prompts": n, "p_floor": False}
    if s == 1:
        v = d[0]
        if n < 2 or np.ptp(v) == 0:
            return {**out, "ci_low": mean, "ci_high": mean, "p": 1.0 if mean == 0 else 0.0, "se": 0.0,
                    "df": float(max(n - 1, 0))}  # fmt: skip
        res = st.bootstrap((v,), np.mean, n_resamples=n_resamples, confidence_level=1 - alpha, method="BCa",
                           random_state=np.random.default_rng(seed), vectorized=True)  # fmt: skip
        lo, hi = (float(x) for x in res.confidence_interval)
        dist = np.asarray(res.bootstrap_distribution)
        p = 2 * min(float((dist <= 0).mean()), float((dist >= 0).mean()))
        floor = 1.0 / n_resamples
        se = float(v.std(ddof=1)) / math.sqrt(n)
        return {**out, "ci_low": lo, "ci_high": hi, "p": min(1.0, max(p, floor)), "p_floor": p <= floor,
                "se": se, "df": float(n - 1)}  # fmt: skip
    se, df, parts = crossed_se(d)
    if se == 0:
        return {**out, "ci_low": mean, "ci_high": mean, "p": 1.0 if mean == 0 else 0.0, "se": 0.0, "df": df,
                **parts}  # fmt: skip
    half = float(st.t.ppf(1 - alpha / 2, df)) * se
    p = float(2 * st.t.sf(abs(mean) / se, df))
    return {**out, "ci_low": mean - half, "ci_high": mean + half, "p": p, "se": se, "df": df, **parts}


def format_p(g: dict, digits: int = 3) -> str:
    """A p-value as the report writes it: "< 0.001" below the printed precision or at a bootstrap's floor."""
    p = g["p"]
    if g.get("p_floor"):
        return f"< {p:.{max(digits, 4)}f}".rstrip("0")
    if p < 10**-digits:
        return f"< {10**-digits:.{digits}f}"
    return f"{p:.{digits}f}"


def tost(g: dict, margin: float, alpha: float = 0.05) -> bool:
    """Two one-sided tests for equivalence within ``±margin`` from a ``paired_gain`` result: equivalent at
    level ``alpha`` when the (1 - 2 alpha) CI lies inside (-margin, +margin). Uses the gain's own standard
    error and degrees of freedom (a t interval, also for one seed)."""
    if not (margin > 0) or not math.isfinite(g.get("se", float("nan"))):
        return False
    half = float(st.t.ppf(1 - alpha, max(g.get("df", 1.0), 1.0))) * g["se"]
    return -margin < g["mean"] - half and g["mean"] + half < margin


def mde_from_se(se: float, df: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable effect of a two-sided test at level ``alpha`` with power ``power``, from the
    test's standard error and degrees of freedom: (t_{1-alpha/2, df} + t_{power, df}) x se."""
    if not (math.isfinite(se) and df > 0):
        return float("nan")
    return (float(st.t.ppf(1 - alpha / 2, df)) + float(st.t.ppf(power, df))) * se


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

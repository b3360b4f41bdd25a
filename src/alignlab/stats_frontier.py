"""Gold reward at a matched KL: one method read off its reward-KL frontier at another method's KL.

Estimand. For training seed ``s``, method A's frontier is the piecewise-linear curve through its swept
runs' population points (KL, gold gain over the base policy), in order of KL; B is one run at its own
setting with population point (K_B,s, G_B,s). The matched difference of seed ``s`` is
``D_s = chord_A,s(K_B,s) - G_B,s`` (undefined when K_B,s lies outside A's swept KL range on that seed: no
extrapolation), and the estimand is its mean over training seeds and over the prompt population,
``D = E_s[D_s]``. It is the difference on the *chord* through the swept points: where the true frontier is
concave the chord lies below it (~0.02 gold between the published DPO sweep's first two points, measured
in tests/test_matched_kl.py), so the chord is a lower bound for a concave frontier: "A > B" read on it is
conservative, while a deficit of A smaller than ``concave_slack`` (how far above the chord a concave curve
through the points can reach) may be interpolation, not the method.

Estimate and interval. Per seed, the plug-in ``d_s`` uses the prompt means (gold gains and KLs of the two
frontier points around B's mean KL, interpolation weight ``w`` from those KL means). Per prompt it is
linearised (delta method): the interpolated per-prompt gain difference plus ``slope x`` the prompt's
deviation in the KLs that set ``w``, so the values' mean is ``d_s`` and their spread carries the prompt
noise of both the golds and the estimated weights. The seeds x prompts table of those values goes to
``alignlab.stats.paired_gain``: with several seeds a crossed random-effects t interval (Satterthwaite df),
which covers seed-to-seed variation of the frontier and of B as well as the prompts; with one seed a BCa
bootstrap over prompts, conditional on that training run. Coverage is simulated in tests/test_matched_kl.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from alignlab.stats import paired_gain


def segment(kls: Sequence[float], k: float) -> tuple[int, int, float] | None:
    """The two neighbouring frontier points around ``k`` (indices into ``kls``, which need not be sorted) and
    the weight ``w`` of the upper one, ``k = (1 - w) kls[lo] + w kls[hi]``; None when there are fewer than
    two points or ``k`` lies outside [min, max] (no extrapolation)."""
    v = np.asarray(kls, dtype=float)
    if v.size < 2 or not np.all(np.isfinite(v)) or not np.isfinite(k):
        return None
    order = np.argsort(v, kind="stable")
    ks = v[order]
    if not ks[0] <= k <= ks[-1]:
        return None
    j = max(1, int(np.searchsorted(ks, k, side="left")))  # ks[j - 1] < k <= ks[j], or k == ks[0]
    span = ks[j] - ks[j - 1]
    w = 0.0 if span <= 0 else float((k - ks[j - 1]) / span)
    return int(order[j - 1]), int(order[j]), w


def concave_slack(kls: Sequence[float], golds: Sequence[float], k: float) -> float:
    """How far above the chord at ``k`` a concave frontier through the points (KL, gold) can lie: a concave
    curve lies below the extension of every other secant, so the neighbouring segments' lines, extended into
    k's segment, bound it above; the slack is the lower of those bounds minus the chord (clipped at 0). nan
    when k's segment has no neighbour (two points: no bound) or k lies outside the points."""
    seg = segment(kls, k)
    if seg is None:
        return float("nan")
    order = list(np.argsort(np.asarray(kls, float), kind="stable"))
    x, y = np.asarray(kls, float)[order], np.asarray(golds, float)[order]
    i = order.index(seg[0])  # k lies in [x[i], x[i + 1]]
    chord = y[i] + seg[2] * (y[i + 1] - y[i])
    bounds = [y[j] + (k - x[j]) * (y[j + 1] - y[j]) / (x[j + 1] - x[j])
              for j in (i - 1, i + 1) if 0 <= j < len(x) - 1 and x[j + 1] > x[j]]  # fmt: skip
    return float(max(0.0, min(bounds) - chord)) if bounds else float("nan")


def matched_read(
    front_gain: Sequence[np.ndarray],
    front_kl: Sequence[np.ndarray],
    other_gain: np.ndarray,
    other_kl: np.ndarray,
    fixed_weights: bool = False,
) -> dict | None:
    """One seed: A's frontier (per-prompt gold gains and KLs, one array per swept run, the same prompts in
    each) read at B's mean KL, minus B's gold gain. None outside A's swept range.

    Returns ``k`` (B's mean KL), ``read`` (A's interpolated mean gain), ``other`` (B's mean gain), ``lo``,
    ``hi``, ``w`` (the segment and weight, see ``segment``), ``slack`` (``concave_slack``) and ``values``: per-prompt values whose mean is
    ``read - other``, linearised in the KL means (delta method) so that their spread carries the weights'
    prompt noise too; ``fixed_weights`` leaves that term out (the weights treated as known)."""
    kls = [float(np.mean(x)) for x in front_kl]
    k = float(np.mean(other_kl))
    seg = segment(kls, k)
    if seg is None:
        return None
    lo, hi, w = seg
    g_lo, g_hi = np.asarray(front_gain[lo], float), np.asarray(front_gain[hi], float)
    values = (1 - w) * g_lo + w * g_hi - np.asarray(other_gain, float)  # (N,)
    span = kls[hi] - kls[lo]
    if not fixed_weights and span > 0:
        # d = (1-w) gL + w gH - gB with w = (k - kL) / (kH - kL): dd/dk = slope, dd/dkL = -(1-w) slope,
        # dd/dkH = -w slope, so each prompt adds slope x its deviation in that combination of KLs
        slope = (g_hi.mean() - g_lo.mean()) / span
        dev = (
            (np.asarray(other_kl, float) - k)
            - (1 - w) * (np.asarray(front_kl[lo], float) - kls[lo])
            - w * (np.asarray(front_kl[hi], float) - kls[hi])
        )
        values = values + slope * dev
    read = float((1 - w) * g_lo.mean() + w * g_hi.mean())
    slack = concave_slack(kls, [float(np.mean(g)) for g in front_gain], k)
    return {"k": k, "read": read, "other": float(np.mean(other_gain)), "lo": lo, "hi": hi, "w": w,
            "slack": slack, "values": values}  # fmt: skip


def matched_gain(reads: Sequence[dict], alpha: float = 0.05) -> dict:
    """The matched difference over seeds: ``paired_gain`` of the seeds x prompts table of each seed's
    linearised values (``matched_read``), with the per-seed reads' means beside it (k, read, other, slack)."""
    table = np.stack([r["values"] for r in reads])  # (S, N)
    g = paired_gain(table, alpha=alpha)
    return {**g, "k": float(np.mean([r["k"] for r in reads])), "read": float(np.mean([r["read"] for r in reads])),
            "other": float(np.mean([r["other"] for r in reads])),
            "slack": float(np.mean([r["slack"] for r in reads]))}  # fmt: skip

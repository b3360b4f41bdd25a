"""Best-of-n sampling (Nakano et al. 2021; Gao et al. 2022): pure selection and its analytic KL.

The best-of-n policy draws n completions from the base policy and keeps the one a scorer ranks highest.
Nothing is trained; its distance from the base is known in closed form (Stiennon et al. 2020, App. G.3;
Gao et al. 2022, eq. 1):

    KL(pi_bon || pi_base) = log n - (n - 1) / n

exact when the scorer ranks every completion strictly (no ties, a continuous output space) and an upper
bound otherwise (Beirami et al. 2024): ties make the best-of-n policy closer to the base.
"""

from __future__ import annotations

import math

import numpy as np


def best_of_n_kl(n: int) -> float:
    """The analytic KL of the best-of-n policy to the policy it samples from: log n - (n - 1)/n (nats)."""
    if int(n) != n or n < 1:
        raise ValueError(f"best-of-n needs an integer n >= 1 (got {n!r})")
    return math.log(n) - (n - 1) / n


def select_best_of_n(scores: np.ndarray, n: int) -> np.ndarray:
    """Per prompt, the index of the best of its first ``n`` candidates by ``scores`` (N, n_max).

    Ties go to the earliest candidate, so n = 1 always keeps candidate 0 (the base policy's own sample)
    and the candidates a larger n adds never displace an equally good earlier one. Returns (N,) ints.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (prompts, candidates), got shape {scores.shape}")
    if not 1 <= n <= scores.shape[1]:
        raise ValueError(f"n={n} must be between 1 and the {scores.shape[1]} candidates sampled")
    if np.isnan(scores[:, :n]).any():
        raise ValueError("a candidate's score is NaN: the scorer failed on it")
    return np.argmax(scores[:, :n], axis=1)  # (N,): argmax returns the first maximum

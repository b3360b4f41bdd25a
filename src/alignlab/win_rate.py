"""The judge's win rate of a policy against a reference policy: an evaluation hook.

``alignlab.evaluate`` adds it when a ``judge`` is configured and ``win_rate.reference_samples`` names the
reference policy's ``samples.jsonl`` on the same prompts (the pipeline's ``eval`` stage reads its
``eval_base`` stage's samples).

Two readings. For a task with a gold reward the win rate is a column beside the gold reward:
``judge_win_rate``, the mean P(policy ≻ reference) the judge gives. For a task without one it is the
headline (``alignlab.evaluator``): ``paired_win_rate`` asks every pair in both orders, scores each
verdict 1 (policy wins), 0.5 (tie) or 0 (reference wins), averages per prompt and gives a Student-t 95%
CI over prompts (the prompt is the unit both policies share; tests/test_no_gold.py checks its coverage).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np


def judge_win_rate(
    judge, prompts: list[str], policy: list[str], reference: list[str], seed: int = 0, chunk_size: int = 64
) -> dict:
    """Mean P(policy ≻ reference) over the pairs the judge could decide (a pairwise judge asks both
    orders), with a bootstrap 95% CI; invalid answers are counted, never scored. The judge is asked
    ``chunk_size`` pairs at a time under a progress bar (shown on a terminal, as evaluation's sampling)."""
    from tqdm.auto import tqdm

    from alignlab.stats import bootstrap_mean_ci

    results: list = []
    starts = range(0, len(prompts), chunk_size)
    for s in tqdm(starts, desc="judge win rate", unit="chunk", disable=None):
        e = s + chunk_size
        results += judge.judge_pairs(prompts[s:e], policy[s:e], reference[s:e])
    p = np.asarray([r["p_first"] for r in results if r.get("p_first") is not None], dtype=float)
    out = {"win_rate_pairs": len(results), "win_rate_invalid": len(results) - int(p.size)}
    if p.size:
        lo, hi = bootstrap_mean_ci(p, seed=seed)
        out.update({"win_rate": float(p.mean()), "win_rate_ci_low": lo, "win_rate_ci_high": hi})
    return out


WIN_RATE_METHOD = (
    "verdicts in both orders, a tie counts 0.5, identical completions tie unasked; t CI over prompts"
)
SCORE = {"first": 1.0, "tie": 0.5, "second": 0.0}  # the first-shown completion's score per verdict


def paired_win_rate(
    judge, prompts: list[str], policy: list[str], reference: list[str], samples_per_prompt: int = 1,
    chunk_size: int = 64,
) -> dict:  # fmt: skip
    """The judge's win rate of ``policy`` over ``reference`` (same prompts, ``samples_per_prompt``
    consecutive samples per prompt): each pair is asked in both orders, a verdict scores 1 / 0.5 (tie) /
    0 for the policy, an invalid answer is left out (and counted); a pair's score is the mean of its
    valid orders, a prompt's the mean of its pairs, and the 95% CI is Student t over prompts (a prompt
    whose every answer was invalid is left out and counted). Identical completions tie without a call."""
    from tqdm.auto import tqdm

    from alignlab.stats import t_mean_ci

    n, k = len(prompts), int(samples_per_prompt)
    if not (len(policy) == len(reference) == n) or n % k:
        raise ValueError(
            f"paired_win_rate: {n} prompts, {len(policy)} and {len(reference)} completions, k={k}"
        )
    ask = [i for i in range(n) if policy[i] != reference[i]]
    scores = np.full((n, 2), np.nan)  # (N * k, 2): the policy's score when shown first, when shown second
    scores[[i for i in range(n) if policy[i] == reference[i]]] = 0.5
    P, A, B = [prompts[i] for i in ask], [policy[i] for i in ask], [reference[i] for i in ask]
    verdicts: dict[str, int] = {}
    for s in tqdm(range(0, len(ask), chunk_size), desc="judge win rate", unit="chunk", disable=None):
        e, rows = s + chunk_size, ask[s : s + chunk_size]
        fwd = judge.judge_pairs(P[s:e], A[s:e], B[s:e])  # the policy shown first
        bwd = judge.judge_pairs(P[s:e], B[s:e], A[s:e])  # the reference shown first
        for i, f, b in zip(rows, fwd, bwd):
            for col, r, flip in ((0, f, False), (1, b, True)):
                v = r.get("verdict")
                verdicts[v] = verdicts.get(v, 0) + 1
                if v in SCORE:
                    scores[i, col] = 1.0 - SCORE[v] if flip else SCORE[v]
    with warnings.catch_warnings():  # an all-invalid pair or prompt is nan, left out below
        warnings.simplefilter("ignore", RuntimeWarning)
        pair = np.nanmean(scores, axis=1)  # (N * k,)
        per_prompt = np.nanmean(pair.reshape(n // k, k), axis=1)  # (N,)
    ok = per_prompt[np.isfinite(per_prompt)]
    out = {
        "win_rate_pairs": 2 * len(ask),
        "win_rate_invalid": verdicts.get("invalid", 0),
        "win_rate_ties": verdicts.get("tie", 0) + 2 * (n - len(ask)),
        "win_rate_prompts_undecided": int(per_prompt.size - ok.size),
        "win_rate_method": WIN_RATE_METHOD,
        "win_rate_per_prompt": [None if not np.isfinite(x) else round(float(x), 6) for x in per_prompt],
    }
    if ok.size:
        mean, half = t_mean_ci(ok)
        half = 0.0 if not np.isfinite(half) else half  # one prompt: no interval
        lo, hi = max(0.0, mean - half), min(1.0, mean + half)
        out.update({"win_rate": mean, "win_rate_ci_low": lo, "win_rate_ci_high": hi})
    return out


def win_rate_hook(
    judge,
    task,
    reference_samples: str | Path,
    seed: int = 0,
    both_orders: bool = False,
    samples_per_prompt: int = 1,
):
    """A metric hook for ``evaluate_policy``: the judge's win rate against the samples in
    ``reference_samples`` (same prompts, same order); ``both_orders``: ``paired_win_rate`` (the headline
    of a task without a gold reward), else ``judge_win_rate``."""
    from alignlab.judges.base import bind_task
    from alignlab.utils.io import jsonl_lines

    rows = [json.loads(x) for x in jsonl_lines(Path(reference_samples).read_text(encoding="utf-8"))]
    bind_task(judge, task)

    def hook(samples) -> dict:
        if [r["prompt"] for r in rows] != list(samples.prompts):
            raise ValueError(
                f"{reference_samples} holds other prompts than this evaluation; evaluate both alike"
            )
        reference = [r["completion"] for r in rows]
        if both_orders:
            return paired_win_rate(judge, samples.prompts, samples.completions, reference, samples_per_prompt)
        return judge_win_rate(judge, samples.prompts, samples.completions, reference, seed)

    return hook

"""The judge's win rate of a policy against a reference policy: an evaluation hook.

``alignlab.evaluate`` adds it when a ``judge`` is configured and ``win_rate.reference_samples`` names the
reference policy's ``samples.jsonl`` on the same prompts (the pipeline's ``eval`` stage reads its
``eval_base`` stage's samples).
"""

from __future__ import annotations

import json
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


def win_rate_hook(judge, task, reference_samples: str | Path, seed: int = 0):
    """A metric hook for ``evaluate_policy``: the judge's win rate against the samples in
    ``reference_samples`` (same prompts, same order)."""
    from alignlab.judges.base import bind_task

    rows = [json.loads(x) for x in Path(reference_samples).read_text().splitlines() if x.strip()]
    bind_task(judge, task)

    def hook(samples) -> dict:
        if [r["prompt"] for r in rows] != list(samples.prompts):
            raise ValueError(
                f"{reference_samples} holds other prompts than this evaluation; evaluate both alike"
            )
        return judge_win_rate(
            judge, samples.prompts, samples.completions, [r["completion"] for r in rows], seed
        )

    return hook

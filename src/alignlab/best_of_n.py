"""Best-of-n evaluation: ``python -m alignlab.best_of_n [reward@scorer=...] [n=[1,2,4,8]] [overrides]``.

No training. The base policy samples n_max = max(n) completions per held-out prompt, in n_max passes
over the prompts exactly like ``alignlab.evaluate`` samples (pass 0 with the evaluation's own seed, so
n = 1 is the base policy's evaluation sample for sample); the scorer (``conf/reward``: a reward model,
a judge's P(yes), gold) scores every candidate; for each n the best of the first n candidates is kept
(``losses.best_of_n.select_best_of_n``) and evaluated like any policy: gold reward with its CI and per
prompt (for the paired gain over the base), the second scorer, length, distinct-n, the judge's win rate
when configured, and the KL at its analytic value log n - (n-1)/n (``losses.best_of_n.best_of_n_kl``).
Gold itself as the scorer is the oracle ceiling, written beside the scorer's points.

Writes into the run directory ``metrics.json`` (the scorer at the largest n, the shape
``alignlab.evaluate`` writes), ``samples.jsonl`` (its completions), ``candidates.jsonl`` (every candidate
with its scores) and ``points/<name>.json`` (every other n and selector: ``suffix``, ``variant``, ``eval``, ``examples``),
which the pipeline turns into result records that ``alignlab.compare`` reads.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from alignlab.evaluate import EvalSamples, distinct_n, evaluate_policy
from alignlab.losses.best_of_n import best_of_n_kl, select_best_of_n
from alignlab.utils.app import hydra_app
from alignlab.utils.runtime import configure_runtime, get_logger

log = get_logger(__name__)


def check_n(values, samples_per_prompt: int = 1) -> list[int]:
    """The n list, sorted and unique; a bad one is the user's mistake, named before any model loads."""
    from alignlab.utils.config import ConfigError

    if int(samples_per_prompt) != 1:
        raise ConfigError(
            f"best_of_n: samples_per_prompt={samples_per_prompt}: best-of-n keeps one completion per prompt; "
            "set samples_per_prompt=1 (n sets how many are sampled)"
        )
    try:
        ns = sorted({int(v) for v in values})
        ok = bool(ns) and all(float(v) == int(v) for v in values) and ns[0] >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(
            f"best_of_n: n={list(values)!r} must be a non-empty list of integers >= 1, e.g. n=[1,2,4,8]"
        )
    return ns


def take(c: EvalSamples, idx: np.ndarray, n_cand: int) -> EvalSamples:
    """The candidates ``idx`` (N,) of candidate samples ``c`` laid out prompt-major (N * n_cand,)."""
    flat = np.arange(len(idx)) * n_cand + idx
    return EvalSamples(
        [c.prompts[i] for i in flat],
        [c.completions[i] for i in flat],
        c.gold[flat],
        None if c.second is None else c.second[flat],
        None,
        c.lengths[flat],
        c.stopped[flat],
    )


# what evaluate_policy reports about the policy rather than its samples: the same for every best-of-n point
POLICY_KEYS = ("precision", "prompts_sha")  # the same prompts as the sampling policy's evaluation


def point_metrics(
    s: EvalSamples, kl: float, seconds: float, n_bootstrap: int, seed: int, policy: dict | None = None
) -> dict:
    """The metrics ``alignlab.evaluate`` reports, of one completion per prompt, with the KL given;
    ``policy``: an ``evaluate_policy`` result of the sampling policy, whose ``POLICY_KEYS`` are copied."""
    from alignlab.stats import bootstrap_mean_ci

    n = len(s.prompts)
    kls = np.full(n, kl)
    m: dict = {k: (policy or {})[k] for k in POLICY_KEYS if k in (policy or {})}
    m.update({"n": n, "samples_per_prompt": 1, "per_prompt": {}})
    for name, values in (("gold_reward", s.gold), ("second_reward", s.second), ("kl", kls)):
        if values is None:
            m[name] = None
            continue
        m["per_prompt"][name] = [round(float(x), 6) for x in values]
        lo, hi = bootstrap_mean_ci(values, n_bootstrap, seed=seed)
        m.update({name: float(values.mean()), f"{name}_ci_low": lo, f"{name}_ci_high": hi,
                  f"{name}_std": float(values.std(ddof=1)) if n > 1 else 0.0})  # fmt: skip
    m["completions"] = list(s.completions)  # the kept completion of each prompt (a later scorer reads them)
    m["completion_length"] = float(s.lengths.mean())
    m["stopped_frac"] = float(s.stopped.mean())
    m["distinct_1"] = distinct_n(s.completions, 1)
    m["distinct_2"] = distinct_n(s.completions, 2)
    m["completions_per_s"] = n / max(seconds, 1e-9)  # selected completions: n samples each
    return m


def sample_candidates(model, tokenizer, task, prompts, sampling, n_max: int, seed: int, **kw):
    """n_max passes of ``evaluate_policy`` over ``prompts``; pass j seeds its batches seed + j·N + b (pass
    0 is the evaluation's own sampling). Returns the candidates prompt-major (candidate j of prompt i at
    i·n_max + j), each pass's seconds and pass 0's metrics."""
    passes, seconds, first = [], [], None
    for j in range(n_max):
        m, s = evaluate_policy(model, tokenizer, task, prompts, sampling, seed=seed + j * len(prompts),
                               return_samples=True, **kw)  # fmt: skip
        passes.append(s)
        first = first or m
        seconds.append(len(prompts) / m["completions_per_s"])
    pick = np.arange(len(prompts) * n_max).reshape(n_max, len(prompts)).T.reshape(-1)  # (N·n_max,)
    joined = {f: [x for s in passes for x in getattr(s, f)] for f in ("prompts", "completions")}
    arrays = {
        f: np.concatenate([getattr(s, f) for s in passes])[pick] for f in ("gold", "lengths", "stopped")
    }
    second = None if passes[0].second is None else np.concatenate([s.second for s in passes])[pick]
    return EvalSamples(
        [joined["prompts"][i] for i in pick], [joined["completions"][i] for i in pick], arrays["gold"],
        second, None, arrays["lengths"], arrays["stopped"],
    ), seconds, first  # fmt: skip


def best_of_n(cfg: DictConfig) -> dict:
    """Run the best-of-n evaluation ``cfg`` describes; returns the headline record (``metrics.json``)."""
    configure_runtime()
    from hydra.utils import instantiate

    from alignlab.evaluator import refuse_gold
    from alignlab.judges.base import bind_task
    from alignlab.models.generation import SamplingConfig
    from alignlab.models.reference import load_policy
    from alignlab.rewards.gold import GoldReward
    from alignlab.tasks import build_task
    from alignlab.utils.io import write_json, write_jsonl

    ns = check_n(cfg.n, cfg.get("samples_per_prompt") or 1)
    out = Path(cfg.paths.output_dir)
    torch.manual_seed(cfg.seed)  # as alignlab.evaluate, so a randomly initialised model is the same one
    task = build_task(cfg.task)
    refuse_gold(cfg, task, app="best_of_n")  # its oracle ranks by gold: a task without one is refused
    prompts = task.prompts(cfg.split)
    if cfg.get("n_prompts"):
        prompts = prompts[: int(cfg.n_prompts)]
    device = "cuda" if torch.cuda.is_available() and cfg.get("device", "auto") != "cpu" else "cpu"
    policy = load_policy(instantiate(cfg.model), None, device)  # the base policy: best-of-n trains nothing
    sampling = instantiate(cfg.sampling) if "_target_" in cfg.sampling else SamplingConfig(**cfg.sampling)
    fmt = cfg.prompt_format
    # 1. n_max candidates per prompt, sampled as the evaluation samples (reference = the policy: KL 0)
    cand, seconds, base_metrics = sample_candidates(
        policy.model, policy.tokenizer, task, prompts, sampling, ns[-1], int(cfg.seed),
        reference=policy.ref_model, batch_size=cfg.batch_size, use_chat_template=fmt.use_chat_template,
        system_prompt=fmt.system_prompt, max_prompt_length=fmt.max_prompt_length, n_bootstrap=cfg.n_bootstrap,
    )  # fmt: skip
    # 2. every candidate scored by the scorer; gold is already there (the oracle's selector)
    selectors = {"gold": cand.gold.reshape(len(prompts), ns[-1])}  # (N, n_max)
    scorer, queries = None, 0
    if cfg.get("scorer") is not None:
        scorer = instantiate(cfg.scorer)
        bind_task(scorer, task)
        scorer.to(device)
        scores = scorer(cand.prompts, cand.completions).float().cpu().numpy()
        queries = int(getattr(scorer, "queries", 0) or 0)
        oracle = {} if isinstance(scorer, GoldReward) else selectors  # gold ranking twice is one policy
        selectors = {"scorer": scores.reshape(len(prompts), ns[-1]), **oracle}
    hooks = []
    reference_samples = (cfg.get("win_rate") or {}).get("reference_samples")
    if cfg.get("judge") and reference_samples:
        from alignlab.win_rate import win_rate_hook

        hooks.append(win_rate_hook(instantiate(cfg.judge), task, reference_samples, int(cfg.seed)))
    # 3. per selector and n: the best of the first n candidates, evaluated like any policy
    head = {"policy": None, "model": cfg.model.get("source"), "task": getattr(task, "name", str(cfg.task)),
            "split": cfg.split, "seed": cfg.seed, "sampling": asdict(sampling)}  # fmt: skip
    points, headline, judge_pairs = [], None, 0
    for sel, sel_scores in selectors.items():
        name = getattr(scorer, "name", "scorer") if sel == "scorer" else "gold"
        for n in ns:
            chosen = take(cand, select_best_of_n(sel_scores, n), ns[-1])
            m = point_metrics(
                chosen, best_of_n_kl(n), sum(seconds[:n]), cfg.n_bootstrap, int(cfg.seed), base_metrics
            )
            for hook in hooks:
                m.update(hook(chosen))
            judge_pairs += int(m.get("win_rate_pairs") or 0)
            rec = {**head, "policy": f"best_of_{n}[{name}]", "selector": name, "best_of_n": n,
                   "kl_estimator": "analytic: log n - (n-1)/n", **m}  # fmt: skip
            first = sel == next(iter(selectors))
            if first and n == ns[-1]:
                headline = rec
                write_jsonl(out / "samples.jsonl", chosen.rows())
                continue
            # the first selector is the method; gold, when a scorer ranks, is the oracle ceiling beside it
            suffix = "" if first else "_oracle"
            variant = {} if n == ns[-1] else {"n": n}
            examples = [{k: r[k] for k in ("prompt", "completion", "gold")} for r in chosen.rows()[:4]]
            points.append(
                (f"{sel}-n{n}", {"suffix": suffix, "variant": variant, "eval": rec, "examples": examples})
            )
    write_jsonl(out / "candidates.jsonl", [
        {"prompt": p, "candidate": i % ns[-1], "completion": c, "gold": float(g),
         **{f"score_{k}": float(v.reshape(-1)[i]) for k, v in selectors.items() if k != "gold"}}
        for i, (p, c, g) in enumerate(zip(cand.prompts, cand.completions, cand.gold))
    ])  # fmt: skip
    for fname, point in points:
        write_json(out / "points" / f"{fname}.json", point)
    headline["scorer_queries"] = queries
    write_json(out / "metrics.json", headline)
    for n in ns:
        print(f"best of {n:>3}: KL {best_of_n_kl(n):.3f}", flush=True)
    print(f"metrics written to {out / 'metrics.json'} ({len(points)} more points in {out / 'points'})")
    return {**headline, "reward/judge_queries": queries, "win_rate_pairs": judge_pairs}


@hydra_app("best_of_n", precheck=lambda cfg: check_n(cfg.n, cfg.get("samples_per_prompt") or 1))
def main(cfg: DictConfig) -> float:
    return best_of_n(cfg)["gold_reward"]


if __name__ == "__main__":
    main()

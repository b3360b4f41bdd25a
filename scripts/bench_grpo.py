"""GRPO against TRL's GRPOTrainer (issue 27): the same model, LoRA, reward function, k, completion length,
loss, clip range, KL coefficient and wall-time budget, in A/B worker processes over several seeds.

    python scripts/bench_grpo.py --smoke                     # tiny model, 2 seeds, 1 s budgets (the test's run)
    python scripts/bench_grpo.py --size smollm2 --seeds 3    # the measurement (bundled SmolLM2-135M)
    python scripts/bench.py --size smollm2 --cases grpo --repeats 3   # the same through bench.py (fp32 there)

Each seed runs alignlab then TRL (the next seed TRL then alignlab), each in its own process through
``bench.spawn``; both sides of a seed share it. Measured per worker: samples/s (completions generated and
trained on per second of the training budget), rollout tokens/s, peak RSS, and the final policy's reward
on the held-out prompts (one seeded sample each, one shared sampler: ``bench_workers.evaluate``). Reported:
alignlab / TRL as the geometric mean of the per-seed ratios with a Student-t CI (``alignlab.stats``) on
their logs, and the reward difference with the crossed seeds x prompts CI of ``alignlab.stats.paired_gain``.

Precision (``--precision auto``): bf16 autocast on both sides where the device computes bf16 natively (CUDA,
or a CPU with AVX512-BF16 / AMX), fp32 otherwise; the output says which. What could not be matched:
``bench_grpo_report.UNMATCHED`` (also written under the table in ``bench/results.md``).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench
import bench_workers as bw
from bench_grpo_report import section, write_section

CASE = "grpo"
FRAMEWORKS = ["alignlab-grpo", "trl-grpo"]
# the objective, both sides (TRL names: epsilon, epsilon_high, loss_type, scale_rewards="group", beta)
GRPO = {
    "beta": 0.04,
    "epsilon": 0.2,
    "epsilon_high": 0.2,
    "loss_type": "grpo",
    "scale_rewards": True,
    "num_iterations": 1,
}
SMOKE = {"size": "tiny", "seeds": 2, "budget_s": 1.0}
# (metric, higher is better, kind): "ratio" = alignlab / TRL, "delta" = alignlab - TRL
METRICS = [
    ("gold_reward", True, "delta"),
    ("samples_per_s", True, "ratio"),
    ("rollout_tokens_per_s", True, "ratio"),
    ("peak_rss_mb", False, "ratio"),
]
TO_RUN = "OMP_NUM_THREADS=1 python scripts/bench_grpo.py --size smollm2 --seeds 3"


# -- the reward, a plain Python function on both sides -----------------------------------------------------
_SCORERS: dict = {}


def _score(name: str, prompts, completions) -> list[float]:
    if name not in _SCORERS:
        _SCORERS[name] = bw.reward_function({"reward": name})
    return _SCORERS[name](list(prompts), list(completions)).float().tolist()


def gold_score(prompts, completions, **_) -> list[float]:
    """The task's gold scorer: ``reward.fn`` for alignlab, a reward function for TRL."""
    return _score("gold", prompts, completions)


def char_fraction_score(prompts, completions, **_) -> list[float]:
    """The tiny model's toy reward (share of lowercase letters and spaces), the same way."""
    return _score("char_fraction", prompts, completions)


SCORE_FNS = {name: f"{name}_score" for name in ("gold", "char_fraction")}  # a name alignlab can import


# -- workers (run by ``bench.py --worker grpo <framework>``) ----------------------------------------------
def held_out(policy, tokenizer, s: dict) -> tuple[float, float, list[float]]:
    """Mean reward on the held-out prompts, its standard error, and the per-prompt scores (for pairing)."""
    fn, scores = bw.reward_function(s), []

    def scoring(prompts, texts):
        out = fn(prompts, texts)
        scores.extend(out.float().tolist())
        return out

    mean, se = bw.evaluate(policy, tokenizer, s, scoring)
    return mean, se, scores


def result(clock, calls: int, tokens: int, seconds: float, after: tuple, s: dict) -> dict:
    mean, se, scores = after
    train_s = clock.t1 - clock.t_train
    samples = calls * s["prompts_per_step"] * s["k"]  # one generate call per rollout batch, both sides
    return {
        "train_seconds": train_s,
        "iterations": clock.steps,
        "rollout_batches": calls,
        "samples": samples,
        "samples_per_s": samples / train_s,
        "rollout_tokens": tokens,
        "generate_seconds": seconds,
        "rollout_tokens_per_s": tokens / max(seconds, 1e-9),
        "gold_reward": mean,
        "reward_after_se": se,
        "eval_scores": scores,
        "seed": s["seed"],
        "precision": s["precision"],
    }


def alignlab_overrides(s: dict, out: str) -> list[str]:
    """alignlab's side: ``alignlab.train`` overrides for settings ``s``."""
    return [
        *bw.common_overrides(s, out),
        "algo=grpo",
        "reward@algo.reward=python",
        f"algo.reward.fn=bench_grpo:{SCORE_FNS[s['reward']]}",
        "data=prompts_toy",
        f"data.train_path={s['prompts']}",
        f"data.val_path={s['eval_prompts']}",
        "data.use_chat_template=false",
        f"data.batch_size={s['prompts_per_step']}",
        f"algo.k={s['k']}",
        f"algo.max_new_tokens={s['max_new_tokens']}",
        "algo.temperature=1.0",
        "algo.top_p=1.0",
        "algo.top_k=0",
        f"algo.beta={s['beta']}",
        f"algo.epsilon_low={s['epsilon']}",
        f"algo.epsilon_high={s['epsilon_high']}",
        f"algo.loss_aggregation={s['loss_type']}",
        f"algo.scale_rewards={str(s['scale_rewards']).lower()}",
        f"algo.num_iterations={s['num_iterations']}",
        "algo.max_grad_norm=1.0",
        "algo.log_samples_every=0",
        f"++algo.fused_forward={str(s['num_iterations'] == 1).lower()}",
        f"algo.optimizer.lr={s['lr']}",
        "trainer.max_steps=1000000",
        "trainer.gradient_clip_val=null",
        "trainer.val_check_interval=1000000",
    ]


def trl_args(s: dict, out: str) -> dict:
    """TRL's side: ``GRPOConfig`` keyword arguments for settings ``s`` (TRL's names for alignlab's values)."""
    return dict(
        **bw.trl_online_args(s, out),
        beta=s["beta"],
        epsilon=s["epsilon"],
        epsilon_high=s["epsilon_high"],
        loss_type=s["loss_type"],
        scale_rewards="group" if s["scale_rewards"] else "none",
        num_iterations=s["num_iterations"],
        mask_truncated_completions=False,
    )


def grpo_alignlab(s: dict, out: str) -> dict:
    clock = bw.StepClock(0, s["budget_s"])
    counter = bw.SampleCounter()
    try:
        _, objs = bw.run_alignlab(alignlab_overrides(s, out), clock)
    finally:
        counter.close()
    module = objs["module"]
    after = held_out(module.policy, module.tokenizer, s)  # not counted: the counter is closed
    return result(clock, counter.calls, counter.tokens, counter.seconds, after, s)


def grpo_trl(s: dict, out: str) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    from alignlab.models import ModelSpec
    from alignlab.models.peft import DEFAULT_TARGETS

    lm = ModelSpec(source=bw.model_name(s["size"]), dtype="float32").load()
    before, _, _ = held_out(lm.model, lm.tokenizer, s)  # the base model = the policy at step 0 (LoRA B = 0)
    mtype = lm.model.config.model_type
    peft_config = LoraConfig(  # alignlab's apply_peft, field for field
        r=bw.LORA["r"],
        lora_alpha=bw.LORA["alpha"],
        lora_dropout=0.0,
        target_modules=DEFAULT_TARGETS.get(mtype) or "all-linear",
        task_type="CAUSAL_LM",
        fan_in_fan_out=mtype == "gpt2",
    )
    args = GRPOConfig(**trl_args(s, out))
    ds = Dataset.from_list([{"prompt": p} for p in bw.prompt_texts(s["prompts"])])
    clock = bw.StepClock(0, s["budget_s"])
    trainer = GRPOTrainer(
        model=lm.model,
        reward_funcs=[getattr(sys.modules[__name__], SCORE_FNS[s["reward"]])],
        args=args,
        train_dataset=ds,
        processing_class=lm.tokenizer,
        peft_config=peft_config,
        callbacks=[bw.make_hf_timer(clock)],
    )
    counter = bw.GenerateCounter(trainer.model)
    trainer.train()
    calls, tokens, seconds = counter.calls, counter.tokens, counter.seconds  # before the evaluation's calls
    res = result(clock, calls, tokens, seconds, held_out(trainer.model, lm.tokenizer, s), s)
    return {**res, "reward_before": before}


bw.WORKERS.update({("grpo", "alignlab-grpo"): grpo_alignlab, ("grpo", "trl-grpo"): grpo_trl})


# -- the A/B and its statistics ---------------------------------------------------------------------------
def choose_precision(requested: str) -> tuple[str, bool]:
    """``auto``: bf16 where the device computes it natively, else fp32. Returns (precision, native)."""
    native = bench.bf16_runs_natively()
    return ("bf16" if native else "fp32") if requested == "auto" else requested, native


def grpo_settings(size: str, paths: dict, precision: str, **overrides) -> dict:
    rl = dict(bench.SIZES[size]["rl"])
    for key in ("kl_coef", "ppo_epochs", "num_minibatches", "fused_forward"):  # PPO / RLOO's, not GRPO's
        rl.pop(key, None)
    base = {"size": size, "seed": 0, "precision": precision, "data": paths["data"]}
    paths = {"prompts": paths["prompts"], "eval_prompts": paths["eval_prompts"]}
    return {**base, **rl, **GRPO, **paths, **{k: v for k, v in overrides.items() if v is not None}}


def ratio_ci(a: list[float], b: list[float]) -> dict:
    """alignlab / TRL: geometric mean of the per-seed ratios, 95% Student-t CI on their logs, min and max."""
    from alignlab.stats import t_mean_ci

    ratios = [x / y for x, y in zip(a, b)]
    mean, half = t_mean_ci([math.log(r) for r in ratios])
    lo, hi = (math.exp(mean - half), math.exp(mean + half)) if math.isfinite(half) else (math.nan, math.nan)
    return {
        "ratio": math.exp(mean),
        "ci_low": lo,
        "ci_high": hi,
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


def reward_gain(a_runs: list[dict], b_runs: list[dict]) -> dict:
    """alignlab - TRL on the same held-out prompts, seeds x prompts, with ``paired_gain``'s crossed CI."""
    import numpy as np

    from alignlab.stats import paired_gain

    diffs = np.array([np.subtract(a["eval_scores"], b["eval_scores"]) for a, b in zip(a_runs, b_runs)])
    g = paired_gain(diffs)
    per_seed = diffs.mean(axis=1)
    return {"ratio": None, "delta": g["mean"], "ci_low": g["ci_low"], "ci_high": g["ci_high"], "p": g["p"],
            "delta_min": float(per_seed.min()), "delta_max": float(per_seed.max())}  # fmt: skip


def summarise(settings: dict, runs: dict[str, list[dict]]) -> list[dict]:
    """One row per metric, in ``bench.py``'s row schema (so ``bench.merge`` / ``bench.markdown`` take them)
    plus the CI (``ci_low``, ``ci_high``)."""
    a_runs, b_runs = runs[FRAMEWORKS[0]], runs[FRAMEWORKS[1]]
    p = settings["precision"]
    rows = []
    for metric, higher, kind in METRICS:
        a, b = [r[metric] for r in a_runs], [r[metric] for r in b_runs]
        stats = reward_gain(a_runs, b_runs) if kind == "delta" else ratio_ci(a, b)
        row = {
            "case": f"{CASE}/{settings['size']}" + ("" if p == "fp32" else f"@{p}"),
            "precision": p,
            "metric": metric,
            "higher_is_better": higher,
            "trl_framework": FRAMEWORKS[1],
            "repeats": len(a),
            "alignlab": sum(a) / len(a),
            "trl": sum(b) / len(b),
            **stats,
            "alignlab_runs": a,
            "trl_runs": b,
            "settings": settings,
        }
        if metric == "gold_reward":
            row["reward_before"] = sum(r["reward_before"] for r in b_runs) / len(b_runs)
            row["alignlab_train_seconds"] = [r["train_seconds"] for r in a_runs]
            row["trl_train_seconds"] = [r["train_seconds"] for r in b_runs]
        rows.append(row)
    return rows


def run_grpo(size, paths, seeds, timeout, precision, log=print, **overrides) -> list[dict]:
    """Interleaved A/B workers over seeds 0..seeds-1 (A B, then B A, ...); the rows of ``summarise``."""
    settings = grpo_settings(size, paths, precision, **overrides)
    runs: dict[str, list[dict]] = {fw: [] for fw in FRAMEWORKS}
    log(f"[bench_grpo] grpo/{size}: {seeds} seeds, precision {precision}")
    for seed in range(seeds):
        for fw in FRAMEWORKS if seed % 2 == 0 else FRAMEWORKS[::-1]:
            res = bench.spawn(CASE, fw, {**settings, "seed": seed}, timeout)
            if "error" in res:
                raise RuntimeError(res["error"])
            shown = ("samples_per_s", "rollout_tokens_per_s", "peak_rss_mb", "gold_reward", "train_seconds")
            log(f"  grpo/{size} {fw:14s} seed {seed}: " + ", ".join(f"{k}={res[k]:.4g}" for k in shown))
            runs[fw].append(res)
    return summarise(settings, runs)


def write_report(results_md: Path, doc: dict) -> None:
    """This benchmark's section of ``results_md`` (``bench_grpo_report``), with the SmolLM2 settings."""
    settings = grpo_settings("smollm2", {"data": "", "prompts": "", "eval_prompts": ""}, "fp32")
    write_section(results_md, doc, TO_RUN, settings)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(bench.SIZES), default="smollm2")
    p.add_argument("--seeds", type=int, default=3, help="A/B pairs, one training seed each (>= 2 for a CI)")
    p.add_argument(
        "--smoke", action="store_true", help="tiny model, 2 seeds, 1 s budgets: checks, not results"
    )
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument(
        "--budget-s", type=float, default=None, help="training seconds per worker (default: SIZES)"
    )
    p.add_argument("--loss-type", choices=("grpo", "dr_grpo", "dapo"), default=GRPO["loss_type"])
    p.add_argument("--num-iterations", type=int, default=GRPO["num_iterations"])
    p.add_argument("--out", default=str(bench.REPO / "bench"), help="directory of results.json / results.md")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per worker process")
    args = p.parse_args(argv)
    if args.smoke:
        args.size, args.seeds = SMOKE["size"], SMOKE["seeds"]
        args.budget_s = args.budget_s or SMOKE["budget_s"]
    if args.seeds < 2 or args.num_iterations < 1 or (args.budget_s is not None and args.budget_s <= 0):
        p.exit(2, "bench_grpo: --seeds must be >= 2 (a paired CI), --num-iterations >= 1, --budget-s > 0\n")
    precision, native = choose_precision(args.precision)
    why = (
        "native bf16: CUDA, or avx512_bf16 / amx_bf16" if native else "no avx512_bf16 / amx_bf16 on this CPU"
    )
    if precision == "bf16" and not native:
        p.exit(
            2, "bench_grpo: --precision bf16 on a CPU without native bf16 measures the emulation; use auto\n"
        )
    command = "python scripts/bench_grpo.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"[bench_grpo] {args.size}, {args.seeds} seeds, precision {precision} ({why})", flush=True)
    t0, load_start = time.time(), bench.load_avg()
    with tempfile.TemporaryDirectory(prefix="alignlab-bench-grpo-") as work:
        paths = bench.write_data(Path(work), args.size)
        rows = run_grpo(
            args.size, paths, args.seeds, args.timeout, precision, budget_s=args.budget_s,
            loss_type=args.loss_type, num_iterations=args.num_iterations,
        )  # fmt: skip
    meta = {
        "command": command,
        "machine": bench.machine(),
        "load_start": load_start,
        "load_end": bench.load_avg(),
        "minutes": (time.time() - t0) / 60,
        "repeats": args.seeds,
        "warmup_runs": 0,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out_dir = Path(args.out)
    doc = bench.merge(out_dir / "results.json", args.size, rows, meta, None)
    bench.write_outputs(out_dir, doc)
    write_report(out_dir / "results.md", doc)
    print(section(doc, TO_RUN, grpo_settings(args.size, paths, precision)))
    print(f"[bench_grpo] precision: {precision} ({why})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

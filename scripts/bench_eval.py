"""Evaluation's KL pass, old against new, and bf16 against fp32 evaluation, in one process.

    python scripts/bench_eval.py --model tiny                          # KL pass: old vs new, fp32
    python scripts/bench_eval.py --model smollm2 --n-prompts 64 --batch-size 32
    python scripts/bench_eval.py --model smollm2 --precision --n-prompts 96   # bf16 vs fp32 evaluation

The policy is the model with a LoRA adapter whose ``lora_B`` is drawn from N(0, ``--lora-std``) (a stand-in
for a trained adapter: KL to the reference of a few nats), saved and loaded back with ``load_policy`` as the
evaluate app does; prompts are the sentiment task's test split.

* speed (default): the KL pass of ``evaluate_policy`` the old way (a policy forward and a reference forward
  over each sampled batch) against the new one (log pi read from the decoding steps, the reference forward
  only), on the same sampled batches, and whole evaluations (sampling + KL) both ways; medians over
  alternating rounds (the order flips each round), printed as old / new ratios.
* ``--precision``: the same policy evaluated in fp32 (``ALIGNLAB_CPU_PRECISION=32-true``) and in bf16
  weights (``bf16-mixed``, as on a CPU with native bf16): gold reward and KL with their 95% CIs over
  prompts, and the bf16 - fp32 difference per prompt with its CI. On a CPU without native bf16 (no
  avx512_bf16 / amx_bf16 in /proc/cpuinfo) the bf16 run is slow (emulated kernels), not wrong.

Prints one JSON object (``--out`` also writes it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def spec_of(name: str):
    from alignlab.models import ModelSpec

    return ModelSpec(source="tiny", dtype="auto") if name == "tiny" else ModelSpec(source="smollm2_135m")


def save_policy(spec, out: Path, lora_std: float, seed: int = 0) -> Path:
    """The base model with a LoRA adapter drawn at random (lora_B ~ N(0, std)), saved under ``out``."""
    from alignlab.models import LoraSpec, apply_peft

    torch.manual_seed(seed)  # lora_A's initialisation
    policy = apply_peft(spec.load().model, LoraSpec(r=8, alpha=16))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * lora_std)
    policy.save_pretrained(out)
    return out


def sentiment_prompts(n: int) -> tuple[object, list[str]]:
    from alignlab.tasks.sentiment import SentimentTask

    cache = os.environ.get("ALIGNLAB_CACHE", str(Path.home() / ".cache" / "alignlab"))
    task = SentimentTask(cache_dir=cache)
    return task, task.prompts("test")[:n]


def set_precision(value: str) -> None:
    from alignlab.utils.precision import cpu_precision

    os.environ["ALIGNLAB_CPU_PRECISION"] = value
    cpu_precision.cache_clear()


def load(spec, adapter: Path, precision: str):
    from alignlab.models.reference import load_policy

    set_precision(precision)
    return load_policy(spec, adapter, "cpu")


def median_rounds(fns: dict, rounds: int) -> dict:
    """Median seconds of each function over ``rounds`` rounds, the order flipped every round (one warm-up)."""
    times: dict = {k: [] for k in fns}
    names = list(fns)
    for k in names:
        fns[k]()  # warm-up
    for r in range(rounds):
        for k in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def speed(args, spec, adapter: Path) -> dict:
    from alignlab.data.tokenize import Formatter
    from alignlab.evaluate import completion_kl, evaluate_policy
    from alignlab.models.generation import SamplingConfig, sample

    loaded = load(spec, adapter, "32-true")
    model, tok, ref = loaded.model, loaded.tokenizer, loaded.ref_model
    task, prompts = sentiment_prompts(args.n_prompts)
    cfg = SamplingConfig(max_new_tokens=args.max_new_tokens)
    fmt = Formatter(tok, False, None, 64, 64 + cfg.max_new_tokens + 1)
    ids = [fmt.prompt_ids(p) for p in prompts]
    batches = []
    for b in range(0, len(ids), args.batch_size):
        chunk = ids[b : b + args.batch_size]
        gen = sample(model, tok, chunk, cfg, generator_seed=b, lean_lora=True, return_logps=True)
        batches.append((chunk, gen))

    def kl_pass(reuse: bool):
        def run():
            for chunk, gen in batches:
                logps = gen.completion_logps if reuse else None
                completion_kl(
                    model, ref, chunk, gen.completion_ids, gen.completion_mask, tok.pad_token_id, logps
                )

        return run

    def evaluation(reuse: bool):
        def run():
            evaluate_policy(model, tok, task, prompts, cfg, reference=ref, batch_size=args.batch_size,
                            use_chat_template=False, n_bootstrap=100, reuse_sampling_logps=reuse)  # fmt: skip

        return run

    old = torch.cat([completion_kl(model, ref, c, g.completion_ids, g.completion_mask, tok.pad_token_id)
                     for c, g in batches])  # fmt: skip
    new = torch.cat([completion_kl(model, ref, c, g.completion_ids, g.completion_mask, tok.pad_token_id,
                                   g.completion_logps) for c, g in batches])  # fmt: skip
    kl_s = median_rounds({"old": kl_pass(False), "new": kl_pass(True)}, args.rounds)
    ev_s = median_rounds({"old": evaluation(False), "new": evaluation(True)}, args.eval_rounds)
    tokens = int(sum(g.completion_mask.sum() for _, g in batches))
    return {
        "kl_max_abs_diff_new_vs_old": float((new - old).abs().max()),
        "kl_mean": float(old.mean()),
        "completion_tokens": tokens,
        "kl_pass_s": {k: round(v, 4) for k, v in kl_s.items()},
        "kl_pass_speedup": round(kl_s["old"] / kl_s["new"], 3),
        "evaluation_s": {k: round(v, 4) for k, v in ev_s.items()},
        "evaluation_speedup": round(ev_s["old"] / ev_s["new"], 3),
    }


def precision_check(args, spec, adapter: Path) -> dict:
    import numpy as np

    from alignlab.evaluate import evaluate_policy
    from alignlab.models.generation import SamplingConfig
    from alignlab.stats import bootstrap_mean_ci

    task, prompts = sentiment_prompts(args.n_prompts)
    cfg = SamplingConfig(max_new_tokens=args.max_new_tokens)
    runs = {}
    for precision in ("32-true", "bf16-mixed"):
        loaded = load(spec, adapter, precision)
        start = time.perf_counter()
        m = evaluate_policy(loaded.model, loaded.tokenizer, task, prompts, cfg, reference=loaded.ref_model,
                            batch_size=args.batch_size, use_chat_template=False, seed=args.seed)  # fmt: skip
        m["seconds"] = round(time.perf_counter() - start, 1)
        runs[m["precision"]] = m
        del loaded
    out: dict = {}
    for name in ("gold_reward", "kl"):
        for p, m in runs.items():
            out[f"{name}_{p}"] = [
                round(m[name], 4),
                round(m[f"{name}_ci_low"], 4),
                round(m[f"{name}_ci_high"], 4),
            ]
        diff = np.asarray(runs["bf16"]["per_prompt"][name]) - np.asarray(runs["fp32"]["per_prompt"][name])
        lo, hi = bootstrap_mean_ci(diff, 1000, seed=0)
        out[f"{name}_bf16_minus_fp32"] = [round(float(diff.mean()), 4), round(lo, 4), round(hi, 4)]
        f, b = runs["fp32"], runs["bf16"]
        out[f"{name}_agree"] = bool(
            b[f"{name}_ci_low"] <= f[name] <= b[f"{name}_ci_high"] and f[f"{name}_ci_low"] <= b[name] <= f[f"{name}_ci_high"]
        )  # fmt: skip
    out["seconds"] = {p: m["seconds"] for p, m in runs.items()}
    out["completion_length"] = {p: round(m["completion_length"], 2) for p, m in runs.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    ap.add_argument(
        "--precision", action="store_true", help="bf16 vs fp32 evaluation instead of the speed run"
    )
    ap.add_argument("--n-prompts", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--lora-std", type=float, default=None, help="default: 0.5 (tiny), 0.05 (smollm2)")
    ap.add_argument("--rounds", type=int, default=5, help="KL-pass rounds per variant")
    ap.add_argument("--eval-rounds", type=int, default=3, help="whole-evaluation rounds per variant")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    std = args.lora_std if args.lora_std is not None else (0.5 if args.model == "tiny" else 0.05)
    spec = spec_of(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        adapter = save_policy(spec, Path(tmp) / "policy", std)
        result = (precision_check if args.precision else speed)(args, spec, adapter)
    from alignlab.utils.precision import cpu_flags

    flags = cpu_flags()
    result.update(
        {
            "model": args.model,
            "lora_std": std,
            "n_prompts": args.n_prompts,
            "batch_size": args.batch_size,
            "max_new_tokens": args.max_new_tokens,
            "threads": torch.get_num_threads(),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"native bf16: {'avx512_bf16' in flags or 'amx_bf16' in flags}",
        }
    )
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""alignlab against TRL on the same work: DPO + LoRA, reward model, online RL (see docs/bench.md).

    python scripts/bench.py --size tiny                 # CI-sized, a minute or two on a CPU
    python scripts/bench.py --size smollm2 --repeats 2  # the real case (bundled SmolLM2-135M)
    python scripts/bench.py --size smollm2 --scaling    # step time vs batch / length, FLOP/s vs roofline
    python scripts/bench.py --size smollm2 --precision bf16  # both sides in bf16 mixed precision

Both frameworks run in one precision (``--precision``: fp32, or bf16 autocast: alignlab's
``trainer.precision=bf16-mixed``, TRL's ``bf16=True``); bf16 rows are keyed ``<case>/<size>@bf16``.
Each (case, framework) runs in its own process (this script with ``--worker``), alternating A B, B A, ...
after ``--warmup-runs`` discarded rounds; every process has the same thread count (OMP_NUM_THREADS).
Results merge into ``bench/results.json`` (replacing rows of the same size) and ``bench/results.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Settings per model size: identical for both frameworks (see docs/bench.md for the reasoning).
SIZES = {
    "tiny": {
        "batch_size": 8,
        "max_length": 256,
        "max_prompt_length": 64,
        "steps": 8,
        "warmup_steps": 2,
        "prompt_words": (4, 8),
        "completion_words": (6, 18),
        "lr": 1e-3,
        "beta": 0.1,
        "rl": {
            "reward": "char_fraction",
            "budget_s": 15.0,
            "max_new_tokens": 16,
            "k": 4,
            "prompts_per_step": 4,
            "kl_coef": 0.05,
            "lr": 1e-3,
            "ppo_epochs": 1,
            "num_minibatches": 1,
            "fused_forward": True,
            "n_eval_prompts": 16,
        },
    },
    "smollm2": {
        "batch_size": 4,
        "max_length": 256,
        "max_prompt_length": 64,
        "steps": 3,
        "warmup_steps": 1,
        "prompt_words": (4, 10),
        "completion_words": (8, 24),
        "lr": 1e-4,
        "beta": 0.1,
        "rl": {
            "reward": "gold",
            "budget_s": 60.0,
            "max_new_tokens": 16,
            "k": 4,
            "prompts_per_step": 2,
            "kl_coef": 0.05,
            "lr": 2e-4,
            "ppo_epochs": 1,
            "num_minibatches": 1,
            "fused_forward": True,  # exact: one update per batch, so pi_old = the update's own forward
            "n_eval_prompts": 64,  # held-out prompts scored after training (VADER's SE ~0.4 / sqrt(n))
        },
    },
}
FRAMEWORKS = {
    "dpo": ["alignlab", "trl"],
    "reward": ["alignlab", "trl"],
    "rl": ["alignlab-ppo", "alignlab-rloo", "trl-rloo"],
    "grpo": ["alignlab-grpo", "trl-grpo"],  # scripts/bench_grpo.py: its own A/B over seeds, with CIs
}
# (metric, higher is better, kind): kind "ratio" reports alignlab / TRL, "delta" reports alignlab - TRL
METRICS = {
    "dpo": [("pairs_per_s", True, "ratio"), ("tokens_per_s", True, "ratio"), ("peak_rss_mb", False, "ratio")],
    "reward": [
        ("pairs_per_s", True, "ratio"),
        ("tokens_per_s", True, "ratio"),
        ("peak_rss_mb", False, "ratio"),
    ],
    "rl": [
        ("gold_reward", True, "delta"),
        ("rollout_tokens_per_s", True, "ratio"),
        ("samples_per_s", True, "ratio"),
        ("peak_rss_mb", False, "ratio"),
    ],
}
CASE_NAMES = {"dpo": "dpo_lora", "reward": "reward_model", "rl": "online_rl"}

POSITIVE = [
    "wonderful",
    "moving",
    "lovely",
    "bright",
    "superb",
    "warm",
    "charming",
    "delightful",
    "clever",
    "great",
]
NEGATIVE = ["dull", "awful", "flat", "tedious", "cold", "bad", "clumsy", "boring", "weak", "messy"]
FILLER = [
    "the",
    "film",
    "story",
    "cast",
    "plot",
    "with",
    "a",
    "and",
    "of",
    "its",
    "to",
    "in",
    "scenes",
    "music",
    "pacing",
    "ending",
    "acting",
    "camera",
    "moments",
    "long",
    "little",
    "every",
    "feels",
    "made",
    "through",
]


# -- data ---------------------------------------------------------------------------------------------------
def write_data(work: Path, size: str, n_pairs: int = 64, seed: int = 0) -> dict:
    """Synthetic review pairs (chosen positive, rejected negative, different lengths) and prompts."""
    from alignlab.utils.io import write_jsonl

    cfg = SIZES[size]
    rng = random.Random(seed)

    def words(lo_hi, pool):
        return " ".join(rng.choice(pool + FILLER) for _ in range(rng.randint(*lo_hi)))

    openings = ["The movie was", "This film felt", "The acting is", "Overall the story", "The ending was"]
    pairs = []
    for i in range(n_pairs):
        prompt = f"{openings[i % len(openings)]} {words(cfg['prompt_words'], FILLER)}"
        pairs.append(
            {
                "prompt": prompt,
                "chosen": " " + words(cfg["completion_words"], POSITIVE),
                "rejected": " " + words(cfg["completion_words"], NEGATIVE),
            }
        )
    n_eval = cfg["rl"].get("n_eval_prompts", 16)
    prompts = [
        {"prompt": f"Movie review: {openings[i % len(openings)]} {words((1, 4), FILLER)}"}
        for i in range(32 + n_eval)
    ]
    paths = {
        "data": work / "pairs.jsonl",
        "prompts": work / "prompts.jsonl",
        "eval_prompts": work / "eval.jsonl",
    }
    write_jsonl(paths["data"], pairs)
    write_jsonl(paths["prompts"], prompts[:32])
    write_jsonl(paths["eval_prompts"], prompts[32:])
    return {k: str(v) for k, v in paths.items()}


def case_settings(case: str, size: str, paths: dict, seed: int = 0, precision: str = "fp32") -> dict:
    cfg = SIZES[size]
    base = {"size": size, "seed": seed, "data": paths["data"], "precision": precision}
    if case == "rl":
        return {**base, **cfg["rl"], "prompts": paths["prompts"], "eval_prompts": paths["eval_prompts"]}
    keys = ("batch_size", "max_length", "max_prompt_length", "steps", "warmup_steps", "lr", "beta")
    return {**base, **{k: cfg[k] for k in keys}}


# -- running workers ------------------------------------------------------------------------------------------
def spawn(case: str, framework: str, settings: dict, timeout: float) -> dict:
    """Run one worker process; returns its measurements or {"error": ...}."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "PYTHONWARNINGS": "ignore",
    }
    with tempfile.TemporaryDirectory(prefix="bench-result-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            case,
            framework,
            json.dumps(settings),
            str(result),
        ]
        t = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        wall = time.perf_counter() - t
        if proc.returncode != 0 or not result.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
            return {"error": f"{case}/{framework} exited {proc.returncode}: " + "\n".join(tail)}
        out = json.loads(result.read_text())
        out["process_wall_s"] = wall
        return out


def run_case(
    case: str,
    size: str,
    paths: dict,
    repeats: int,
    warmup_runs: int,
    timeout: float,
    log=print,
    precision: str = "fp32",
) -> list[dict]:
    """Alternate the frameworks' processes; returns one result row per metric."""
    settings = case_settings(case, size, paths, precision=precision)
    frameworks = FRAMEWORKS[case]
    runs: dict[str, list[dict]] = {f: [] for f in frameworks}
    for i in range(warmup_runs + repeats):
        order = frameworks if i % 2 == 0 else frameworks[::-1]
        # online RL: each round its own seed (shared by the frameworks of the round), so the rounds' final
        # rewards are independent draws; with one seed they repeat the same trajectory
        round_settings = {**settings, "seed": i} if case == "rl" else settings
        for fw in order:
            res = spawn(case, fw, round_settings, timeout)
            if "error" in res:
                raise RuntimeError(res["error"])
            tag = "warm-up" if i < warmup_runs else f"repeat {i - warmup_runs + 1}"
            log(
                f"  {case}/{size} {fw:14s} {tag}: "
                + ", ".join(
                    f"{k}={v:.4g}"
                    for k, v in res.items()
                    if isinstance(v, float)
                    and k in dict.fromkeys([m for m, _, _ in METRICS[case]] + ["seconds", "train_seconds"])
                )
            )
            if i >= warmup_runs:
                runs[fw].append(res)
    return summarise(case, size, settings, runs)


def compare(a: list[float], b: list[float], kind: str) -> dict:
    """Median of each side and the pairwise ratio (or difference) with its min and max over the pairs."""
    pairs = [x / y if kind == "ratio" else x - y for x, y in zip(a, b) if kind == "delta" or y]
    out = {"alignlab": statistics.median(a), "trl": statistics.median(b)}
    if kind == "ratio":
        out.update(ratio=statistics.median(pairs), ratio_min=min(pairs), ratio_max=max(pairs))
    else:
        out.update(ratio=None, delta=statistics.median(pairs), delta_min=min(pairs), delta_max=max(pairs))
    return out


def summarise(case: str, size: str, settings: dict, runs: dict[str, list[dict]]) -> list[dict]:
    rows = []
    trl = next(f for f in runs if f.startswith("trl"))
    for fw in [f for f in runs if f.startswith("alignlab")]:
        name = CASE_NAMES[case] + ("" if fw == "alignlab" else f"_{fw.split('-', 1)[1]}")
        precision = settings.get("precision", "fp32")
        label = size if precision == "fp32" else f"{size}@{precision}"
        for metric, higher, kind in METRICS[case]:
            a = [r[metric] for r in runs[fw]]
            b = [r[metric] for r in runs[trl]]
            row = {
                "case": f"{name}/{label}",
                "precision": precision,
                "metric": metric,
                "higher_is_better": higher,
                "trl_framework": trl,
                "repeats": len(a),
                **compare(a, b, kind),
                "alignlab_runs": a,
                "trl_runs": b,
                "settings": settings,
            }
            if case == "rl" and metric == "gold_reward":
                row["reward_before"] = statistics.median(r["reward_before"] for r in runs[fw])
                if all("reward_after_se" in r for r in runs[fw] + runs[trl]):  # standard error of a mean
                    row["alignlab_se"] = statistics.median(r["reward_after_se"] for r in runs[fw])
                    row["trl_se"] = statistics.median(r["reward_after_se"] for r in runs[trl])
                row["alignlab_iterations"] = [r["iterations"] for r in runs[fw]]
                row["trl_iterations"] = [r["iterations"] for r in runs[trl]]
            if metric == "tokens_per_s":
                row["tokens_per_pair"] = {
                    "alignlab": runs[fw][0]["tokens_per_pair"],
                    "trl": runs[trl][0]["tokens_per_pair"],
                }
            rows.append(row)
    return rows


# -- reporting -------------------------------------------------------------------------------------------------
def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict:
    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    return {
        "device": dev,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": int(os.environ.get("OMP_NUM_THREADS", "1")),
        **versions(),
    }


def bf16_runs_natively() -> bool:
    """Whether the workers' device computes bf16 natively: a CUDA GPU (they pick it when present), or a
    CPU with AVX512-BF16 / AMX (``alignlab.utils.precision.cpu_has_bf16``)."""
    import torch

    from alignlab.utils.precision import cpu_has_bf16

    return torch.cuda.is_available() or cpu_has_bf16()


def versions() -> dict:
    from importlib.metadata import version

    return {p: version(p) for p in ("transformers", "trl", "peft", "lightning")}


def fmt(x) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def markdown(doc: dict) -> str:
    lines = [
        "# alignlab vs TRL: benchmark results",
        "",
        "Generated by `scripts/bench.py` (settings and method: docs/bench.md). Medians over repeats; "
        "ratio = alignlab / TRL per A/B pair (median, [min, max]); for gold reward the difference "
        "alignlab - TRL at equal wall time.",
        "",
    ]
    # one line per run: the case groups (e.g. ``dpo_lora/smollm2``) it measured, with its command and load
    by_run: dict[str, list[str]] = {}
    for key, meta in doc.get("meta", {}).items():
        by_run.setdefault(json.dumps(meta, sort_keys=True), []).append(key)
    for blob, keys in sorted(by_run.items(), key=lambda kv: sorted(kv[1])):
        meta = json.loads(blob)
        lines.append(
            f"- {', '.join(f'`{k}`' for k in sorted(keys))}: {meta['command']} on "
            f"{meta['machine']['device']}, {meta['machine']['threads']} thread(s), load average "
            f"{meta['load_start']} -> {meta['load_end']}, {meta['minutes']:.1f} min; "
            f"TRL {meta['machine']['trl']}, transformers {meta['machine']['transformers']}"
        )
    lines += [
        "",
        "| case | precision | metric | alignlab | TRL | alignlab/TRL [min, max] or difference |",
        "|---|---|---|---|---|---|",
    ]
    for r in doc["cases"]:
        better = "higher" if r["higher_is_better"] else "lower"
        if r["ratio"] is not None:
            cmp = f"{r['ratio']:.2f}x [{r['ratio_min']:.2f}, {r['ratio_max']:.2f}]"
        else:
            cmp = f"{r['delta']:+.3f} [{r['delta_min']:+.3f}, {r['delta_max']:+.3f}]"
        metric = r["metric"]
        if metric == "gold_reward":  # the reward the policy was trained and evaluated on
            before = f", {r['reward_before']:.3f} before training" if "reward_before" in r else ""
            metric = f"final reward [{r['settings']['reward']}{before}]"
        se = {k: f" ± {r[f'{k}_se']:.2f}" if f"{k}_se" in r else "" for k in ("alignlab", "trl")}
        lines.append(
            f"| {r['case']} | {r.get('precision', 'fp32')} | {metric} ({better} is better) | "
            f"{fmt(r['alignlab'])}{se['alignlab']} | "
            f"{fmt(r['trl'])}{se['trl']} | {cmp} |"
        )
    if doc.get("scaling"):
        from bench_scaling import scaling_markdown

        lines += ["", *scaling_markdown(doc["scaling"])]
    return "\n".join(lines) + "\n"


def case_group(row_case: str) -> str:
    """``online_rl_ppo/smollm2`` -> ``online_rl/smollm2``: the key of the run that measured a row."""
    name, size = row_case.rsplit("/", 1)
    group = next((g for g in CASE_NAMES.values() if name == g or name.startswith(g + "_")), name)
    return f"{group}/{size}"


def merge(path: Path, size: str, rows: list[dict] | None, meta: dict | None, scaling: dict | None) -> dict:
    """Add a run's rows to ``path``'s document: its case groups replace earlier rows of the same groups
    (other sizes and cases stay), and ``meta`` is kept per case group, so every row keeps the command,
    load and date of the run that produced it."""
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc.setdefault("meta", {})
    doc.setdefault("cases", [])
    doc.setdefault("scaling", {})
    for key in [k for k in doc["meta"] if "/" not in k]:  # older files: one meta per size
        old = doc["meta"].pop(key)
        for r in doc["cases"]:
            if r["case"].endswith(f"/{key}"):
                doc["meta"].setdefault(case_group(r["case"]), old)
    if rows is not None:
        new = {r["case"] for r in rows}
        doc["cases"] = [r for r in doc["cases"] if r["case"] not in new] + rows
        for group in {case_group(c) for c in new}:
            doc["meta"][group] = meta
    if scaling is not None:
        doc["scaling"][size] = scaling
    return doc


# Sections of results.md that this script does not generate, kept across regenerations in this order after
# the generated tables: the bf16 / fp32 measurements (written by hand, from bench/bf16*.json and the runs
# they cite) and scripts/bench_vllm.py's section (which it rewrites at the end of the file).
KEPT_SECTIONS = ("\n## GRPO against TRL", "\n## bf16 / fp32 per stage (alignlab)", "\n## vLLM rollout engine")


def write_outputs(out_dir: Path, doc: dict) -> None:
    from alignlab.utils.io import write_json, write_text

    write_json(out_dir / "results.json", doc)
    md, previous = markdown(doc), out_dir / "results.md"
    if previous.exists():  # the sections not generated from results.json: kept, from the first one on
        text = previous.read_text()
        starts = [text.index(s) for s in KEPT_SECTIONS if s in text]
        if starts:
            md = md.rstrip("\n") + "\n" + text[min(starts) :]
    write_text(out_dir / "results.md", md)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--cases", default="dpo,reward,rl", help="comma-separated subset of dpo,reward,rl")
    p.add_argument("--repeats", type=int, default=3, help="measured A/B rounds per case")
    p.add_argument("--warmup-runs", type=int, default=1, help="discarded A/B rounds before measuring")
    p.add_argument("--out", default=str(REPO / "bench"), help="directory of results.json / results.md")
    p.add_argument("--timeout", type=float, default=900, help="seconds per worker process")
    p.add_argument("--scaling", action="store_true", help="run the scaling study instead of the A/B cases")
    p.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32", help="both frameworks' training precision"
    )
    p.add_argument(
        "--worker", nargs=4, metavar=("CASE", "FRAMEWORK", "SETTINGS", "RESULT"), help=argparse.SUPPRESS
    )
    args = p.parse_args(argv)
    if args.worker:
        from bench_workers import run_worker

        case, fw, settings, result = args.worker
        if case == "grpo":
            import bench_grpo  # noqa: F401  (registers its workers)
        res = run_worker(case, fw, json.loads(settings))
        Path(result).write_text(json.dumps(res))
        return 0
    out_dir = Path(args.out)
    command = "python scripts/bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.scaling:
        from bench_scaling import run_scaling

        scaling = run_scaling(args.size, log=print)
        scaling.update(command=command, machine=machine())
        doc = merge(out_dir / "results.json", args.size, None, None, scaling)
        write_outputs(out_dir, doc)
        print(markdown(doc))
        return 0
    if args.precision == "bf16" and not bf16_runs_natively():
        print(
            f"[bench] skipped ({command}): this CPU has no native bf16 (avx512_bf16 / amx_bf16), so bf16 "
            "would run many times slower than fp32 and measure the emulation, not alignlab"
        )
        return 0
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(FRAMEWORKS))
    if unknown:
        p.error(f"unknown case(s) {unknown}; choose from {sorted(FRAMEWORKS)}")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    t0, load_start = time.time(), load_avg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="alignlab-bench-") as work:
        paths = write_data(Path(work), args.size)
        for case in cases:
            if case == "grpo":
                from bench_grpo import run_grpo

                rows += run_grpo(args.size, paths, max(args.repeats, 2), args.timeout, args.precision)
                continue
            print(
                f"[bench] {case} on {args.size}: {args.warmup_runs} warm-up + {args.repeats} A/B rounds",
                flush=True,
            )
            rows += run_case(
                case, args.size, paths, args.repeats, args.warmup_runs, args.timeout, precision=args.precision
            )
    meta = {
        "command": command,
        "machine": machine(),
        "load_start": load_start,
        "load_end": load_avg(),
        "minutes": (time.time() - t0) / 60,
        "repeats": args.repeats,
        "warmup_runs": args.warmup_runs,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    doc = merge(out_dir / "results.json", args.size, rows, meta, None)
    write_outputs(out_dir, doc)
    if "grpo" in cases:
        from bench_grpo import write_report

        write_report(out_dir / "results.md", doc)
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())

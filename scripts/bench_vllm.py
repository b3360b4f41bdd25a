"""Rollout tokens/s through a vLLM server against HF generate, alternating in the same RLOO training loop.

    python scripts/bench_vllm.py                                   # SmolLM2 + LoRA on CPU, 16 prompts x k=4 x 24 tokens
    python scripts/bench_vllm.py --device cuda --vllm-python .venv-vllm-gpu/bin/python \
        --server-args "--gpu-memory-utilization 0.3"              # what scripts/gpu_check.sh runs

One ``python -m alignlab.train``-equivalent RLOO run (``algo.rollout.engine=vllm``) whose rollout batches
alternate between the two engines: even batches through the vLLM server (the adapter of the latest update
saved and hot-loaded first: that cost is counted), odd ones through ``alignlab.models.generation.sample``
(HF generate with the lean LoRA modules and the shared prompt cache, as ``engine=hf`` samples). Between
them the RLOO update runs as usual, so both engines sample the same, moving policy under the same load.
The first batch of each engine is warm-up (the server's start, first allocations) and not counted.

Reports the median tokens/s (generated tokens, EOS included, per second of the sampling call) of each
engine, the median of the per-pair ratios vLLM / HF with [min, max], and the engine/trainer log-prob gap
(mean |log pi_vllm - log pi_trainer| over the completion tokens, ``rollout/engine_logp_gap``). Writes
``bench/vllm_rollout.json`` and its section of ``bench/results.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

REPO = Path(__file__).resolve().parents[1]
SECTION = "## vLLM rollout engine"


def overrides(args, out: Path) -> list[str]:
    trainer = "trainer=gpu" if args.device.startswith("cuda") else "trainer=cpu"
    rollout = ["algo.rollout.engine=vllm", "algo.rollout.port=0", f"algo.rollout.sync_dir={out / 'sync'}"]
    if args.vllm_python:
        rollout.append(f"algo.rollout.python={args.vllm_python}")
    if args.base_url:
        rollout.append(f"algo.rollout.base_url={args.base_url}")
    if args.server_args:
        rollout.append("algo.rollout.extra_args=[" + ",".join(shlex.split(args.server_args)) + "]")
    return [
        "algo=rloo",
        f"model={args.model}",
        "peft=lora",
        "data=prompts_toy",
        f"data.batch_size={args.prompts}",
        f"algo.k={args.k}",
        f"algo.max_new_tokens={args.max_new_tokens}",
        "reward@algo.reward=char_fraction",
        trainer,
        f"trainer.max_steps={2 * args.rounds + 2}",
        "trainer.limit_val_batches=0",
        "trainer.gradient_clip_val=null",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        "logger=csv",
        "callbacks=none",
        "optimized_metric=null",
        "algo.optimizer.lr=1e-4",
        f"paths.output_dir={out}",
        *rollout,
    ]


def compose(overrides_: list[str]):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    import alignlab.utils.hydra  # noqa: F401  (registers resolvers)

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hcompose(config_name="train", overrides=overrides_)


def alternate(calls: list[tuple[str, int, float]]):
    """Patch the vLLM engine's ``sample`` so that every other rollout batch goes through HF instead,
    recording (engine, generated tokens, seconds) per call."""
    from alignlab.models.generation import sample
    from alignlab.models.vllm_rollout import VLLMRolloutEngine

    vllm_sample = VLLMRolloutEngine.sample

    def sample_alternating(self, policy, tokenizer, prompt_ids, cfg, version, group=1):
        hf = len(calls) % 2 == 1
        if policy.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        if hf:
            gen = sample(policy, tokenizer, prompt_ids, cfg, lean_lora=True, group=group)
        else:
            gen = vllm_sample(self, policy, tokenizer, prompt_ids, cfg, version, group)
        if policy.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        calls.append(("hf" if hf else "vllm", int(gen.completion_mask.sum()), dt))
        print(
            f"  batch {len(calls)}: {calls[-1][0]:4s} {calls[-1][1] / dt:7.1f} tokens/s ({dt:.1f} s)",
            flush=True,
        )
        return gen

    VLLMRolloutEngine.sample = sample_alternating

    def restore():
        VLLMRolloutEngine.sample = vllm_sample

    return restore


def logged_gap(out: Path) -> list[float]:
    """The ``rollout/engine_logp_gap`` values the run logged (CSV logger)."""
    values = []
    for path in out.rglob("metrics.csv"):
        with open(path) as f:
            for row in csv.DictReader(f):
                v = row.get("rollout/engine_logp_gap")
                if v not in (None, ""):
                    values.append(float(v))
    return values


def write_section(results_md: Path, result: dict) -> None:
    """Replace (or add) this benchmark's section at the end of ``bench/results.md``."""
    text = results_md.read_text() if results_md.exists() else ""
    head = text.split(SECTION)[0].rstrip("\n")
    r = result
    section = [
        SECTION,
        "",
        f"`{r['command']}` on {r['device']} ({r['threads']} thread(s) here, the vLLM CPU server binds one "
        f"core), {r['date']}. Not alignlab vs TRL: the same RLOO loop sampling its rollout batches "
        "alternately through a vLLM server (adapter hot-loaded after each update, its cost included) and "
        "through HF generate in process. Expect no gain from vLLM on a CPU with a 135M model; its value "
        "is on GPUs (scripts/gpu_check.sh measures it there).",
        "",
        "| case | metric | vLLM | HF generate | vLLM/HF [min, max] |",
        "|---|---|---|---|---|",
        f"| rloo_rollout/{r['model']} {r['settings']['prompts']}x{r['settings']['k']}x"
        f"{r['settings']['max_new_tokens']} | rollout_tokens_per_s (higher is better) | {r['vllm']:.1f} | "
        f"{r['hf']:.1f} | {r['ratio']:.2f}x [{r['ratio_min']:.2f}, {r['ratio_max']:.2f}] |",
        "",
        f"Engine/trainer log-prob gap (mean |log pi_vLLM - log pi_trainer| per completion token; vLLM in "
        f"{r['server_dtype']}, the trainer's pi_old in {r['trainer_precision']}): {r['logp_gap']:.2e}. Adapter save + hot-load: {r['sync_seconds']:.1f} s over "
        f"{r['syncs']} syncs (in the vLLM rates above).",
    ]
    results_md.write_text((head + "\n\n" if head else "") + "\n".join(section) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--model", default="smollm2_135m", help="alignlab model source (the server loads its directory)"
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (the trainer's device)")
    p.add_argument("--prompts", type=int, default=16, help="prompts per rollout batch")
    p.add_argument("--k", type=int, default=4, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--rounds", type=int, default=4, help="measured (vLLM, HF) pairs after the warm-up pair")
    p.add_argument("--vllm-python", default=None, help="python with vllm (default: .venv-vllm, make vllm)")
    p.add_argument(
        "--base-url", default=None, help="a running vLLM server's /v1 root instead of starting one"
    )
    p.add_argument(
        "--server-args", default="", help="extra vllm serve flags, e.g. '--gpu-memory-utilization 0.3'"
    )
    p.add_argument("--out", default=str(REPO / "bench" / "vllm_rollout.json"))
    p.add_argument("--run-dir", default=str(REPO / "outputs" / "bench_vllm"), help="the RLOO run's directory")
    p.add_argument("--results-md", default=str(REPO / "bench" / "results.md"), help="'' to leave it alone")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from alignlab.train import train

    run_dir = Path(args.run_dir)
    calls: list[tuple[str, int, float]] = []
    restore = alternate(calls)
    try:
        metrics, objects = train(compose(overrides(args, run_dir)))
    finally:
        restore()
    measured = calls[2:]  # the first pair is warm-up
    rates = {e: [n / dt for name, n, dt in measured if name == e] for e in ("vllm", "hf")}
    pairs = list(zip(rates["vllm"], rates["hf"]))
    if not pairs:
        print("bench_vllm: no measured pair (raise --rounds)")
        return 1
    ratios = [v / h for v, h in pairs]
    gap = logged_gap(run_dir)
    result = {
        "case": f"rloo_rollout/{args.model}",
        "metric": "rollout_tokens_per_s",
        "model": args.model,
        "vllm": statistics.median(rates["vllm"]),
        "hf": statistics.median(rates["hf"]),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "vllm_runs": rates["vllm"],
        "hf_runs": rates["hf"],
        "logp_gap": statistics.mean(gap) if gap else float("nan"),
        # adapter save + hot-load, all syncs (the first one included), and how many
        "sync_seconds": objects["module"].rollout_engine.sync_seconds,
        "syncs": objects["module"].rollout_engine.syncs,
        "server_dtype": objects["module"].rollout_engine.dtype or "given server's",
        "trainer_precision": str(objects["trainer"].precision),
        "device": torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"CPU ({os.cpu_count()} cores)",
        "threads": torch.get_num_threads(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "results_md")},
        "command": " ".join(["python scripts/bench_vllm.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if args.results_md:
        write_section(Path(args.results_md), result)
    print(
        f"rollout tokens/s, {args.prompts} prompts x {args.k} x {args.max_new_tokens} tokens, same RLOO loop: "
        f"vLLM {result['vllm']:.1f}, HF generate {result['hf']:.1f}; vLLM/HF {result['ratio']:.2f}x "
        f"[{result['ratio_min']:.2f}, {result['ratio_max']:.2f}]; log-prob gap {result['logp_gap']:.2e} -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

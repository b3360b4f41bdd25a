"""scripts/bench_vllm.py's harness on the tiny model against the stand-in server (tests/fake_vllm.py): the
RLOO loop alternates the engines, the ratio is the median of the per-pair ratios, the gap comes from the
run's log, and its bench/results.md section replaces itself."""

from __future__ import annotations

import json
import statistics
import sys

from alignlab.models import ModelSpec
from conftest import REPO
from fake_vllm import FakeVLLM

sys.path.insert(0, str(REPO / "scripts"))
import bench_vllm


def test_bench_alternates_engines_in_one_rloo_run(tmp_path):
    lm = ModelSpec(source="tiny", dtype="float32").load()
    results_md = tmp_path / "results.md"
    results_md.write_text("# results\n\n| a | b |\n\n## vLLM rollout engine\n\nold section\n")
    args = ["--model", "tiny", "--prompts", "2", "--k", "2", "--max-new-tokens", "4", "--rounds", "2"]
    args += ["--out", str(tmp_path / "vllm.json"), "--results-md", str(results_md)]
    args += ["--run-dir", str(tmp_path / "run")]
    with FakeVLLM(lm.model, lm.tokenizer) as fake:
        assert bench_vllm.main([*args, "--base-url", fake.base_url]) == 0
        completions = [p for p, _ in fake.calls if p == "/v1/completions"]
        loads = [b["lora_name"] for p, b in fake.calls if p == "/v1/load_lora_adapter"]
    result = json.loads((tmp_path / "vllm.json").read_text())
    # 6 rollout batches: vLLM, HF, vLLM, HF, vLLM, HF; the first pair is warm-up
    assert len(completions) == 3 and len(result["vllm_runs"]) == len(result["hf_runs"]) == 2
    assert loads == ["alignlab-base-lora-0", "alignlab-base-lora-2", "alignlab-base-lora-4"]
    ratios = [v / h for v, h in zip(result["vllm_runs"], result["hf_runs"])]
    assert result["ratio"] == statistics.median(ratios)
    assert result["ratio_min"] == min(ratios) and result["ratio_max"] == max(ratios)
    assert 0 <= result["logp_gap"] < 1e-4  # logged by the run on its vLLM batches
    assert result["syncs"] == 3 and result["sync_seconds"] > 0
    text = results_md.read_text()
    assert text.startswith("# results\n\n| a | b |") and "old section" not in text
    assert text.count("## vLLM rollout engine") == 1 and "rloo_rollout/tiny 2x2x4" in text
    assert f"{result['ratio']:.2f}x" in text


def test_bench_overrides_compose_for_cpu_and_gpu(tmp_path):
    from conftest import compose

    parser_defaults = dict(model="smollm2_135m", prompts=16, k=4, max_new_tokens=24, rounds=3, base_url=None)
    for device, server_args in (("cpu", ""), ("cuda", "--gpu-memory-utilization 0.3")):
        args = type(
            "Args",
            (),
            dict(parser_defaults, device=device, vllm_python="/v/bin/python", server_args=server_args),
        )
        cfg = compose(bench_vllm.overrides(args, tmp_path))
        assert cfg.algo.k == 4 and cfg.data.batch_size == 16 and cfg.trainer.max_steps == 8
        assert cfg.algo.rollout.engine == "vllm" and cfg.algo.rollout.python == "/v/bin/python"
        if device == "cuda":
            assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"
        assert [str(a) for a in cfg.algo.rollout.extra_args] == server_args.split()

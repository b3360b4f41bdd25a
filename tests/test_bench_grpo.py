"""scripts/bench_grpo.py (GRPO against TRL's GRPOTrainer): the statistics on hand-computed numbers, both
sides' settings read back from their own config objects, the precision rule, bad arguments, the
results.md section, and one smoke run of the real workers (fields present and finite; no timing asserted)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import bench
import bench_grpo
import bench_workers as bw
from alignlab.stats import paired_gain, t_quantile

PATHS = {"data": "d.jsonl", "prompts": "p.jsonl", "eval_prompts": "e.jsonl"}
KEPT = "\n## bf16 / fp32 per stage (alignlab)\n\nhand-written text\n"


def run(sps: float, scores: list[float]) -> dict:
    return {"samples_per_s": sps, "rollout_tokens_per_s": 100.0, "peak_rss_mb": 500.0, "train_seconds": 1.0,
            "gold_reward": sum(scores) / len(scores), "eval_scores": scores, "reward_before": 0.1}  # fmt: skip


def test_summarise_geometric_ratio_ci_and_paired_reward_gain():
    a_scores = [[0.5, 0.7, 0.6], [0.4, 0.6, 0.8], [0.9, 0.2, 0.4]]
    b_scores = [[0.4, 0.7, 0.5], [0.5, 0.5, 0.5], [0.6, 0.3, 0.3]]
    runs = {
        "alignlab-grpo": [run(4.0, a_scores[0]), run(9.0, a_scores[1]), run(2.0, a_scores[2])],
        "trl-grpo": [run(2.0, b_scores[0]), run(3.0, b_scores[1]), run(1.0, b_scores[2])],
    }
    settings = bench_grpo.grpo_settings("tiny", PATHS, "fp32")
    rows = {r["metric"]: r for r in bench_grpo.summarise(settings, runs)}
    assert set(rows) == {"gold_reward", "samples_per_s", "rollout_tokens_per_s", "peak_rss_mb"}
    sps = rows["samples_per_s"]
    # per-seed ratios 2, 3, 2: geometric mean 12^(1/3), t CI on the logs (2 df), min 2, max 3
    logs = [math.log(2), math.log(3), math.log(2)]
    half = t_quantile(2) * float(np.std(logs, ddof=1)) / math.sqrt(3)
    assert sps["ratio"] == pytest.approx(12 ** (1 / 3))
    assert sps["ci_low"] == pytest.approx(12 ** (1 / 3) * math.exp(-half))
    assert sps["ci_high"] == pytest.approx(12 ** (1 / 3) * math.exp(half))
    assert (sps["ratio_min"], sps["ratio_max"]) == (2.0, 3.0) and sps["case"] == "grpo/tiny"
    assert sps["alignlab"] == pytest.approx(5.0) and sps["trl"] == pytest.approx(2.0)
    gold = rows["gold_reward"]
    diffs = np.subtract(a_scores, b_scores)  # alignlab - TRL, seeds x prompts
    assert gold["ratio"] is None and gold["delta"] == pytest.approx(diffs.mean())
    g = paired_gain(diffs)
    assert (gold["ci_low"], gold["ci_high"]) == pytest.approx((g["ci_low"], g["ci_high"]))
    assert gold["ci_low"] < gold["delta"] < gold["ci_high"]
    assert (gold["delta_min"], gold["delta_max"]) == pytest.approx((diffs.mean(1).min(), diffs.mean(1).max()))
    assert gold["reward_before"] == pytest.approx(0.1)
    # bench.py's table takes the rows as they are
    assert "| grpo/tiny | fp32 | samples_per_s (higher is better) | 5 | 2 | 2.29x [2.00, 3.00] |" in (
        bench.markdown({"cases": list(rows.values())})
    )


@pytest.mark.parametrize(
    "variant",
    [{}, {"loss_type": "dr_grpo", "scale_rewards": False, "epsilon_high": 0.28, "num_iterations": 2}],
)
def test_both_sides_get_the_same_settings(tmp_path, variant):
    """alignlab's composed config and TRL's GRPOConfig, each read back, carry the same values."""
    from hydra.utils import instantiate
    from trl import GRPOConfig

    s = {**bench_grpo.grpo_settings("smollm2", PATHS, "fp32"), **variant}
    cfg = bw.compose(bench_grpo.alignlab_overrides(s, str(tmp_path)))
    t = GRPOConfig(**bench_grpo.trl_args(s, str(tmp_path)))
    a = cfg.algo
    assert (a.k, a.max_new_tokens, a.temperature) == (
        t.num_generations,
        t.max_completion_length,
        t.temperature,
    )
    assert cfg.data.batch_size * a.k == t.per_device_train_batch_size
    assert (a.beta, a.epsilon_low, a.epsilon_high) == (t.beta, t.epsilon, t.epsilon_high)
    assert a.loss_aggregation == t.loss_type and a.num_iterations == t.num_iterations
    assert t.scale_rewards == ("group" if a.scale_rewards else "none")
    assert (a.optimizer.lr, a.max_grad_norm) == (t.learning_rate, t.max_grad_norm)
    assert a.fused_forward == (a.num_iterations == 1)
    assert cfg.trainer.precision == "32-true" and not t.bf16
    assert (a.k, a.loss_aggregation, a.epsilon_high) == (s["k"], s["loss_type"], s["epsilon_high"])
    # the reward: the same plain function on both sides (TRL gets it by the name alignlab imports)
    assert a.reward.fn == f"bench_grpo:{bench_grpo.SCORE_FNS[s['reward']]}"
    assert instantiate(a.reward).fn is getattr(bench_grpo, bench_grpo.SCORE_FNS[s["reward"]])


def test_char_score_is_a_plain_reward_function():
    assert bench_grpo.char_fraction_score(["p", "p"], ["abc ", "ABC!"], completion_ids=None) == [1.0, 0.0]


def test_precision_is_bf16_only_where_native(monkeypatch):
    monkeypatch.setattr(bench, "bf16_runs_natively", lambda: False)
    assert bench_grpo.choose_precision("auto") == ("fp32", False)
    monkeypatch.setattr(bench, "bf16_runs_natively", lambda: True)
    assert bench_grpo.choose_precision("auto") == ("bf16", True)
    assert bench_grpo.choose_precision("fp32") == ("fp32", True)


@pytest.mark.parametrize(
    "argv, words", [(["--seeds", "1"], "--seeds must be >= 2"), (["--precision", "bf16"], "emulation")]
)
def test_bad_arguments_exit_2_with_one_line(monkeypatch, capsys, argv, words):
    monkeypatch.setattr(bench, "bf16_runs_natively", lambda: False)
    monkeypatch.setattr(bench_grpo, "run_grpo", lambda *a, **k: pytest.fail("ran before checking arguments"))
    with pytest.raises(SystemExit) as e:
        bench_grpo.main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and words in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_section_is_written_once_in_place_and_kept_by_bench(tmp_path):
    md = tmp_path / "results.md"
    md.write_text("# table\n" + KEPT)
    bench_grpo.write_report(md, {})
    text = md.read_text()
    assert text.index("## GRPO against TRL") < text.index("## bf16 / fp32") and bench_grpo.TO_RUN in text
    row = {"case": "grpo/tiny", "precision": "fp32", "metric": "samples_per_s", "higher_is_better": True,
           "ratio": 1.5, "ci_low": 1.2, "ci_high": 1.9, "alignlab": 3.0, "trl": 2.0}  # fmt: skip
    doc = {"cases": [row], "meta": {}}
    bench_grpo.write_report(md, doc)
    text = md.read_text()
    assert text.count("## GRPO against TRL") == 1 and text.endswith(KEPT) and bench_grpo.TO_RUN not in text
    assert (
        "| grpo/tiny | fp32 | samples_per_s (higher is better) | 3 | 2 | 1.50x [1.20, 1.90] | ≥ 1.3x: met"
        in text
    )
    bench.write_outputs(tmp_path, {**doc, "cases": []})  # bench.py regenerates its tables, keeps ours
    assert "1.50x [1.20, 1.90]" in md.read_text() and md.read_text().endswith(KEPT)


@pytest.mark.slow  # four worker processes (torch, lightning, TRL imports): ~60 s of CPU idle
def test_smoke_run_writes_finite_rows(tmp_path, capsys):
    assert bench_grpo.main(["--smoke", "--out", str(tmp_path)]) == 0
    precision = bench_grpo.choose_precision("auto")[0]
    assert f"[bench_grpo] precision: {precision} (" in capsys.readouterr().out
    doc = json.loads((tmp_path / "results.json").read_text())
    rows = {r["metric"]: r for r in doc["cases"]}
    assert set(rows) == {"gold_reward", "samples_per_s", "rollout_tokens_per_s", "peak_rss_mb"}
    for r in rows.values():
        assert (
            r["case"] == "grpo/tiny" + ("" if precision == "fp32" else "@bf16")
            and r["precision"] == precision
        )
        assert len(r["alignlab_runs"]) == len(r["trl_runs"]) == 2
        values = [r["alignlab"], r["trl"], r["ci_low"], r["ci_high"], *r["alignlab_runs"], *r["trl_runs"]]
        values.append(r["delta"] if r["ratio"] is None else r["ratio"])
        assert all(math.isfinite(v) for v in values), r
        assert r["ci_low"] <= (r["delta"] if r["ratio"] is None else r["ratio"]) <= r["ci_high"]
    for metric in ("samples_per_s", "rollout_tokens_per_s", "peak_rss_mb"):
        assert min(rows[metric]["alignlab_runs"] + rows[metric]["trl_runs"]) > 0
    assert 0 <= rows["gold_reward"]["reward_before"] <= 1
    assert "grpo/tiny" in doc["meta"] and "| grpo/tiny" in (tmp_path / "results.md").read_text()

"""The benchmark harness (scripts/bench.py): ratio arithmetic, results schema, one real tiny A/B round."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import bench


def test_compare_ratio_is_per_pair_median_with_min_max():
    out = bench.compare([10.0, 30.0, 8.0], [5.0, 10.0, 8.0], "ratio")
    assert out["alignlab"] == 10.0 and out["trl"] == 8.0
    # pairwise ratios 2, 3, 1 -> median 2, min 1, max 3 (not the ratio of the medians, 10/8)
    assert (out["ratio"], out["ratio_min"], out["ratio_max"]) == (2.0, 1.0, 3.0)


def test_compare_delta_for_rewards():
    out = bench.compare([0.5, 0.1], [0.2, 0.3], "delta")
    assert out["ratio"] is None
    assert out["delta_min"] == pytest.approx(-0.2) and out["delta_max"] == pytest.approx(0.3)


def test_summarise_merge_and_markdown(tmp_path):
    runs = {
        "alignlab": [
            {"pairs_per_s": 4.0, "tokens_per_s": 400.0, "peak_rss_mb": 500.0, "tokens_per_pair": 100},
            {"pairs_per_s": 6.0, "tokens_per_s": 600.0, "peak_rss_mb": 510.0, "tokens_per_pair": 100},
        ],
        "trl": [
            {"pairs_per_s": 2.0, "tokens_per_s": 200.0, "peak_rss_mb": 600.0, "tokens_per_pair": 101},
            {"pairs_per_s": 4.0, "tokens_per_s": 400.0, "peak_rss_mb": 600.0, "tokens_per_pair": 101},
        ],
    }
    rows = bench.summarise("dpo", "tiny", {"batch_size": 8}, runs)
    by_metric = {r["metric"]: r for r in rows}
    assert set(by_metric) == {"pairs_per_s", "tokens_per_s", "peak_rss_mb"}
    pairs = by_metric["pairs_per_s"]
    assert pairs["case"] == "dpo_lora/tiny" and pairs["ratio"] == 1.75  # median of 2.0 and 1.5
    assert (pairs["ratio_min"], pairs["ratio_max"]) == (1.5, 2.0)
    assert by_metric["tokens_per_s"]["tokens_per_pair"] == {"alignlab": 100, "trl": 101}
    meta = {
        "command": "x",
        "machine": {"device": "cpu", "threads": 1, "trl": "1.16.0", "transformers": "5"},
        "load_start": [1.0],
        "load_end": [2.0],
        "minutes": 0.5,
    }
    path = tmp_path / "results.json"
    other = {**rows[0], "case": "reward_model/tiny"}
    doc = bench.merge(path, "tiny", [*rows, other], meta, None)
    bench.write_outputs(tmp_path, doc)
    again = bench.merge(path, "tiny", rows[:1], meta, None)  # a rerun replaces that case's rows only
    assert [r["case"] for r in again["cases"]] == ["reward_model/tiny", "dpo_lora/tiny"]
    table = (tmp_path / "results.md").read_text()
    assert "| dpo_lora/tiny | fp32 | pairs_per_s (higher is better) | 5 | 3 | 1.75x [1.50, 2.00] |" in table
    # a bf16 run is its own case (it does not replace the fp32 rows) and says its precision
    bf16 = bench.summarise("dpo", "tiny", {"batch_size": 8, "precision": "bf16"}, runs)
    both = bench.merge(path, "tiny", bf16, meta, None)
    assert {(r["case"], r.get("precision")) for r in both["cases"] if r["metric"] == "pairs_per_s"} == {
        ("dpo_lora/tiny", "fp32"),
        ("dpo_lora/tiny@bf16", "bf16"),
        ("reward_model/tiny", "fp32"),
    }
    bench.write_outputs(tmp_path, both)
    assert "| dpo_lora/tiny@bf16 | bf16 | pairs_per_s" in (tmp_path / "results.md").read_text()


def test_one_tiny_round_end_to_end(tmp_path, monkeypatch):
    """Both frameworks' reward-model workers run as processes and fill the schema (no timing asserted)."""
    monkeypatch.setitem(bench.SIZES, "tiny", {**bench.SIZES["tiny"], "steps": 2, "warmup_steps": 1})
    assert (
        bench.main(
            [
                "--size",
                "tiny",
                "--cases",
                "reward",
                "--repeats",
                "1",
                "--warmup-runs",
                "0",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    doc = json.loads((tmp_path / "results.json").read_text())
    rows = {r["metric"]: r for r in doc["cases"]}
    assert set(rows) == {"pairs_per_s", "tokens_per_s", "peak_rss_mb"}
    for r in rows.values():
        assert {"case", "metric", "alignlab", "trl", "ratio", "ratio_min", "ratio_max", "settings"} <= set(r)
        assert r["alignlab"] > 0 and r["trl"] > 0
        assert r["ratio"] == pytest.approx(r["alignlab"] / r["trl"])
    # both frameworks trained on the same token sequences
    tpp = rows["tokens_per_s"]["tokens_per_pair"]
    assert tpp["alignlab"] == pytest.approx(tpp["trl"])
    assert doc["meta"]["reward_model/tiny"]["load_start"] and doc["meta"]["reward_model/tiny"]["load_end"]
    assert "reward_model/tiny" in (tmp_path / "results.md").read_text()


def test_meta_is_kept_per_case_group(tmp_path):
    """Two runs on one size (dpo+reward, then rl) keep both commands; an older one-meta-per-size file
    is split over the case groups it measured."""
    row = {"metric": "pairs_per_s", "higher_is_better": True, "ratio": 2.0, "ratio_min": 1.5}
    row |= {"ratio_max": 2.5, "alignlab": 2.0, "trl": 1.0, "settings": {}}
    machine = {"device": "cpu", "threads": 1, "trl": "1.16.0", "transformers": "5"}

    def meta(cmd):
        return {"command": cmd, "machine": machine, "load_start": [1.0], "load_end": [1.0], "minutes": 1.0}

    path = tmp_path / "results.json"
    old = {"meta": {"smollm2": meta("old")}, "cases": [{**row, "case": "dpo_lora/smollm2"}], "scaling": {}}
    path.write_text(json.dumps(old))
    doc = bench.merge(path, "smollm2", [{**row, "case": "reward_model/smollm2"}], meta("dpo,reward"), None)
    assert doc["meta"]["dpo_lora/smollm2"]["command"] == "old"
    bench.write_outputs(tmp_path, doc)
    rl = [{**row, "case": "online_rl_ppo/smollm2"}, {**row, "case": "online_rl_rloo/smollm2"}]
    doc = bench.merge(path, "smollm2", rl, meta("rl"), None)
    assert {k: v["command"] for k, v in doc["meta"].items()} == {
        "dpo_lora/smollm2": "old",
        "reward_model/smollm2": "dpo,reward",
        "online_rl/smollm2": "rl",
    }
    assert bench.case_group("online_rl_rloo/smollm2") == "online_rl/smollm2"
    table = bench.markdown(doc)
    assert "- `online_rl/smollm2`: rl on cpu" in table and "- `reward_model/smollm2`: dpo,reward" in table


def test_rl_rounds_get_their_own_seed_and_report_the_standard_error(monkeypatch, tmp_path):
    """Online RL: each A/B round trains from its own seed (both frameworks of a round share it), so the
    final rewards of the rounds are independent; the table shows each side's standard error."""
    seen = []

    def fake_spawn(case, fw, settings, timeout):
        seen.append((fw, settings["seed"]))
        reward = 0.3 + 0.1 * settings["seed"] if fw.startswith("alignlab") else 0.2
        return {
            "gold_reward": reward,
            "reward_before": 0.1,
            "reward_after_se": 0.05 if fw.startswith("alignlab") else 0.06,
            "iterations": 10,
            "rollout_tokens_per_s": 50.0,
            "samples_per_s": 1.0,
            "peak_rss_mb": 100.0,
        }

    monkeypatch.setattr(bench, "spawn", fake_spawn)
    paths = {"data": "d", "prompts": "p", "eval_prompts": "e"}
    rows = bench.run_case("rl", "smollm2", paths, repeats=2, warmup_runs=0, timeout=1, log=lambda *_: None)
    assert [s for _, s in seen] == [0, 0, 0, 1, 1, 1]
    assert [fw for fw, _ in seen[3:]] == list(reversed(bench.FRAMEWORKS["rl"]))  # B A order in round 2
    gold = next(r for r in rows if r["metric"] == "gold_reward" and r["case"] == "online_rl_rloo/smollm2")
    assert gold["alignlab_runs"] == pytest.approx([0.3, 0.4]) and gold["delta"] == pytest.approx(0.15)
    assert (gold["alignlab_se"], gold["trl_se"]) == (0.05, 0.06)
    assert "0.35 ± 0.05 | 0.2 ± 0.06 | +0.150" in bench.markdown({"cases": rows})
    settings = bench.case_settings("rl", "smollm2", paths)
    assert settings["fused_forward"] is True and settings["n_eval_prompts"] == 64


def test_rollout_ab_writes_alternating_rates(tmp_path):
    """scripts/bench_rollout.py on the tiny model: both samplers measured in every round, the ratio is the
    median of the per-round ratios, within their range."""
    import bench_rollout

    out = tmp_path / "rollout.json"
    assert bench_rollout.main(["--model", "tiny", "--rounds", "3", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["case"] == "rollout_sampling/tiny" and res["metric"] == "rollout_tokens_per_s"
    runs_a, runs_t = res["alignlab_runs"], res["trl_runs"]
    assert len(runs_a) == len(runs_t) == 3 and min(runs_a + runs_t) > 0
    ratios = sorted(a / t for a, t in zip(runs_a, runs_t))
    assert res["ratio"] == pytest.approx(ratios[1]) and res["ratio_min"] == pytest.approx(ratios[0])
    assert res["alignlab"] == pytest.approx(sorted(runs_a)[1])
    assert res["settings"]["rounds"] == 3 and res["settings"]["k"] == 4

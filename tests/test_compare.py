"""The comparison report aggregates runs over seeds and draws a readable frontier."""

from __future__ import annotations

import json

import pytest

from alignlab.compare import main, mean_ci, write_report


def _run(root, method, seed, gold, kl):
    d = root / method / str(seed)
    d.mkdir(parents=True)
    ev = {
        "gold_reward": gold,
        "gold_reward_ci_low": gold - 0.1,
        "gold_reward_ci_high": gold + 0.1,
        "kl": kl,
        "kl_ci_low": kl * 0.8,
        "kl_ci_high": kl * 1.2,
        "second_reward": gold / 2,
    }
    csv = d / "metrics.csv"
    csv.write_text("step,train/loss\n0,0.7\n1,0.6\n2,0.5\n")
    (d / "result.json").write_text(
        json.dumps(
            {
                "method": method,
                "seed": seed,
                "eval": ev,
                "labels_used": 64,
                "judge_calls": 0,
                "wall_time_s": 12.0,
                "base_eval": {"gold_reward": 0.1, "gold_reward_ci_low": 0.0, "gold_reward_ci_high": 0.2},
                "curves": [{"stage": "train", "csv": str(csv), "metric": "train/loss"}],
            }
        )
    )


def test_mean_ci_over_seeds():
    m, h = mean_ci([1.0, 2.0, 3.0])
    assert m == pytest.approx(2.0) and h == pytest.approx(4.303 * 1.0 / 3**0.5, rel=1e-3)
    m, h = mean_ci([0.5], [(0.3, 0.9)])
    assert (m, h) == (pytest.approx(0.5), pytest.approx(0.3))


def test_report_table_and_plots(tmp_path, capsys):
    for seed, (g, k) in enumerate([(0.4, 1.0), (0.6, 2.0)]):
        _run(tmp_path / "runs", "dpo", seed, g, k)
    _run(tmp_path / "runs", "rlhf", 0, 0.3, 0.5)
    report, tab = write_report([tmp_path / "runs"], tmp_path / "report")
    lines = [line for line in tab.splitlines() if line.startswith("| dpo") or line.startswith("| rlhf")]
    assert len(lines) == 2
    dpo = next(line for line in lines if line.startswith("| dpo"))
    assert "| 2 |" in dpo and "+0.500 ±" in dpo and "+1.500 ±" in dpo  # means over the two seeds
    png = (tmp_path / "report" / "frontier.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert (tmp_path / "report" / "curves.png").exists()
    assert "frontier.png" in report.read_text()
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "r2")]) == 0
    assert "| rlhf | 1 |" in capsys.readouterr().out


def test_no_runs_is_a_clear_error(tmp_path, capsys):
    assert main([str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "no finished runs" in capsys.readouterr().err

"""``alignlab.compare --wandb`` (issue 30, where users look): the comparison as one offline wandb run that
holds the report's tables, one row per method with its CI as numbers, and the two figures."""

from __future__ import annotations

import json

import pytest
import wandb

from alignlab.compare import main
from alignlab.compare_wandb import markdown_tables, parse_stat
from alignlab.loggers import offline_runs
from test_compare import _run


def _table(run_dir, key: str) -> dict:
    (path,) = (run_dir / "files" / "media" / "table").glob(f"{key}_*.table.json")
    return json.loads(path.read_text())


def test_compare_logs_the_report_as_one_offline_wandb_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for seed, (dpo, rlhf) in enumerate([(0.2, 0.0), (0.25, 0.02), (0.22, 0.01)]):
        _run(tmp_path / "runs", "dpo", seed, dpo, 1.0 + seed / 10)
        _run(tmp_path / "runs", "rlhf", seed, rlhf, 0.5 + seed / 10)
    out = tmp_path / "report"
    assert main([str(tmp_path / "runs"), "--out", str(out), "--wandb"]) == 0
    wandb.teardown()  # the service writes the run file out when it stops

    (run,) = offline_runs(out / "wandb")
    assert run.job_type == "compare"
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    (row,) = [h for h in run.history if "methods._type" in h]  # the reader flattens nested keys
    for key in ("methods", "tables/verdict", "tables/between_methods", "tables/examples"):
        assert row[f"{key}._type"] == "table-file", key
    assert row["frontier._type"] == "image-file" and row["curves._type"] == "image-file"
    assert len(list((run_dir / "files" / "media" / "images").glob("*.png"))) == 2

    # the report's main table, as written, and one row per method with its numbers
    report = (out / "report.md").read_text()
    verdict = _table(run_dir, "tables/verdict")
    for r in verdict["data"]:
        assert "| " + " | ".join(r) + " |" in report
    methods = _table(run_dir, "methods")
    rows = {r[0]: dict(zip(methods["columns"], r)) for r in methods["data"]}
    assert set(rows) == {"dpo", "rlhf"} and rows["dpo"]["seeds"] == 3
    for m in rows.values():
        assert m["gold_reward_ci_low"] < m["gold_reward"] < m["gold_reward_ci_high"]
        assert m["gain_ci_low"] < m["gain"] < m["gain_ci_high"]
    assert rows["dpo"]["gain"] == pytest.approx(0.22, abs=0.03) and rows["dpo"]["gain_ci_low"] > 0
    pairs = _table(run_dir, "tables/between_methods")
    assert pairs["data"][0][:2] == ["dpo", "rlhf"]
    examples = _table(run_dir, "tables/examples")
    assert examples["columns"] == ["part", "policy", "completion", "gold"] and len(examples["data"]) == 3
    assert "Beat the base policy" in run.summary["verdict"]


def test_report_cells_parse_to_numbers():
    assert parse_stat("+0.123 ± 0.045") == pytest.approx((0.123, 0.078, 0.168))
    assert parse_stat("-0.200 [-0.310, -0.090] **↓**") == pytest.approx((-0.2, -0.31, -0.09))
    assert parse_stat("12 s") == (12.0, None, None)
    assert parse_stat("n/a") == (None, None, None)
    text = "## A: x\n\n| a | b |\n|---|---|\n| 1 \\| 2 | 3 |\n\n## Examples\n\n**P1**\n\n| p | c |\n|---|---|\n| x | y |\n\n**P2**\n\n| p | c |\n|---|---|\n| z | w |\n"
    assert markdown_tables(text) == {
        "a": (["a", "b"], [["1 | 2", "3"]]),
        "examples": (["part", "p", "c"], [["**P1**", "x", "y"], ["**P2**", "z", "w"]]),
    }

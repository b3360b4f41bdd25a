"""scripts/bench_stages.py: make compare's stage times per precision, from the pipeline's result files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import bench_stages


def _result(root: Path, precision: str, method: str, stages: list[tuple[str, float, bool]]) -> None:
    d = root / f"stages-{precision}" / "compare" / "quick" / f"{method}-s0"
    d.mkdir(parents=True)
    rec = {"method": method, "precision": precision,
           "stages": [{"stage": n, "seconds": s, "cached": c} for n, s, c in stages]}  # fmt: skip
    (d / "result.json").write_text(json.dumps(rec))


def test_stage_times_per_precision_skip_cache_hits_and_keep_methods_apart(tmp_path):
    for prec, k in (("32-true", 2.0), ("bf16-mixed", 1.0)):
        _result(
            tmp_path,
            prec,
            "rloo",
            [("samples", 40.0, False), ("rloo", 100.0 * k, False), ("eval", 50.0, False)],
        )
        _result(
            tmp_path, prec, "dpo", [("samples", 40.0, True), ("dpo", 60.0 * k, False), ("eval", 30.0, False)]
        )
    fp32 = bench_stages.collect("32-true", tmp_path)
    assert fp32 == {"samples": [40.0], "rloo (rloo)": [200.0], "dpo (dpo)": [120.0], "eval": [30.0, 50.0]}
    stages = {p: bench_stages.collect(p, tmp_path) for p in bench_stages.PRECISIONS}
    tab = bench_stages.table(stages, {"32-true": 900.0, "bf16-mixed": 600.0})
    assert "| rloo (rloo) | 200.0 | 100.0 | 2.00x |" in tab
    assert "| eval (sum of 2 runs) | 80.0 | 80.0 | 1.00x |" in tab
    assert "| samples | 40.0 | 40.0 | 1.00x |" in tab  # the cached copy in dpo's run is not counted twice
    assert "| **whole comparison (wall)** | 900 | 600 | 1.50x |" in tab


def test_a_run_in_the_other_precision_is_refused(tmp_path):
    _result(tmp_path, "32-true", "rloo", [("rloo", 1.0, False)])
    path = tmp_path / "stages-32-true" / "compare" / "quick" / "rloo-s0" / "result.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "precision": "bf16-mixed"}))
    with pytest.raises(SystemExit, match="trained in bf16-mixed"):
        bench_stages.collect("32-true", tmp_path)

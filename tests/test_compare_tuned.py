"""Tuned runs (``alignlab.tune``'s final runs carry ``tuned``) are never tested against untuned methods: a
tuned method without a default run beside untuned methods is reported on the frontier, apart from the
between-method tests; tuned methods alone are tested against each other."""

from __future__ import annotations

import json

from alignlab.compare import find_results, frontier_rows, pairwise, split_sweeps, summarise, write_report
from test_compare import _run

LR = {"algo.optimizer.lr": 0.001}


def _tuned(root, method, seed, shift, kl):
    _run(root, method, seed, shift, kl, variant=LR)
    path = (
        root / (method + json.dumps(LR).replace('"', "")) / str(seed) / "result.json"
    )  # test_compare's layout
    rec = json.loads(path.read_text())
    path.write_text(json.dumps({**rec, "tuned": "tuned_quick"}))


def test_a_tuned_method_is_kept_out_of_the_untuned_verdicts(tmp_path):
    for seed in (0, 1):
        _run(tmp_path, "dpo", seed, 0.3, 4.0)
        _run(tmp_path, "rloo", seed, 0.2, 6.0)
        _tuned(tmp_path, "rlhf", seed, 0.5, 5.0)  # tuned, no default rlhf run here
        _tuned(tmp_path, "dpo", seed, 0.4, 4.5)  # tuned, beside its default run
    methods, sweep = split_sweeps(summarise(find_results([tmp_path])))
    assert sorted(m["method"] for m in methods) == ["dpo", "rloo"]
    assert sorted(s["method"] for s in sweep) == [
        "dpo tuned (algo.optimizer.lr=0.001)",
        "rlhf tuned (algo.optimizer.lr=0.001)",
    ]
    assert [(p["a"], p["b"]) for p in pairwise(methods)] == [("dpo", "rloo")]
    front = {(f["method"], f["setting"]): f for f in frontier_rows(methods, sweep)}
    assert front["rlhf", "its own"]["seeds"] == 0 and front["rlhf", "tuned: lr=0.001"]["seeds"] == 2
    assert front["rlhf", "tuned: lr=0.001"]["vs_own"] is None  # nothing to pair with
    assert front["dpo", "tuned: lr=0.001"]["vs_own"]["mean"] > 0  # the tuned-vs-default gain
    text = write_report([tmp_path], tmp_path / "report")[0].read_text()
    between = text.split("## Between methods")[1].split("\n## ")[0]
    assert "tuned" not in between and "| dpo | rloo |" in between
    assert "| rlhf | tuned: lr=0.001 | 2 |" in text.split("## Frontier")[1]


def test_tuned_methods_alone_are_tested_against_each_other(tmp_path):
    for seed in (0, 1):
        _tuned(tmp_path, "rlhf", seed, 0.5, 5.0)
        _tuned(tmp_path, "dpo", seed, 0.3, 4.0)
    methods, sweep = split_sweeps(summarise(find_results([tmp_path])))
    assert sweep == [] and all(m["tuned"] == "tuned_quick" for m in methods)
    ((a, b),) = [(p["a"], p["b"]) for p in pairwise(methods)]
    assert {a, b} == {"dpo tuned (algo.optimizer.lr=0.001)", "rlhf tuned (algo.optimizer.lr=0.001)"}

"""The comparison report: paired gains over the base policy, pairwise tests with Holm's correction, the
verdict made from them, and readable plots."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
from scipy import stats as st

from alignlab.compare import main, mean_ci, paired_matrix, pairwise, summarise, verdict, write_report
from alignlab.stats import paired_gain

N = 64
BASE = np.random.default_rng(0).normal(0.1, 0.3, N)


def _run(root, method, seed, shift, kl, noise=0.05, variant=None, labeller="gold"):
    d = root / (method + json.dumps(variant or {}).replace('"', "")) / str(seed)
    d.mkdir(parents=True)
    # zlib.crc32, not hash(): hash() of a str changes with PYTHONHASHSEED, and so would the noise
    rng = np.random.default_rng(1000 + seed + zlib.crc32(method.encode()) % 1000)
    per = BASE + shift + rng.normal(0, noise, N)
    gold = float(per.mean())
    ev = {"gold_reward": gold, "gold_reward_ci_low": gold - 0.1, "gold_reward_ci_high": gold + 0.1, "kl": kl,
          "kl_ci_low": kl * 0.8, "kl_ci_high": kl * 1.2, "second_reward": gold / 2, "n": N,
          "per_prompt": {"gold_reward": per.tolist(), "second_reward": (per / 2).tolist()}}  # fmt: skip
    base = {"gold_reward": float(BASE.mean()), "gold_reward_ci_low": 0.0, "gold_reward_ci_high": 0.2, "n": N,
            "per_prompt": {"gold_reward": BASE.tolist(), "second_reward": (BASE / 2).tolist()}}  # fmt: skip
    csv = d / "metrics.csv"
    csv.write_text("step,train/loss\n0,0.7\n1,0.6\n2,0.5\n")
    examples = {"base": [{"prompt": "The film", "completion": "was dull", "gold": -0.3}],
                "policy": [{"prompt": "The film", "completion": f"was great ({method})", "gold": 0.6}]}  # fmt: skip
    rec = {"method": method, "seed": seed, "eval": ev, "labels_used": 64, "judge_calls": 0, "wall_time_s": 12.0,
           "labeller": labeller, "label_audit": {"gold_accuracy": 0.72, "gold_kappa": 0.44}, "variant": variant or {},
           "base_eval": base, "examples": examples,
           "curves": [{"stage": "dpo", "csv": str(csv), "metric": "train/loss", "panel": "dpo: train/loss",
                       "samples_per_step": 8}]}  # fmt: skip
    (d / "result.json").write_text(json.dumps(rec))


def test_mean_ci_over_seeds_uses_t_quantiles():
    m, h = mean_ci([1.0, 2.0, 3.0])
    assert m == pytest.approx(2.0) and h == pytest.approx(4.303 * 1.0 / 3**0.5, rel=1e-3)
    v = np.arange(12.0)  # df = 11: t = 2.201, not the normal 1.96
    assert mean_ci(list(v))[1] == pytest.approx(2.201 * v.std(ddof=1) / 12**0.5, rel=1e-3)
    m, h = mean_ci([0.5], [(0.3, 0.9)])
    assert (m, h) == (pytest.approx(0.5), pytest.approx(0.3))


def test_paired_gain_separates_a_real_shift_from_none(tmp_path):
    # three seeds: with two, a seed-aware interval has ~1 degree of freedom and is honestly very wide
    _run(tmp_path, "dpo", 0, 0.2, 1.0)
    _run(tmp_path, "dpo", 1, 0.25, 1.2)
    _run(tmp_path, "dpo", 2, 0.22, 1.1)
    _run(tmp_path, "rlhf", 0, 0.0, 0.5)
    _run(tmp_path, "rlhf", 1, 0.0, 0.6)
    _run(tmp_path, "rlhf", 2, 0.0, 0.55)
    from alignlab.compare import find_results

    rows = {r["method"]: r for r in summarise(find_results([tmp_path]))}
    g = rows["dpo"]["gain"]
    assert g["seeds"] == 3 and g["prompts"] == N and 0.1 < g["ci_low"] < g["mean"] < g["ci_high"] < 0.35
    assert g["mean"] == pytest.approx(0.223, abs=0.02)
    h = rows["rlhf"]["gain"]
    assert h["ci_low"] < 0 < h["ci_high"]
    # the MDE comes from the same SE and df as the interval, with the 80% power term
    assert rows["dpo"]["mde"] == pytest.approx((st.t.ppf(0.975, g["df"]) + st.t.ppf(0.8, g["df"])) * g["se"])
    # paired: the prompts' own spread (sd 0.3) cancels, so one seed's CI is far narrower than an unpaired one
    one = paired_gain(paired_matrix(rows["dpo"]["runs"], "gold_reward")[:1])
    assert one["ci_high"] - one["ci_low"] < 0.3 * 2 * 1.96 / np.sqrt(N) / 2
    pairs = pairwise(list(rows.values()))
    assert len(pairs) == 1 and pairs[0]["p_holm"] < 0.05
    text = verdict(list(rows.values()), pairs)
    assert "Beat the base policy" in text and "dpo" in text.split("Inconclusive against the base")[0]
    assert "rlhf" in text.split("Inconclusive against the base")[1] and "dpo > rlhf" in text


def test_holm_adjusts_every_pair(tmp_path):
    for m, shift in (("a", 0.0), ("b", 0.01), ("c", 0.02), ("d", 0.3)):
        _run(tmp_path, m, 0, shift, 1.0)
    from alignlab.compare import find_results

    rows = summarise(find_results([tmp_path]))
    pairs = pairwise(rows)
    assert len(pairs) == 6
    assert all(p["p_holm"] >= p["p"] for p in pairs)
    smallest = min(pairs, key=lambda p: p["p"])
    assert smallest["p_holm"] == pytest.approx(min(1.0, 6 * smallest["p"]))


def test_report_table_verdict_examples_and_plots(tmp_path, capsys):
    for seed, shift in enumerate([0.3, 0.35]):
        _run(tmp_path / "runs", "dpo", seed, shift, 1.0 + seed)
    _run(tmp_path / "runs", "rlaif_dpo", 0, 0.0, 0.5, labeller="tuned_smollm2")
    for beta, kl in ((0.1, 2.0), (0.3, 1.0), (1.0, 0.3)):
        _run(tmp_path / "runs", "dpo", 0, 0.1, kl, variant={"algo.beta": beta})
    report, tab = write_report([tmp_path / "runs"], tmp_path / "report")
    text = report.read_text()
    dpo = next(line for line in tab.splitlines() if line.startswith("| dpo | 2"))
    assert "**↑**" in dpo  # the paired CI excludes 0
    rlaif = next(line for line in tab.splitlines() if line.startswith("| rlaif_dpo"))
    assert "72% (κ +0.44)" in rlaif and "**↑**" not in rlaif
    assert "## Verdict" in text and "## Between methods" in text and "Holm" in text
    assert "was great (dpo)" in text and "was dull" in text  # the examples, side by side
    assert "minimum detectable gain" in text
    assert "not at equal KL" in text  # KLs from 0.3 to 1.5: the verdict says gains are at equal compute
    for png in ("frontier.png", "curves.png"):
        data = (tmp_path / "report" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "r2")]) == 0
    assert "| rlaif_dpo | 1 |" in capsys.readouterr().out


def test_no_runs_is_a_clear_error(tmp_path, capsys):
    assert main([str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "no finished runs" in capsys.readouterr().err


def test_report_names_where_runs_trained_and_flags_mixed_precision():
    from alignlab.compare import provenance

    amd = {"cpu": "AMD EPYC", "cores": 2, "gpu": None}
    same = [{"precision": "32-true", "machine": amd} for _ in range(3)]
    text = provenance(same)
    assert "32-true" in text and "AMD EPYC, 2 cores" in text and "mix" not in text
    mixed = [*same, {"precision": "bf16-mixed", "machine": {"cpu": "Intel Xeon", "cores": 2}}]
    assert "mix precisions" in provenance(mixed)
    assert "1 run(s) recorded neither" in provenance([*same, {}])
    assert provenance([{}, {}]) == ""  # old records: nothing claimed


def test_sweep_points_are_the_frontier_not_methods_of_the_holm_family(tmp_path):
    """A method rerun with one setting changed (``variant``) is reported beside the method at its own
    setting, on the same seeds, and kept out of the between-method tests: with three methods and two sweep
    points the Holm family is the three methods' three pairs, not the ten pairs of five rows."""
    from alignlab.compare import find_results, frontier_rows, split_sweeps

    for seed in (0, 1):
        _run(tmp_path, "dpo", seed, 0.3, 4.0)
        _run(tmp_path, "rloo", seed, 0.2, 6.0)
    _run(tmp_path, "ppo", 0, 0.1, 3.0)
    _run(tmp_path, "dpo", 0, 0.45, 9.0, variant={"algo.beta": 0.03})
    _run(tmp_path, "dpo", 0, 0.1, 1.0, variant={"algo.beta": 0.3})
    _run(tmp_path, "kto", 0, 0.2, 2.0, variant={"algo.beta": 0.5})  # a variant alone: a method of its own
    methods, sweep = split_sweeps(summarise(find_results([tmp_path])))
    assert sorted(m["method"] for m in methods) == ["dpo", "kto (algo.beta=0.5)", "ppo", "rloo"]
    assert sorted(s["method"] for s in sweep) == ["dpo (algo.beta=0.03)", "dpo (algo.beta=0.3)"]
    assert len(pairwise(methods)) == 6
    front = frontier_rows(methods, sweep)
    assert [(f["method"], f["setting"], f["seeds"]) for f in front] == [
        ("dpo", "its own", 1),
        ("dpo", "beta=0.03", 1),
        ("dpo", "beta=0.3", 1),
    ]
    own, low, high = front
    assert own["gain"]["mean"] == pytest.approx(0.3, abs=0.03)  # seed 0 only: the sweep's seed
    assert own["kl"][0] == pytest.approx(4.0)
    # the paired difference from the own setting on the same seed and prompts
    assert low["vs_own"]["mean"] == pytest.approx(0.15, abs=0.03) and low["vs_own"]["ci_low"] > 0
    assert high["vs_own"]["mean"] == pytest.approx(-0.2, abs=0.03) and high["vs_own"]["ci_high"] < 0
    report, _ = write_report([tmp_path], tmp_path / "report")
    text = report.read_text()
    assert "5 methods" not in text and "4 methods and 2 sweep point(s)" in text
    assert "## Frontier" in text and "| dpo | beta=0.03 | 1 |" in text
    between = text.split("## Between methods")[1].split("##")[0]
    assert "beta=0.03" not in between and "| dpo | ppo | 1 |" in between  # seeds matched: ppo has seed 0


def test_verdict_says_when_pairs_rest_on_one_seed(tmp_path):
    from alignlab.compare import find_results

    for m, shift in (("a", 0.0), ("b", 0.3)):
        _run(tmp_path, m, 0, shift, 1.0)
    rows = summarise(find_results([tmp_path]))
    assert "Every pair rest(s) on one training seed" in verdict(rows, pairwise(rows))
    _run(tmp_path, "a", 1, 0.0, 1.0)
    _run(tmp_path, "b", 1, 0.3, 1.0)
    rows = summarise(find_results([tmp_path]))
    assert "one training seed" not in verdict(rows, pairwise(rows))


def test_frontier_line_runs_through_the_sweep_seed_in_order_of_kl():
    from alignlab.compare_plots import sweep_lines

    def rec(seed, kl, gold, variant=None):
        return {"seed": seed, "variant": variant or {}, "eval": {"kl": kl, "gold_reward": gold}}

    runs = [rec(0, 7.5, 0.56), rec(1, 8.5, 0.52), rec(2, 7.6, 0.56),  # the own setting, 3 seeds
            rec(0, 12.2, 0.65, {"algo.beta": 0.03}), rec(0, 2.7, 0.36, {"algo.beta": 0.3})]  # fmt: skip
    assert sweep_lines(runs) == {0: [(2.7, 0.36, "0.3"), (7.5, 0.56, "own"), (12.2, 0.65, "0.03")]}
    assert sweep_lines(runs[:3]) == {}  # seeds of one setting are not a sweep


def test_pair_verdicts_say_equivalent_only_after_tost(tmp_path):
    # a and b differ by 0.01 on 64 prompts x 1 seed: not significant; the 90% CI (about +-0.03 here) lies
    # inside +-0.1, so TOST calls them equivalent; at a margin of 0.01 it cannot, so "inconclusive"
    _run(tmp_path, "a", 0, 0.0, 1.0)
    _run(tmp_path, "b", 0, 0.01, 1.0)
    from alignlab.compare import _pair_verdict, find_results

    rows = summarise(find_results([tmp_path]))
    wide, tight = pairwise(rows, margin=0.1)[0], pairwise(rows, margin=0.01)[0]
    assert wide["p_holm"] >= 0.05 and wide["equivalent"] and not tight["equivalent"]
    assert _pair_verdict(wide) == "equivalent (±0.1)" and _pair_verdict(tight) == "inconclusive"
    assert "Equivalent within ±0.1" in verdict(rows, [wide]) and "inconclusive" in verdict(rows, [tight])


def test_a_third_scorer_gets_its_own_paired_column_only_when_the_runs_have_one(tmp_path):
    for seed in range(3):
        _run(tmp_path, "dpo", seed, 0.2 + 0.01 * seed, 1.0)
    _, tab = write_report([tmp_path], tmp_path / "report")
    assert "third-scorer" not in tab
    for f in tmp_path.glob("dpo*/*/result.json"):  # what scripts/rescore.py adds: a third per-prompt score
        rec = json.loads(f.read_text())
        rec["eval"]["per_prompt"]["third_reward"] = [3 * x for x in rec["eval"]["per_prompt"]["gold_reward"]]
        rec["base_eval"]["per_prompt"]["third_reward"] = [
            3 * x for x in rec["base_eval"]["per_prompt"]["gold_reward"]
        ]
        f.write_text(json.dumps(rec))
    rows = summarise([json.loads(f.read_text()) for f in sorted(tmp_path.glob("dpo*/*/result.json"))])
    assert rows[0]["third_gain"]["mean"] == pytest.approx(3 * rows[0]["gain"]["mean"])
    _, tab = write_report([tmp_path], tmp_path / "report")
    head, sep, row = tab.splitlines()[:3]
    assert "third-scorer gain [95% CI]" in head and head.count("|") == sep.count("|") == row.count("|")

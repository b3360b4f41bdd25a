"""Simulated human labels (judge=gold), pair labelling and the label app."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from alignlab.judges.base import check_judgements
from alignlab.judges.gold import GoldJudge, bt_probability, pair_uniform
from alignlab.tasks.pairs import PairSet, label_pairs
from conftest import compose


class NumberTask:
    """A task whose gold reward of a completion is the number it spells."""

    name = "numbers"
    rubric = "Prefer the larger number."

    def gold_scores(self, prompts, completions):
        return np.array([float(c) for c in completions])

    def second_scores(self, prompts, completions):
        return -self.gold_scores(prompts, completions)


def _judge(**kw) -> GoldJudge:
    return GoldJudge(task=NumberTask(), **kw)


# -- the gold judge ----------------------------------------------------------------------------------------
def test_temperature_zero_is_the_noiseless_gold_ordering_with_ties_and_invalid():
    out = _judge(temperature=0).judge_pairs(
        ["p"] * 4, ["0.3", "0.1", "0.2", "nan"], ["0.1", "0.3", "0.20", "0.1"]
    )
    assert [r["verdict"] for r in out] == ["first", "second", "tie", "invalid"]
    assert [r["p_first"] for r in out] == [1.0, 0.0, 0.5, None]
    assert out[0]["judge"].startswith("gold:numbers") and out[0]["judge_name"] == "gold"
    assert out[0]["p_forward"] == out[0]["p_backward"] == 1.0 and out[0]["template_hash"] is None
    assert "gold_first=0.3" in out[0]["raw"][0]
    margin = _judge(temperature=0.1, tie_margin=0.05).judge_pairs(
        ["p", "p"], ["0.30", "0.40"], ["0.27", "0.27"]
    )
    assert margin[0]["verdict"] == "tie" and margin[1]["verdict"] in ("first", "second")
    assert margin[0]["p_first"] == 0.5 and margin[1]["p_first"] in (0.0, 1.0)  # one annotator: a hard label
    assert margin[1]["p_first"] == (1.0 if margin[1]["verdict"] == "first" else 0.0)
    assert f"p_bt={1 / (1 + math.exp(-1.3)):.6g}" in margin[1]["raw"][0]


def test_bt_probability_closed_form():
    assert bt_probability(np.array([0.1, -0.1, 0.0]), 0.1) == pytest.approx(
        [1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1)), 0.5]
    )
    assert bt_probability(np.array([1e3]), 1e-3)[0] == 1.0  # no overflow
    assert bt_probability(np.array([0.2, -0.2, 0.0]), 0).tolist() == [1.0, 0.0, 0.5]
    with pytest.raises(ValueError, match="temperature"):
        GoldJudge(temperature=-1)


@pytest.mark.parametrize("temperature,delta", [(0.1, 0.1), (0.05, 0.1), (0.2, 0.05)])
def test_label_noise_matches_the_configured_rate(temperature, delta):
    n = 4000
    prompts = [f"prompt {i}" for i in range(n)]
    out = _judge(temperature=temperature, seed=1).judge_pairs(prompts, [str(0.5 + delta)] * n, ["0.5"] * n)
    agree = np.mean([r["verdict"] == "first" for r in out])
    p = 1 / (1 + math.exp(-delta / temperature))
    assert abs(agree - p) < 4 * math.sqrt(p * (1 - p) / n), (agree, p)


def test_draws_do_not_depend_on_order_or_batching():
    rng = np.random.default_rng(0)
    a = [f"{x:.3f}" for x in rng.uniform(-1, 1, 300)]
    b = [f"{x:.3f}" for x in rng.uniform(-1, 1, 300)]
    prompts = [f"p{i}" for i in range(300)]
    judge = _judge(temperature=0.3)
    whole = judge.judge_pairs(prompts, a, b)
    chunks = [
        r for s in range(0, 300, 7) for r in judge.judge_pairs(prompts[s : s + 7], a[s : s + 7], b[s : s + 7])
    ]
    swapped = judge.judge_pairs(prompts, b, a)
    assert [r["verdict"] for r in whole] == [r["verdict"] for r in chunks]
    flip = {"first": "second", "second": "first", "tie": "tie"}
    assert [flip[r["verdict"]] for r in whole] == [r["verdict"] for r in swapped]
    assert pair_uniform(0, "p", "x", "y") == pytest.approx(1 - pair_uniform(0, "p", "y", "x"))
    other_seed = _judge(temperature=0.3, seed=5).judge_pairs(prompts, a, b)
    assert [r["verdict"] for r in other_seed] != [r["verdict"] for r in whole]


def _signal(row: dict, a: str) -> tuple[str, float]:
    """What a loss learns from a labelled row about text ``a``: the hard label (is ``a`` chosen) and the
    soft label P(a ≻ the other text)."""
    a_chosen = row["chosen"] == a
    return ("chosen" if a_chosen else "rejected", row["p_chosen"] if a_chosen else 1 - row["p_chosen"])


def test_flipping_an_annotators_draw_changes_the_signal_of_every_loss():
    n = 400
    prompts = [f"p{i}" for i in range(n)]
    firsts, seconds = ["0.55"] * n, ["0.5"] * n
    pairs = PairSet(prompts, firsts, seconds)
    rows = {}
    for seed in (0, 1):
        out, _ = label_pairs(_judge(temperature=0.1, seed=seed), pairs, NumberTask(), progress=False)
        rows[seed] = {r["prompt"]: r for r in out}
    flipped = [
        p for p in prompts if rows[0][p]["provenance"]["verdict"] != rows[1][p]["provenance"]["verdict"]
    ]
    assert len(flipped) > 50  # σ(0.5) ≈ 0.62: draws often differ between seeds
    for p in flipped:  # hard losses (chosen/rejected) and soft losses (p_chosen) both see the other vote
        hard0, soft0 = _signal(rows[0][p], "0.55")
        hard1, soft1 = _signal(rows[1][p], "0.55")
        assert hard0 != hard1 and abs(soft0 - soft1) == 1.0


def test_several_annotators_give_the_share_of_votes():
    n = 2000
    prompts = [f"p{i}" for i in range(n)]
    out = _judge(temperature=0.1, annotators=5).judge_pairs(prompts, ["0.6"] * n, ["0.5"] * n)
    p = 1 / (1 + math.exp(-1.0))
    shares = np.array([r["p_first"] for r in out])
    assert set(np.round(shares * 5).astype(int)) <= set(range(6))  # k of 5 votes
    assert abs(shares.mean() - p) < 4 * math.sqrt(p * (1 - p) / (5 * n))
    assert all(r["verdict"] == ("first" if r["p_first"] > 0.5 else "second") for r in out)
    even = _judge(temperature=0.1, annotators=2).judge_pairs(prompts, ["0.6"] * n, ["0.5"] * n)
    split = [r for r in even if r["p_first"] == 0.5]
    assert split and all(r["verdict"] == "tie" for r in split)  # an even split is never a preference
    rows, rep = label_pairs(
        _judge(temperature=0.1, annotators=2),
        PairSet(prompts, ["0.6"] * n, ["0.5"] * n),
        NumberTask(),
        progress=False,
    )
    assert rep["ties"] == len(split) and len(rows) == n - len(split)
    with pytest.raises(ValueError, match="annotators"):
        _judge(annotators=0)


def test_interface_violations_fail_loudly():
    with pytest.raises(ValueError, match="2 judgements for 3 pairs"):
        check_judgements([{"verdict": "first", "p_first": 1.0}] * 2, 3)
    with pytest.raises(ValueError, match="verdict 'maybe'"):
        check_judgements([{"verdict": "maybe", "p_first": 0.5}], 1)
    with pytest.raises(ValueError, match="p_first=None"):
        check_judgements([{"verdict": "first", "p_first": None}], 1)
    with pytest.raises(RuntimeError, match="no task"):
        GoldJudge().judge_pairs(["p"], ["1"], ["0"])


# -- label_pairs ------------------------------------------------------------------------------------------
def test_label_pairs_counts_what_it_cannot_label_and_agreement_matches_expectation():
    rng = np.random.default_rng(0)
    n = 3000
    a, b = rng.uniform(-1, 1, n), rng.uniform(-1, 1, n)
    firsts, seconds = [f"{x:.4f}" for x in a], [f"{x:.4f}" for x in b]
    firsts[:3], seconds[:3] = ["0.5", "0.5", "0.5"], ["0.5", " ", "0.50"]  # identical, empty, gold tie
    pairs = PairSet([f"p{i}" for i in range(n)], firsts, seconds, seconds_elapsed=2.0)
    rows, rep = label_pairs(_judge(temperature=0.2), pairs, NumberTask(), progress=False)
    assert rep["pairs_sampled"] == n and rep["identical_skipped"] == 1 and rep["empty_skipped"] == 1
    assert rep["skipped_indices"] == {"identical": [0], "empty": [1]}
    assert rep["ties"] >= 1 and rep["pairs"] == n - 2 and rep["completions_per_s"] == n
    assert rep["rows_written"] == len(rows) == rep["decided"]  # ties are counted, not written
    # the measured agreement is the Bradley–Terry rate the temperature implies, within sampling error
    gaps = np.abs(a - b)[2:]
    exp = float(np.mean(1 / (1 + np.exp(-gaps / 0.2))))
    assert 0.6 < exp < 0.95
    assert abs(rep["gold_accuracy"] - exp) < 4 * math.sqrt(exp * (1 - exp) / rep["gold_compared"])
    for r in rows:
        assert r["p_chosen"] == 1.0  # one annotator's vote: the label is what it said
        assert float(r["chosen"]) == r["gold_chosen"] and r["second_chosen"] == -r["gold_chosen"]
        assert r["provenance"]["verdict"] in ("first", "second") and not r["tie"]
    assert any(r["gold_chosen"] < r["gold_rejected"] for r in rows)  # some went against the gold ordering

    rows_t, rep_t = label_pairs(_judge(temperature=0.2), pairs, NumberTask(), keep_ties=True, progress=False)
    ties = [r for r in rows_t if r["tie"]]
    assert len(ties) == rep_t["ties"] and all(r["p_chosen"] == 0.5 for r in ties)


def test_labelled_rows_load_in_the_preference_datamodule(tmp_path, tiny_lm):
    from alignlab.data.datamodules import PreferenceDataModule
    from alignlab.utils.io import write_rows

    pairs = PairSet(
        [f"p{i}" for i in range(8)], [str(i / 10) for i in range(8)], [str(-i / 10) for i in range(8)]
    )
    rows, _ = label_pairs(_judge(temperature=0.5), pairs, NumberTask(), progress=False)
    for suffix in ("jsonl", "parquet"):
        path = write_rows(tmp_path / f"pairs.{suffix}", rows)
        dm = PreferenceDataModule(
            train_path=str(path),
            val_fraction=0.25,
            batch_size=4,
            max_length=32,
            max_prompt_length=8,
            tokenizer=tiny_lm.tokenizer,
        )
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
        assert batch["chosen_input_ids"].shape == batch["rejected_input_ids"].shape
        got = sorted(float(x) for x in batch["p_chosen"])
        assert all(0 <= x <= 1 for x in got) and len(dm.train_set) + len(dm.val_set) == len(rows)


# -- the label app ----------------------------------------------------------------------------------------
def _cfg(tmp_path, *extra):
    return compose([f"paths.output_dir={tmp_path}", "progress=false", *extra], config_name="label")


def test_label_app_samples_labels_and_writes_a_preference_file(tmp_path, tiny_lm, capsys):
    from alignlab.data.datamodules import PreferenceDataModule
    from alignlab.label import label

    cfg = _cfg(
        tmp_path,
        "task=sentiment_toy",
        "model=tiny",
        "n_prompts=8",
        "batch_size=4",
        "sampling.max_new_tokens=6",
        "keep_ties=true",
    )
    rep = label(cfg)
    out = capsys.readouterr().out
    assert "completions/s" in out and str(tmp_path / "pairs.jsonl") in out and "identical skipped=" in out
    assert rep["pairs_sampled"] == 8 and rep["completions_per_s"] > 0
    samples = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8 and {"prompt", "first", "second"} <= set(samples[0])
    rows = [json.loads(x) for x in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert len(rows) == 8 - rep["identical_skipped"] - rep["empty_skipped"] - rep["invalid"]
    assert {
        "prompt",
        "chosen",
        "rejected",
        "p_chosen",
        "label_source",
        "gold_chosen",
        "gold_rejected",
        "tie",
        "provenance",
    } <= set(rows[0])
    assert json.loads((tmp_path / "pairs.report.json").read_text())["pairs_sampled"] == 8
    dm = PreferenceDataModule(
        train_path=str(tmp_path / "pairs.jsonl"),
        val_fraction=0.25,
        batch_size=2,
        max_length=48,
        max_prompt_length=24,
        tokenizer=tiny_lm.tokenizer,
    )
    dm.setup("fit")  # tied pairs (written with keep_ties=true) are no training preference: dropped
    assert len(dm.train_set) + len(dm.val_set) == sum(r["p_chosen"] != 0.5 for r in rows)


def test_label_app_relabels_a_samples_file_without_a_model(tmp_path, capsys):
    from alignlab.label import label

    good = ["a wonderful, moving film", "great fun and beautifully acted", "I loved it"]
    bad = ["a dull and boring mess", "awful acting, terrible script", "I hated it"]
    PairSet(["Movie review: The film was"] * 3, good, bad).save(tmp_path / "samples.jsonl")
    PairSet(["Movie review: The film was"] * 3, bad, good).save(tmp_path / "swapped.jsonl")
    for name in ("samples", "swapped"):
        cfg = _cfg(
            tmp_path,
            "task=sentiment_toy",
            f"pairs_path={tmp_path / name}.jsonl",
            "judge.temperature=0",
            f"output_path={tmp_path / name}.parquet",
            "samples_path=null",
        )
        rep = label(cfg)
        assert rep["gold_accuracy"] == 1.0 and rep["decided"] == 3
        import pandas as pd

        df = pd.read_parquet(tmp_path / f"{name}.parquet")
        assert df["chosen"].tolist() == good and (df["p_chosen"] == 1.0).all()
    assert "agreement with the noiseless gold ordering: 1.000 over 3 pairs" in capsys.readouterr().out


@pytest.mark.parametrize(
    "override,msg", [("output_path=x.csv", ".jsonl or .parquet"), ("n_prompts=0", "n_prompts")]
)
def test_label_config_errors_name_the_key(tmp_path, override, msg):
    from alignlab.label import label
    from alignlab.utils.config import ConfigError

    with pytest.raises(ConfigError, match=msg):
        label(_cfg(tmp_path, "task=sentiment_toy", "model=tiny", override))


@pytest.mark.slow
def test_label_app_on_the_bundled_model(tmp_path):
    from alignlab.data.datamodules import PreferenceDataModule
    from alignlab.label import label
    from alignlab.models import ModelSpec

    rep = label(
        _cfg(
            tmp_path,
            "task=sentiment",
            "model=smollm2_135m",
            "n_prompts=8",
            "batch_size=8",
            "sampling.max_new_tokens=24",
        )
    )
    assert rep["pairs_sampled"] == 8 and rep["completions_per_s"] > 0 and rep["rows_written"] >= 4
    tok = ModelSpec(source="smollm2_135m").load().tokenizer
    dm = PreferenceDataModule(
        train_path=str(tmp_path / "pairs.jsonl"),
        val_fraction=0.25,
        batch_size=4,
        max_length=96,
        max_prompt_length=48,
        use_chat_template=False,
        tokenizer=tok,
    )
    dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) == rep["rows_written"]

"""A labeller's length bias (alignlab.judges.length_bias) on hand-built pairs, the Wilson interval's coverage,
and where the numbers go: the labelling report, the label app, the comparison report's task lines."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alignlab.compare_verdict import length_bias_section, task_lines
from alignlab.judges.gold import GoldJudge
from alignlab.judges.length_bias import gap_bin, length_bias, length_bias_of_rows, pool, wilson_ci
from alignlab.judges.report import format_report, judge_question, labelling_report
from alignlab.judges.templates import Constitution, JudgeTemplate
from alignlab.tasks.base import Task
from alignlab.tasks.describe import scorers, scorers_of_task_name
from alignlab.tasks.pairs import PairSet, label_pairs

# (first, second, verdict, gold first, gold second): word counts in the comments
PAIRS = [
    ("a b c d e", "a b", "first", 1.0, 0.0),  # 5 vs 2: judge longer, gold longer, agree, |Δ| 3
    ("a", "a b c d e f g h", "first", 0.0, 1.0),  # 1 vs 8: judge shorter, gold longer, disagree, |Δ| 7
    ("x y z", "x y z w", "second", 1.0, 0.0),  # 3 vs 4: judge longer, gold shorter, disagree, |Δ| 1
    ("p q", "r s", "first", 1.0, 0.0),  # 2 vs 2: equal length (agreement only), agree, |Δ| 0
    ("a b c", "d", "tie", 1.0, 0.0),  # not decided: left out
    ("a b c", "d", "invalid", 1.0, 0.0),  # not decided: left out
    ("a b c", "d", "first", 0.5, 0.5),  # gold tie: left out
    (
        "one two three four five six seven",
        "one",
        "first",
        1.0,
        2.0,
    ),  # 7 vs 1: judge longer, gold shorter, |Δ| 6
]


def _lb(pairs=PAIRS) -> dict:
    a, b, v, ga, gb = zip(*pairs)
    return length_bias(a, b, v, ga, gb)


def test_shares_and_bins_on_hand_built_pairs():
    rep = _lb()
    assert rep["unit"] == "words" and rep["compared"] == 4 and rep["equal_length"] == 1
    # longer chosen over the 4 compared pairs: judge in pairs 1, 3, 8; gold in pairs 1, 2
    assert (rep["judge_longer"]["k"], rep["judge_longer"]["n"]) == (3, 4)
    assert (rep["gold_longer"]["k"], rep["gold_longer"]["n"]) == (2, 4)
    assert rep["judge_longer"]["rate"] == pytest.approx(0.75) and rep["gold_longer"]["rate"] == 0.5
    by_gap = {k: (c["k"], c["n"]) for k, c in rep["agreement_by_gap"].items()}
    assert by_gap == {"0-2": (1, 2), "3-5": (1, 1), ">=6": (0, 2)}
    assert rep["agreement_by_gap"][">=6"]["ci_low"] == 0.0  # 0 of 2: the interval starts at 0


def test_gap_bins_are_inclusive_and_empty_cells_have_no_rate():
    assert [gap_bin(g) for g in (0, 2, 3, 5, 6, 40)] == ["0-2", "0-2", "3-5", "3-5", ">=6", ">=6"]
    rep = _lb(PAIRS[4:7])  # nothing decided against a gold ordering
    assert rep["compared"] == 0 and rep["judge_longer"]["rate"] is None
    assert all(c["n"] == 0 and c["rate"] is None for c in rep["agreement_by_gap"].values())


def test_wilson_closed_form():
    # 8 of 10: centre (0.8 + z²/20) / (1 + z²/10), half z·sqrt(0.016 + z²/400) / (1 + z²/10), z = 1.95996
    lo, hi = wilson_ci(8, 10)
    assert (lo, hi) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    assert wilson_ci(0, 5)[0] == 0.0 and wilson_ci(5, 5)[1] == 1.0
    with pytest.raises(ValueError, match="k=6, n=5"):
        wilson_ci(6, 5)


@pytest.mark.parametrize("n,p", [(12, 0.3), (20, 0.1), (30, 0.5), (50, 0.05), (100, 0.2), (100, 0.8)])
def test_wilson_interval_covers_the_true_share_95_percent_of_the_time(n, p):
    # exact coverage at these (n, p) lies in 0.94-0.963; the Wald interval's is 0.876 at (20, 0.1)
    rng = np.random.default_rng(n * 1000 + int(p * 100))
    draws = rng.binomial(n, p, size=4000)
    cis = {k: wilson_ci(int(k), n) for k in np.unique(draws)}
    covered = np.mean([cis[k][0] <= p <= cis[k][1] for k in draws])
    assert 0.925 <= covered <= 0.975, covered


def test_pool_sums_counts_and_rows_give_the_same_numbers():
    rep = _lb()
    both = pool([rep, rep])
    assert (both["judge_longer"]["k"], both["judge_longer"]["n"]) == (6, 8) and both["compared"] == 8
    assert both["agreement_by_gap"]["0-2"]["n"] == 4
    # labelled rows (chosen = the verdict's pick, shown first) measure what the pairs measure
    rows = []
    for a, b, v, ga, gb in PAIRS:
        if v in ("first", "second"):
            (c, r), (gc, gr) = ((a, b), (ga, gb)) if v == "first" else ((b, a), (gb, ga))
            rows.append({"chosen": c, "rejected": r, "gold_chosen": gc, "gold_rejected": gr, "tie": False})
    rows.append({"chosen": "a b", "rejected": "c", "gold_chosen": 1.0, "gold_rejected": 0.0, "tie": True})
    assert length_bias_of_rows(rows) == rep


def test_the_labelling_report_keeps_it_when_given_the_texts():
    a, b, v, ga, gb = zip(*PAIRS)
    results = [{"verdict": x, "p_first": 0.5 if x == "tie" else 0.9 if x == "first" else 0.1} for x in v]
    rep = labelling_report(results, ga, gb, texts=(a, b))
    assert rep["length_bias"] == _lb()
    assert "longer chosen by judge 75% [30%, 95%] (n=4), by gold 50%" in format_report(rep)
    assert "length_bias" not in labelling_report(results, ga, gb)  # no texts: not measured


class WordsTask:
    """Gold reward = number of words: the gold ordering always prefers the longer completion."""

    name = "words"
    rubric = "Prefer the longer answer."

    def gold_scores(self, prompts, completions):
        return np.array([float(len(c.split())) for c in completions])


def test_label_pairs_measures_it():
    firsts = ["one", "one two three", "a b c d e f g h", "x y"]
    seconds = ["one two", "one", "a", "x y z w v u"]
    pairs = PairSet(["p"] * 4, firsts, seconds)
    task = WordsTask()
    _, rep = label_pairs(GoldJudge(task=task, temperature=0), pairs, task, progress=False)
    lb = rep["length_bias"]
    assert lb["compared"] == 4 and lb["judge_longer"]["rate"] == 1.0 and lb["gold_longer"]["rate"] == 1.0
    assert {k: c["n"] for k, c in lb["agreement_by_gap"].items()} == {"0-2": 2, "3-5": 1, ">=6": 1}


def test_judge_question_is_what_the_bound_judge_asks():
    class Stub:
        def __init__(self, mode, **template):
            self.mode, self.template = mode, JudgeTemplate(**template)

    assert judge_question(Stub("pairwise", rubric="Which is kinder?", question="Kind?")) == "Which is kinder?"
    assert judge_question(Stub("pointwise", rubric="Which is kinder?", question="Kind?")) == "Kind?"
    assert judge_question(Stub("pointwise", rubric="Which is kinder?")) == "Which is kinder?"
    c = Constitution(principles=["Be brief.", "Be kind."])
    assert "2 principle(s)" in judge_question(Stub("pairwise", constitution=c))
    assert judge_question(GoldJudge(task=WordsTask())) is None  # the gold oracle is asked nothing


class ScoredTask(Task):
    def gold_scores(self, prompts, completions):
        """Count of vowels in each completion, shape (N,), in [0, inf)."""

    def second_scores(self, prompts, completions):
        """Count of consonants in each completion."""


class GoldOnlyTask(Task):
    gold_scorer = "a hand-written rule"

    def gold_scores(self, prompts, completions):
        """Unused: the attribute names the scorer."""


def test_scorer_names_come_from_the_task():
    assert scorers(ScoredTask) == {
        "gold_scorer": "Count of vowels in each completion",
        "second_scorer": "Count of consonants in each completion",
    }
    assert scorers(GoldOnlyTask()) == {"gold_scorer": "a hand-written rule", "second_scorer": None}
    assert scorers_of_task_name("no_such_task") == {"gold_scorer": None, "second_scorer": None}
    assert scorers_of_task_name("instruct")["gold_scorer"].startswith("Fraction of each prompt's constraints")


def _record(seed, labeller="judge", lb=None, **extra):
    audit = {"gold_accuracy": 0.7, **({"length_bias": lb} if lb else {}), **extra.pop("audit", {})}
    return {"method": "m", "seed": seed, "labeller": labeller, "eval": {"task": "words"}, "label_audit": audit,
            **extra}  # fmt: skip


def test_task_lines_name_the_scorers_and_the_question_or_say_they_were_not_recorded():
    new = [_record(0, gold_scorer="G rule", second_scorer=None, audit={"question": "Longer?"})]
    text = "\n".join(task_lines(new))
    assert "Task: **words**; gold scorer: G rule; second scorer: none." in text
    assert "Labeller **judge** was asked: “Longer?”." in text
    old = "\n".join(task_lines([{**_record(0), "eval": {"task": "instruct"}}]))
    assert "gold scorer: Fraction of each prompt's constraints" in old and "predate recording them" in old
    assert "was asked: not recorded" in old
    assert "\n".join(task_lines([_record(0)])).startswith("Task: **words**.")  # a task this checkout lacks


def test_length_bias_section_counts_each_label_set_once():
    lb = _lb()
    other = pool([lb])
    other["judge_longer"] = {"k": 1, "n": 4, "rate": 0.25, "ci_low": 0.05, "ci_high": 0.7}
    shared = [_record(0, lb=lb), _record(1, lb=lb), {**_record(0, lb=lb), "method": "m2"}]
    text = "\n".join(length_bias_section(shared))
    assert "| words | judge | 1 | 75% [30%, 95%] (n=4) | 50% [15%, 85%] (n=4) |" in text
    text = "\n".join(length_bias_section([*shared, _record(2, lb=other)]))
    assert "| words | judge | 2 | 50% [22%, 78%] (n=8) |" in text
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len({line.count("|") for line in table}) == 1  # no stray "|" in a header cell: 9 columns each
    assert length_bias_section([_record(0)]) == []  # records made before it: no section


def test_the_comparison_report_shows_them(tmp_path):
    from alignlab.compare import write_report
    from test_compare import _run

    for seed in (0, 1):
        _run(tmp_path, "rlaif_dpo", seed, 0.2, 1.0, labeller="judge")
    for path in tmp_path.rglob("result.json"):
        rec = json.loads(path.read_text())
        rec["eval"]["task"] = rec["base_eval"]["task"] = "words"
        rec.update(gold_scorer="G rule", second_scorer="S rule")
        rec["label_audit"].update(length_bias=_lb(), question="Longer?")
        path.write_text(json.dumps(rec))
    report, _ = write_report([tmp_path], tmp_path / "report")
    text = report.read_text()
    assert "Task: **words**; gold scorer: G rule; second scorer: S rule." in text
    assert "was asked: “Longer?”" in text and "## Labeller length bias" in text
    assert "| words | judge | 1 | 75% [30%, 95%] (n=4) |" in text


class LongerJudge:
    """A pointwise judge stub that always prefers the longer text, asked the task's question."""

    mode = "pointwise"

    def __init__(self):
        self.template = JudgeTemplate()

    def set_task(self, task):
        self.template.question = task.question

    def judge_pairs(self, prompts, firsts, seconds):
        longer = [len(a.split()) > len(b.split()) for a, b in zip(firsts, seconds)]
        return [{"verdict": "first" if x else "second", "p_first": 0.9 if x else 0.1} for x in longer]


def test_the_label_app_records_the_question_and_the_length_bias(tmp_path):
    from omegaconf import OmegaConf, open_dict

    from alignlab.label import label
    from alignlab.tasks import build_task
    from conftest import compose

    good = ["a wonderful, moving film to see", "great fun", "I loved it, every minute"]
    bad = ["a dull mess", "awful acting, a terrible script and worse", "I hated it"]
    PairSet(["The film was"] * 3, good, bad).save(tmp_path / "samples.jsonl")
    overrides = ["task=toy", f"pairs_path={tmp_path}/samples.jsonl", "samples_path=null"]
    cfg = compose([f"paths.output_dir={tmp_path}", "progress=false", *overrides], config_name="label")
    with open_dict(cfg):
        cfg.judge = OmegaConf.create({"_target_": "test_length_bias.LongerJudge"})
    rep = label(cfg)
    assert rep["question"] == build_task(cfg.task).question  # what the pointwise judge was asked
    saved = json.loads((tmp_path / "pairs.report.json").read_text())["length_bias"]
    assert saved["judge_longer"]["rate"] == 1.0 and saved["compared"] == 3

"""The learned scorer (ridge on word n-grams) against its closed form, its cache, and scripts/rescore.py on
synthetic result records."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from alignlab.tasks import learned_scorer as ls

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import rescore

TEXTS = ["good film", "bad film", "good good plot", "Bad plot!", "film plot", "good", "bad bad", "plot twist"]
Y = [2.0, -2.0, 2.5, -1.5, 0.0, 1.0, -3.0, 0.5]


# -- features -------------------------------------------------------------------------------------------
def test_tokens_and_ngrams():
    assert ls.tokens("Isn't it GOOD!! A 2nd look\u2019s worth") == [
        "isn't",
        "it",
        "good",
        "a",
        "2nd",
        "look's",
        "worth",
    ]
    assert ls.ngrams("the film the film", 2) == {"the", "film", "the film", "film the"}
    assert ls.ngrams("the film", 1) == {"the", "film"}


def test_design_rows_are_distinct_known_ngrams_at_unit_length():
    index = {"bad": 0, "film": 1, "good": 2, "good film": 3}
    x = ls.design(["good good film", "table", "bad"], index, 2).toarray()
    # "good good film": good, film, good film (good good is unknown): 3 features of 1/sqrt(3)
    assert x[0].tolist() == pytest.approx([0, 1 / np.sqrt(3), 1 / np.sqrt(3), 1 / np.sqrt(3)])
    assert x[1].tolist() == [0, 0, 0, 0]  # nothing known: the intercept alone
    assert x[2].tolist() == [1, 0, 0, 0]


# -- the fit ---------------------------------------------------------------------------------------------
def test_fit_is_the_closed_form_ridge_solution():
    recipe = ls.RidgeRecipe(ngram_max=2, min_count=1, alpha=0.7)
    model = ls.fit(TEXTS, Y, recipe)
    vocab = sorted(set().union(*(ls.ngrams(t, 2) for t in TEXTS)))
    assert model.vocab == vocab
    x = np.zeros((len(TEXTS), len(vocab)))  # (N, V), built here independently of ls.design
    for i, t in enumerate(TEXTS):
        grams = ls.ngrams(t, 2)
        for g in grams:
            x[i, vocab.index(g)] = 1 / np.sqrt(len(grams))
    y = np.array(Y)
    w = np.linalg.solve(x.T @ x + 0.7 * np.eye(len(vocab)), x.T @ (y - y.mean()))
    assert model.intercept == pytest.approx(y.mean())
    assert model.weights == pytest.approx(w, abs=1e-7)
    assert model.predict(TEXTS) == pytest.approx(y.mean() + x @ w, abs=1e-7)
    assert model.predict(["an unseen table"]) == pytest.approx([y.mean()])


def test_min_count_and_score_clipping():
    model = ls.fit(TEXTS, Y, ls.RidgeRecipe(min_count=2, alpha=0.01))
    df = {g: sum(g in ls.ngrams(t, 2) for t in TEXTS) for g in model.vocab}
    assert model.vocab == sorted(model.vocab) and min(df.values()) >= 2
    assert "twist" not in model.vocab and "good" in model.vocab
    raw = model.predict(["good good plot", "bad bad", "plot"])
    assert model.score(["good good plot", "bad bad", "plot"]) == pytest.approx(np.clip(raw / 4.0, -1, 1))
    small = ls.fit(TEXTS, Y, ls.RidgeRecipe(min_count=2, alpha=0.01, rating_scale=0.5))
    assert small.score(["good", "bad bad"]).tolist() == [1.0, -1.0]
    with pytest.raises(TypeError, match="single string"):
        model.score("good")
    with pytest.raises(ValueError, match="positive"):
        ls.RidgeRecipe(alpha=0)


def test_top_features_are_by_absolute_weight():
    model = ls.NgramRidge(["a", "b", "c", "d"], np.array([0.1, -2.0, 1.0, -1.0]), 0.0, ls.RidgeRecipe())
    assert model.top_features(3) == [("b", -2.0), ("c", 1.0), ("d", -1.0)]


def test_ensure_model_fits_once_per_data_and_recipe(tmp_path, monkeypatch):
    first = ls.ensure_model(tmp_path, TEXTS, Y)
    assert len(list(tmp_path.glob("ridge-*.npz"))) == 1

    def no_fit(*a, **k):
        raise AssertionError("fitted again although the same fit is cached")

    monkeypatch.setattr(ls, "fit", no_fit)
    again = ls.ensure_model(tmp_path, TEXTS, Y)
    assert again.vocab == first.vocab and again.recipe == first.recipe
    assert again.score(TEXTS).tolist() == first.score(TEXTS).tolist()
    monkeypatch.undo()
    ls.ensure_model(tmp_path, TEXTS, [*Y[:-1], 0.4])  # other targets: another model
    ls.ensure_model(tmp_path, TEXTS, Y, ls.RidgeRecipe(alpha=2.0))  # another recipe: another model
    assert len(list(tmp_path.glob("ridge-*.npz"))) == 3


# -- scripts/rescore.py ------------------------------------------------------------------------------------
class FakeTask:
    """Prompts "<split> prompt i"; third score = the completion's length."""

    def __init__(self):
        self.calls = []

    def prompts(self, split):
        return [f"{split} prompt {i}" for i in range(5)]

    def third_scores(self, prompts, completions):
        self.calls.append((list(prompts), list(completions)))
        return np.array([float(len(c)) for c in completions])


def _side(completions: list[str], n: int, k: int) -> dict:
    return {
        "task": "fake",
        "split": "test",
        "n": n,
        "samples_per_prompt": k,
        "per_prompt": {"gold_reward": [0.0] * n},
        "completions": completions,
    }


def _record(eval_completions: list[str], n: int = 3, k: int = 2) -> dict:
    return {
        "method": "m",
        "eval": _side(eval_completions, n, k),
        "base_eval": _side(["x", "yy", "zzz"], n, 1),
    }


@pytest.fixture
def fake(monkeypatch):
    task = FakeTask()
    monkeypatch.setattr(
        rescore, "load_task", lambda name, cache_dir, archive: task if name == "fake" else object()
    )
    return task


def test_rescore_adds_each_prompts_mean_third_score_in_order(tmp_path, fake):
    runs, out = tmp_path / "runs", tmp_path / "out"
    runs.mkdir()
    record = _record(["a", "bbb", "cc", "d", "eeee", "ff"])
    (runs / "m-s0.json").write_text(json.dumps(record))
    assert rescore.main([str(runs), "--out", str(out)]) == 0
    new = json.loads((out / "m-s0.json").read_text())
    assert new["eval"]["per_prompt"]["third_reward"] == [2.0, 1.5, 3.0]  # (1+3)/2, (2+1)/2, (4+2)/2
    assert new["base_eval"]["per_prompt"]["third_reward"] == [1.0, 2.0, 3.0]
    # the k samples of a prompt sit side by side: each is scored with its own prompt
    prompts = [p for p, _ in fake.calls]
    assert ["test prompt 0", "test prompt 0", "test prompt 1", "test prompt 1", "test prompt 2", "test prompt 2"] in prompts  # fmt: skip
    del new["eval"]["per_prompt"]["third_reward"], new["base_eval"]["per_prompt"]["third_reward"]
    assert new == record  # nothing else changed
    assert json.loads((runs / "m-s0.json").read_text()) == record  # the input is untouched


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: r["eval"].pop("completions"), "eval.completions` is missing"),
        (lambda r: r["base_eval"].pop("completions"), "base_eval.completions` is missing"),
        (lambda r: r["eval"]["completions"].pop(), "has 5 texts, but n=3 prompts x samples_per_prompt=2"),
        (lambda r: r["eval"].update(task="other"), "has no third scorer"),
        (lambda r: r.pop("base_eval"), "no `base_eval` section"),
    ],
)
def test_rescore_refuses_bad_records_with_one_line_before_scoring(tmp_path, fake, capsys, edit, message):
    runs, out = tmp_path / "runs", tmp_path / "out"
    runs.mkdir()
    (runs / "a.json").write_text(json.dumps(_record(["a", "b", "c", "d", "e", "f"])))
    bad = _record(["a", "b", "c", "d", "e", "f"])
    edit(bad)
    (runs / "b.json").write_text(json.dumps(bad))
    assert rescore.main([str(runs), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "b.json" in err and message in err, err
    assert not any(c for _, c in fake.calls) and not out.exists()  # nothing scored, nothing written


def test_rescore_refuses_writing_over_its_input(tmp_path, fake, capsys):
    (tmp_path / "a.json").write_text(json.dumps(_record(["a", "b", "c", "d", "e", "f"])))
    assert rescore.main([str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "is RUNS_DIR itself" in capsys.readouterr().err
    assert rescore.main([str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "not a directory" in capsys.readouterr().err

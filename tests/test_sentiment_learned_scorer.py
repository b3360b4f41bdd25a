"""The sentiment task's third scorer (ridge on n-grams, fitted on human ratings): fitted only on sentences
the evaluation never shows, cached, exposed as ``third_scores``; the audit's lexicon overlap; rescoring a
result record through the real task, with a small fake source archive (no download)."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from alignlab.tasks import learned_scorer as ls
from alignlab.tasks import prepare as prep
from alignlab.tasks.human_ratings import CORPORA, MOVIES, read_corpora
from alignlab.tasks.sentiment import SentimentTask
from alignlab.tasks.sentiment_audit import lexicon_overlap, published_examples
from conftest import tar_gz

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import rescore

POS, NEG = ["lovely", "superb", "gripping", "tender"], ["tedious", "clumsy", "bland", "shrill"]
FILLER = ["the", "film", "story", "cast", "plot", "scene", "ending", "director"]


def fake_sdist(path: Path, n: int = 80) -> Path:
    """The four corpora, n sentences each: a sentence of positive words is rated +3, of negative -3."""
    rng = random.Random(0)
    files = {}
    for corpus in CORPORA:
        truth, raters = [], []
        for i in range(1, n + 1):
            sign = 1 if i % 2 else -1
            words = [rng.choice(POS if sign > 0 else NEG) for _ in range(2)] + rng.sample(FILLER, 4)
            rng.shuffle(words)
            text = f"{corpus[:4]}{i} " + " ".join(words)
            votes = [3 * sign] * 3
            truth.append(f"{i}\t{3.0 * sign}\t{text}\n")
            raters.append(f"{i}\t{3.0 * sign}\t0.0\t{json.dumps(votes)}\n")
        files[f"hutto_ICWSM_2014/{corpus}_GroundTruth.txt"] = "".join(truth).encode()
        files[f"hutto_ICWSM_2014/{corpus}_anonDataRatings.txt"] = "".join(raters).encode()
    path.write_bytes(tar_gz({f"vaderSentiment-3.3.2/{prep.ARCHIVE_MEMBER}": tar_gz(files)}))
    return path


@pytest.fixture
def fake(tmp_path):
    sdist = fake_sdist(tmp_path / "vaderSentiment-3.3.2.tar.gz")
    kw = {
        "cache_dir": str(tmp_path / "cache"),
        "archive": str(sdist),
        "val_fraction": 0.2,
        "test_fraction": 0.2,
    }
    return SentimentTask(**kw), read_corpora(sdist), kw


def _held_out_texts(task, rows) -> set[str]:
    """Movie sentences whose opening is a val or test prompt."""
    held = {r["opening"] for s in ("val", "test") for r in prep.read_jsonl(task.prompt_file(s))}
    p = task.params
    return {
        r["text"]
        for r in rows
        if r["corpus"] == MOVIES
        and prep.opening_of(
            {"id": int(r["id"]), "text": r["text"]}, p["min_words"], p["max_words"], p["seed"]
        )
        in held
    }


def test_the_learned_scorer_never_fits_on_val_or_test_movie_sentences(fake, monkeypatch):
    task, rows, _ = fake
    held_out = _held_out_texts(task, rows)
    assert len(held_out) >= 20  # the fake archive does hold val/test sentences
    seen = {}
    real = ls.fit

    def spy(texts, targets, recipe=ls.RidgeRecipe()):
        seen["texts"] = list(texts)
        return real(texts, targets, recipe)

    monkeypatch.setattr(ls, "fit", spy)
    task.learned_scorer()
    fitted = set(seen["texts"])
    assert not fitted & held_out
    others = {r["text"] for r in rows if r["corpus"] != MOVIES}
    assert others <= fitted  # every tweet, Amazon and NYT sentence
    assert len(fitted - others) >= 20  # and the movie sentences of the train split


def test_third_scores_rank_by_what_people_rated_and_are_cached(fake, monkeypatch):
    task, _, kw = fake
    scores = task.third_scores(["x", "y", "z"], ["a lovely superb film", "a tedious clumsy film", "table"])
    assert scores.shape == (3,) and np.all(np.abs(scores) <= 1.0)
    assert scores[0] > 0.3 and scores[1] < -0.3 and scores[0] > scores[2] > scores[1]
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        task.third_scores(["a", "b"], ["c"])
    # score_on=prompt+completion scores the prompt too
    both = SentimentTask(**kw, score_on="prompt+completion")

    def no_fit(*a, **k):
        raise AssertionError("fitted again although the fit is cached")

    monkeypatch.setattr(ls, "fit", no_fit)  # a second task object loads the cached fit
    prompt, completion = ["Movie review: tedious clumsy"], [" the story"]
    assert both.third_scores(prompt, completion)[0] < task.third_scores(prompt, completion)[0]
    assert list((Path(kw["cache_dir"]) / "tasks" / "sentiment" / "learned_scorer").glob("ridge-*.npz"))


def test_lexicon_overlap_counts_same_sign_entries():
    model = ls.NgramRidge(
        ["good", "bad", "table", "not good", "terrible", "funny"],
        np.array([1.0, -0.9, 0.8, -0.7, 0.6, 0.05]),  # "terrible" with the wrong sign
        0.0,
        ls.RidgeRecipe(),
    )
    o = lexicon_overlap(model, 5)  # funny (last by |weight|) is left out
    assert o["top"] == 5 and o["unigrams"] == 4
    assert o["vader_entry_same_sign"] == 2  # good, bad
    assert o["vader_entry_any_sign"] == 3  # and terrible
    assert o["contains_a_vader_word"] == 4  # good, bad, not good, terrible
    assert o["afinn_entry_same_sign"] == 3  # good, bad and AFINN's phrase "not good" (-2)


def _record(task, completions, n, k) -> dict:
    side = {"task": "sentiment", "split": "test", "n": n, "samples_per_prompt": k, "completions": completions}
    return {"eval": {**side, "per_prompt": {}}, "base_eval": {**side, "per_prompt": {}}}


def test_rescore_through_the_real_task(fake, tmp_path, monkeypatch):
    task, _, kw = fake
    runs, out = tmp_path / "runs", tmp_path / "out"
    runs.mkdir()
    completions = ["a lovely superb film", "a tedious film", "the cast", "clumsy bland plot"]
    (runs / "r.json").write_text(json.dumps(_record(task, completions, 2, 2)))
    # the task as the fixture built it (compose_task would read conf/task/sentiment.yaml's fractions)
    rescore_task = SentimentTask(**kw)
    monkeypatch.setattr(rescore, "load_task", lambda name, cache_dir, archive: rescore_task)
    assert rescore.main([str(runs), "--out", str(out)]) == 0
    new = json.loads((out / "r.json").read_text())
    s = task.third_scores(["p"] * 4, completions)
    expected = [round(float((s[0] + s[1]) / 2), 6), round(float((s[2] + s[3]) / 2), 6)]
    assert new["eval"]["per_prompt"]["third_reward"] == expected
    assert new["base_eval"]["per_prompt"]["third_reward"] == expected


def test_rescore_refuses_the_toy_task(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    record = _record(None, ["a", "b"], 2, 1)
    record["eval"]["task"] = record["base_eval"]["task"] = "sentiment_toy"
    (runs / "t.json").write_text(json.dumps(record))
    code = rescore.main([str(runs), "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c")])
    assert code == 2 and "'sentiment_toy', which has no third scorer" in capsys.readouterr().err


def test_published_examples_score_each_distinct_completion_once_per_method(fake, tmp_path):
    task, _, _ = fake
    runs = tmp_path / "runs"
    runs.mkdir()
    base = [{"completion": "the cast"}, {"completion": "a tedious film"}]
    for name, method, policy in (
        ("a-s0", "a", ["a lovely superb film", "superb"]),
        ("a-s1", "a", ["lovely plot"]),
        ("b-s0", "b", ["clumsy bland plot"]),
    ):
        record = {"method": method, "examples": {"base": base, "policy": [{"completion": c} for c in policy]}}
        (runs / f"{name}.json").write_text(json.dumps(record))
    e = published_examples(task, runs)
    assert e["completions"] == 6  # the base examples repeat in every record: counted once
    expected = {
        "base": ["the cast", "a tedious film"],
        "a": ["a lovely superb film", "superb", "lovely plot"],
        "b": ["clumsy bland plot"],
    }
    assert set(e["means"]) == set(expected)
    for key, texts in expected.items():
        third = task.third_scores(["p"] * len(texts), texts).mean()
        assert e["means"][key]["n"] == len(texts)
        assert e["means"][key]["learned"] == pytest.approx(third)
    assert published_examples(task, tmp_path / "empty") == {"completions": 0}


def test_audit_refuses_a_missing_records_folder_before_any_work(tmp_path, capsys, monkeypatch):
    from alignlab.tasks import sentiment_audit

    def no_audit(*a, **k):
        raise AssertionError("audited although --records is wrong")

    monkeypatch.setattr(sentiment_audit, "audit", no_audit)
    assert sentiment_audit.main(["--records", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--records" in err and "not a directory" in err

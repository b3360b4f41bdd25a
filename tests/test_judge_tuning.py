"""The tuned judge: human-rated corpora, no leakage of the task's val/test sentences, the SFT rows it
learns from, the judge config it is used through, and (slow) the cached tuning stage end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from alignlab.judges.tuning import TuningRecipe, judge_prompt, sft_rows, vote
from alignlab.tasks import prepare as prep
from alignlab.tasks.human_ratings import CORPORA, MOVIES, movie_sentences_in_split, read_corpora
from alignlab.tasks.sentiment import SentimentTask
from alignlab.tasks.sentiment_judge_data import training_sentences
from conftest import compose, tar_gz

WORDS = ["good", "bad", "fine", "dull", "great", "awful", "warm", "cold", "bright", "dark"]


def fake_sdist(path: Path, n: int = 60) -> Path:
    """A vaderSentiment-like archive with the four corpora (n sentences each, three raters each)."""
    rng = random.Random(0)
    files = {}
    for corpus in CORPORA:
        truth, raters = [], []
        for i in range(1, n + 1):
            sid = str(i) if corpus in (MOVIES, "tweets") else f"1_{i}"
            text = f"{corpus[:5]} {i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))
            votes = [rng.randint(-4, 4) for _ in range(3)]
            mean = sum(votes) / 3
            truth.append(f"{sid}\t{mean}\t{text}\n")
            if corpus == "tweets" and i == 1:
                votes = [4, 4, 4]  # a rater row of another sentence: ignored
            raters.append(f"{sid}\t{mean}\t0.5\t{json.dumps(votes)}\n")
        files[f"hutto_ICWSM_2014/{corpus}_GroundTruth.txt"] = "".join(truth).encode()
        files[f"hutto_ICWSM_2014/{corpus}_anonDataRatings.txt"] = (
            ("\ufeff" if corpus.startswith("amazon") else "") + "".join(raters)
        ).encode()
    path.write_bytes(tar_gz({f"vaderSentiment-3.3.2/{prep.ARCHIVE_MEMBER}": tar_gz(files)}))
    return path


@pytest.fixture
def fake_task(tmp_path):
    sdist = fake_sdist(tmp_path / "vaderSentiment-3.3.2.tar.gz")
    task = SentimentTask(
        cache_dir=str(tmp_path / "cache"), archive=str(sdist), val_fraction=0.2, test_fraction=0.2
    )
    return task, read_corpora(sdist)


def test_corpora_are_read_with_every_rater_and_mismatched_rater_rows_dropped(fake_task):
    _, rows = fake_task
    assert {r["corpus"] for r in rows} == set(CORPORA) and len(rows) == 4 * 60
    tweet1 = next(r for r in rows if r["corpus"] == "tweets" and r["id"] == "1")
    assert tweet1["ratings"] is None  # its rater row's mean does not match the ground truth
    other = next(r for r in rows if r["corpus"] == "amazonReviewSnippets" and r["id"] == "1_2")
    assert len(other["ratings"]) == 3 and sum(other["ratings"]) / 3 == pytest.approx(other["rating"])


def test_the_judge_never_trains_on_val_or_test_movie_sentences(fake_task):
    task, rows = fake_task
    held_out = {r["opening"] for s in ("val", "test") for r in prep.read_jsonl(task.prompt_file(s))}
    train_openings = {r["opening"] for r in prep.read_jsonl(task.prompt_file("train"))}
    p = task.params
    recipe = TuningRecipe(n_train=1000, n_val=0, max_chars=1000)
    sentences = training_sentences(task, CORPORA, rows)
    movies = [r for r in sentences if r["corpus"] == MOVIES]
    assert movies and len(movies) < 60  # some movie sentences, not all
    for r in movies:
        opening = prep.opening_of(
            {"id": int(r["id"]), "text": r["text"]}, p["min_words"], p["max_words"], p["seed"]
        )
        assert opening in train_openings and opening not in held_out
    # every movie sentence whose opening is a val/test prompt is missing from the SFT rows too
    train, val = sft_rows(recipe, sentences)
    shown = "\n".join(r["prompt"] for r in train + val)
    for r in rows:
        if r["corpus"] != MOVIES:
            continue
        opening = prep.opening_of(
            {"id": int(r["id"]), "text": r["text"]}, p["min_words"], p["max_words"], p["seed"]
        )
        if opening in held_out:
            assert f"Text: {r['text']}\n" not in shown
    assert {r["corpus"] for r in train} == set(CORPORA)
    assert movie_sentences_in_split(
        task, [r for r in rows if r["corpus"] == MOVIES], "val"
    )  # the split matters


def test_votes_follow_one_rater_or_the_mean():
    rng = random.Random(0)
    row = {"rating": 0.4, "ratings": [3, 0, -1, 0, 2]}
    draws = [vote(row, "rater", rng) for _ in range(3000)]
    assert draws.count(1) / len(draws) == pytest.approx(2 / 3, abs=0.03)  # 2 of 3 non-neutral raters
    assert vote({"rating": 0.0, "ratings": [0, 0]}, "rater", rng) is None
    assert vote(row, "mean", rng) == 1 and vote({"rating": -0.1, "ratings": None}, "rater", rng) == -1


def test_sft_rows_ask_the_judges_question_and_answer_yes_or_no():
    recipe = TuningRecipe(n_train=3, n_val=1, label="mean")
    sentences = [
        {"corpus": "tweets", "id": str(i), "text": f"t{i}", "rating": r, "ratings": None}
        for i, r in enumerate([2, -1, 0, 3, -2])
    ]
    sentences.insert(0, {"corpus": "tweets", "id": "long", "text": "t" * 201, "rating": 1, "ratings": None})
    train, val = sft_rows(recipe, sentences)
    assert len(train) == 3 and len(val) == 1  # the neutral sentence gives no vote
    assert "long" not in {r["id"] for r in train + val}  # longer than max_chars: left out
    for row in train + val:
        s = next(x for x in sentences if x["id"] == row["id"])
        assert row["prompt"] == judge_prompt(recipe, s["text"])
        assert row["completion"] == (" yes" if s["rating"] > 0 else " no")


def test_the_judge_config_asks_exactly_what_the_judge_was_tuned_on(tmp_path):
    from hydra.utils import instantiate

    from alignlab.judges.templates import render_plain

    cfg = compose(["judge=tuned_smollm2", f"paths.cache_dir={tmp_path}"], config_name="label")
    judge = instantiate(cfg.judge)  # no model loaded, nothing trained
    recipe = judge.spec.recipe()
    assert judge.mode == "pointwise" and not judge.use_chat_template and judge.min_option_mass > 0
    assert judge.tie_margin > 0 and judge.template.system is None
    asked = render_plain(
        judge.template.pointwise_messages("Movie review: It", " was great.", judge.template.rubric)
    )
    assert asked == judge_prompt(recipe, " was great.")
    # the recipe is part of the judge's identity (labels cached under another recipe are not reused)
    other = instantiate(
        compose(
            ["judge=tuned_smollm2", f"paths.cache_dir={tmp_path}", "judge.model.tuning.steps=7"],
            config_name="label",
        ).judge
    )
    assert other.identity() != judge.identity()


@pytest.mark.slow
def test_tuning_stage_trains_once_then_is_cached(tmp_path, monkeypatch):
    """The stage on the tiny model: alignlab.train tunes it, the adapter loads as a judge, a second call
    reuses the artifact."""
    from alignlab.judges.local import LocalJudge
    from alignlab.judges.templates import JudgeTemplate
    from alignlab.judges.tuning import TunedJudgeSpec, ensure_tuned_judge
    from alignlab.models import ModelSpec

    monkeypatch.setenv("ALIGNLAB_CACHE", str(tmp_path / "cache"))
    sdist = fake_sdist(tmp_path / "vaderSentiment-3.3.2.tar.gz")
    task = {
        "_target_": "alignlab.tasks.sentiment.SentimentTask",
        "cache_dir": str(tmp_path / "cache"),
        "archive": str(sdist),
    }
    recipe = dict(n_train=24, n_val=4, steps=3, batch_size=4, lora_layers=0, precision="32-true")
    base = ModelSpec(source="tiny", dtype="float32", cache_dir=str(tmp_path / "cache"))
    path = ensure_tuned_judge(TuningRecipe(**recipe), base, task)  # the task supplies the data
    assert (path / "adapter_config.json").exists()
    art = path.parent.parent
    info = json.loads((art / "tuning.json").read_text())
    assert info["train_rows"] == 24 and "val/loss" in info["metrics"]
    stamp = (art / "DONE.json").stat().st_mtime_ns
    spec = TunedJudgeSpec(
        base={"source": "tiny", "dtype": "float32"},
        cache_dir=str(tmp_path / "cache"),
        tuning=recipe,
        task=task,
        dtype="float32",
    )
    judge = LocalJudge(
        spec,
        JudgeTemplate(system=None, pointwise_includes_prompt=False),
        mode="pointwise",
        use_chat_template=False,
        device="cpu",
    )
    out = judge.judge_pairs(["p"], ["good good"], ["bad bad"])
    assert out[0]["verdict"] in ("first", "second", "tie") and (art / "DONE.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("reward", ["judge_yes", "judge_pairwise"])
def test_direct_rlaif_rewards_use_the_tuned_judge(reward, tmp_path):
    from hydra.utils import instantiate

    from alignlab.judges.tuning import TunedJudgeSpec

    cfg = compose(["algo=rloo", f"reward@algo.reward={reward}", f"paths.cache_dir={tmp_path}"])
    r = instantiate(cfg.algo.reward)  # nothing loaded or trained yet
    assert isinstance(r.judge.spec, TunedJudgeSpec) and r.judge.mode == "pointwise"


def test_auto_precision_is_resolved_into_the_judges_key(monkeypatch, tmp_path):
    """``precision: auto`` tunes in what this machine trains in, and names it: a bf16 judge and an fp32 judge
    are two judges (their artifacts and answer caches never mix)."""
    import alignlab.judges.tuning as tuning
    from alignlab.utils.precision import cpu_precision

    monkeypatch.setattr(tuning, "_cuda", lambda: False)
    ids = {}
    try:
        for precision in ("bf16-mixed", "32-true"):
            monkeypatch.setenv("ALIGNLAB_CPU_PRECISION", precision)
            cpu_precision.cache_clear()
            assert tuning.resolve_precision("auto") == precision
            assert tuning.resolve_precision("16-mixed") == "16-mixed"  # an explicit choice is kept
            spec = tuning.TunedJudgeSpec(
                cache_dir=str(tmp_path), tuning={"precision": "auto"}, task="sentiment"
            )
            assert spec.recipe().precision == precision
            ids[precision] = spec.identity()
    finally:
        cpu_precision.cache_clear()
    assert ids["bf16-mixed"] != ids["32-true"]
    monkeypatch.setattr(tuning, "_cuda", lambda: True)
    assert tuning.resolve_precision("auto") == "bf16-mixed"

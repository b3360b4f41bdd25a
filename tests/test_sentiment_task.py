"""The sentiment task: scorers, prepare step (fetch, cache, idempotence), deterministic splits, task:// paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from alignlab.tasks import prepare as prep
from alignlab.tasks import scorers
from alignlab.tasks.sentiment import SentimentTask
from alignlab.tasks.sentiment_toy import SyntheticSentimentTask
from conftest import compose, tar_gz

POSITIVE = [
    "This movie is wonderful, a true delight. I loved every minute!",
    "A great, beautiful and moving film.",
]
NEGATIVE = ["This movie is awful, a boring mess. I hated every minute!", "A terrible, ugly and dull film."]


# -- scorers -------------------------------------------------------------------------------------------
def test_scorers_rank_clearly_positive_above_clearly_negative():
    for fn in (scorers.vader_compound, scorers.afinn_polarity):
        pos, neg = fn(POSITIVE), fn(NEGATIVE)
        assert pos.shape == neg.shape == (2,)
        assert (pos > 0.5).all() and (neg < -0.5).all(), (fn.__name__, pos, neg)
        assert np.all(np.abs(fn(POSITIVE + NEGATIVE + ["", "the table"])) <= 1.0)
        assert fn(["", "The table is in the room."]).tolist() == [0.0, 0.0]


def test_afinn_normalisation_is_tanh_of_sum_over_scale():
    from afinn import Afinn

    text = "good good bad"  # 3 + 3 - 3
    assert Afinn().score(text) == 3
    assert scorers.afinn_polarity([text])[0] == pytest.approx(np.tanh(3 / 5))
    assert scorers.afinn_polarity([text], scale=3)[0] == pytest.approx(np.tanh(1.0))
    with pytest.raises(ValueError, match="scale"):
        scorers.afinn_polarity([text], scale=0)


def test_scorers_reject_a_single_string():
    with pytest.raises(TypeError, match="sequence of texts"):
        scorers.vader_compound("a movie")


def test_rank_correlations_closed_form():
    assert scorers._ranks(np.array([10.0, 20, 20, 30])).tolist() == [1, 2.5, 2.5, 4]
    assert scorers.spearman([1, 2, 3, 4], [10, 100, 1000, 10**4]) == pytest.approx(1.0)
    assert scorers.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # Pearson of (1,2,3,4) with (1,2,2,4): S_xy = 4.5, S_xx = 5, S_yy = 4.75
    assert scorers.pearson([1, 2, 3, 4], [1, 2, 2, 4]) == pytest.approx(4.5 / np.sqrt(5 * 4.75))


def test_gold_reward_scores_completion_or_prompt_plus_completion(tmp_path):
    only = SentimentTask(cache_dir=str(tmp_path))
    both = SentimentTask(cache_dir=str(tmp_path), score_on="prompt+completion")
    prompts, completions = ["Movie review: An awful, horrible"], [" table"]
    assert only.gold_scores(prompts, completions)[0] == 0.0
    assert both.gold_scores(prompts, completions)[0] < -0.5
    assert only.second_scores(["x", "y"], POSITIVE).tolist() == pytest.approx(
        scorers.afinn_polarity(POSITIVE)
    )
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        only.gold_scores(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="score_on"):
        SentimentTask(score_on="prompt")
    with pytest.raises(ValueError, match="opening"):
        SentimentTask(prompt_template="Review:")


# -- openings and splits ---------------------------------------------------------------------------------
def _ratings(n: int = 60) -> list[dict]:
    words = [
        "the",
        "film",
        "is",
        "a",
        "warm",
        "and",
        "funny",
        "story",
        "about",
        "love",
        "in",
        "a",
        "small",
        "town",
    ]
    return [
        {"id": i + 1, "text": " ".join([*words[i % 5 :], f"w{i}"]), "rating": (i % 9) - 4.0} for i in range(n)
    ]


def test_openings_are_distinct_prefixes_of_bounded_length():
    rows = _ratings()
    ops = prep.make_openings(rows, 2, 8, seed=0)
    texts = [o["opening"] for o in ops]
    assert len(texts) == len(set(texts))
    by_id = {r["id"]: r["text"] for r in rows}
    for o in ops:
        n = len(o["opening"].split())
        assert 2 <= n <= 8
        full = by_id[o["source_id"]].split()
        assert full[:n] == o["opening"].split() and n < len(full)  # a prefix, at least one word left
    assert prep.make_openings(rows, 2, 8, seed=0) == ops
    assert prep.make_openings(rows, 2, 8, seed=1) != ops


def test_splits_are_deterministic_disjoint_and_complete():
    rows = [{"opening": f"opening {i}"} for i in range(100)]
    a = prep.split_rows(rows, 0.1, 0.2, seed=3)
    assert a == prep.split_rows(rows, 0.1, 0.2, seed=3)
    assert a != prep.split_rows(rows, 0.1, 0.2, seed=4)
    assert {k: len(v) for k, v in a.items()} == {"train": 70, "val": 10, "test": 20}
    seen = [r["opening"] for s in a.values() for r in s]
    assert sorted(seen) == sorted(r["opening"] for r in rows)
    with pytest.raises(ValueError, match="sum to less than 1"):
        prep.split_rows(rows, 0.5, 0.5, seed=0)


# -- prepare step, with a small fake source archive -------------------------------------------------------
def _fake_sdist(path: Path, n: int = 40) -> Path:
    truth = "".join(
        f"{r['id']}\t{r['rating']}\t{r['text'].replace('a ', 'a  ')} ''quoted''\r\n" for r in _ratings(n)
    )
    raters = "".join(f"{r['id']}\t{r['rating']}\t0.5\t[1, 2, 3]\r\n" for r in _ratings(n))

    inner = tar_gz(
        {
            f"hutto_ICWSM_2014/{prep.TRUTH_FILE}": truth.encode(),
            f"hutto_ICWSM_2014/{prep.RATERS_FILE}": raters.encode(),
        }
    )
    path.write_bytes(tar_gz({f"vaderSentiment-3.3.2/{prep.ARCHIVE_MEMBER}": inner}))
    return path


def test_prepare_fetches_once_then_uses_the_cache(tmp_path, monkeypatch):
    fake = _fake_sdist(tmp_path / "vaderSentiment-3.3.2.tar.gz")
    calls = []

    def fetch(dest, requirement=prep.REQUIREMENT):
        calls.append(requirement)
        return fake

    monkeypatch.setattr(prep, "fetch_sdist", fetch)
    cache = tmp_path / "cache"
    task = SentimentTask(cache_dir=str(cache), val_fraction=0.25, test_fraction=0.25)
    train = task.prompt_file("train")  # first use prepares
    assert calls == [prep.REQUIREMENT]
    d = cache / "tasks" / "sentiment"
    prov = json.loads((d / "provenance.json").read_text())
    assert prov["archive_sha256"] == prep.file_sha256(fake) and prov["sentences"] == 40
    ratings = prep.read_jsonl(d / "ratings.jsonl")
    assert ratings[0]["text"].endswith('"quoted"') and "  " not in ratings[0]["text"]  # cleaned
    assert ratings[0]["rating_std"] == 0.5 and ratings[0]["n_raters"] == 3
    manifest = json.loads((Path(train).parent / "manifest.json").read_text())
    assert sum(manifest["sizes"].values()) == manifest["distinct_prompts"]
    rows = prep.read_jsonl(train)
    assert all(r["prompt"] == "Movie review: " + r["opening"] for r in rows)

    mtimes = {p: p.stat().st_mtime_ns for p in d.rglob("*") if p.is_file()}
    again = SentimentTask(cache_dir=str(cache), val_fraction=0.25, test_fraction=0.25)  # a new process
    assert again.prompts("val") == task.prompts("val")
    assert calls == [prep.REQUIREMENT]  # no second fetch
    assert {p: p.stat().st_mtime_ns for p in d.rglob("*") if p.is_file()} == mtimes  # nothing rewritten

    other = SentimentTask(cache_dir=str(cache), seed=1, val_fraction=0.25, test_fraction=0.25)
    assert other.prompt_dir != task.prompt_dir and other.prompts("train") != task.prompts("train")
    assert calls == [prep.REQUIREMENT]  # new splits reuse the fetched ratings
    with pytest.raises(ValueError, match="splits train, val, test"):
        task.prompt_file("dev")


def test_prepare_command_prints_split_sizes(tmp_path, capsys):
    fake = _fake_sdist(tmp_path / "v.tar.gz", n=30)
    prep.main(["--cache-dir", str(tmp_path / "c"), "--archive", str(fake)])
    out = capsys.readouterr().out
    (manifest,) = (tmp_path / "c").rglob("manifest.json")
    sizes = json.loads(manifest.read_text())["sizes"]
    line = f"train={sizes['train']} val={sizes['val']} test={sizes['test']}"
    assert out.count(line) == 1 and sizes["val"] == sizes["test"] >= 1
    prep.main(["--cache-dir", str(tmp_path / "c"), "--archive", str(fake)])  # second call: cached
    assert "(cached)" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prep.main(["--cache-dir", str(tmp_path / "d"), "--archive", str(tmp_path / "missing.tar.gz")])


def test_fetch_failure_names_the_fix(tmp_path, monkeypatch):
    import subprocess

    seen = []

    def failing_pip(cmd, **kwargs):
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(prep.subprocess, "run", failing_pip)
    with pytest.raises(RuntimeError, match=r"(?s)No matching distribution.*--archive"):
        prep.fetch_sdist(tmp_path)
    assert seen[0][1:4] == ["-m", "pip", "download"] and "--no-binary" in seen[0] and "--no-deps" in seen[0]


# -- synthetic task and task:// data paths ------------------------------------------------------------------
def test_synthetic_task_splits_shipped_prompts(tmp_path):
    task = SyntheticSentimentTask(cache_dir=str(tmp_path))
    sizes = {s: len(task.prompts(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 24, "val": 4, "test": 4}
    allp = [p for s in sizes for p in task.prompts(s)]
    assert len(set(allp)) == 32 and task.rubric
    assert not (tmp_path / "tasks" / "sentiment").exists()  # nothing fetched


def test_task_urls_resolve_through_the_runs_task(tiny_lm, tmp_path):
    from omegaconf import OmegaConf

    from alignlab.data.datamodules import PromptDataModule
    from alignlab.tasks.base import resolve_task_paths

    task = SyntheticSentimentTask(cache_dir=str(tmp_path))
    data = OmegaConf.create({"train_path": "task://train", "val_path": "task://val", "batch_size": 4})
    resolve_task_paths(data, task)
    assert data.train_path == task.prompt_file("train") and data.val_path == task.prompt_file("val")
    dm = PromptDataModule(
        train_path=data.train_path,
        val_path=data.val_path,
        batch_size=4,
        max_length=64,
        max_prompt_length=32,
        use_chat_template=False,
        tokenizer=tiny_lm.tokenizer,
    )
    dm.setup("fit")
    assert len(dm.train_set) == 24 and len(dm.val_set) == 4
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["prompt"]) == 4 and isinstance(batch["prompt_ids"][0], list)


def test_bad_task_urls_are_config_errors(tmp_path):
    from omegaconf import OmegaConf

    from alignlab.tasks.base import resolve_task_paths
    from alignlab.utils.config import ConfigError

    task = SyntheticSentimentTask(cache_dir=str(tmp_path))
    for url, t, msg in (
        ("task://train", None, "no task is set"),
        ("task://sentiment_toy@train", task, "task://SPLIT"),
        ("task://dev", task, "split"),
    ):
        with pytest.raises((ConfigError, ValueError), match=msg):
            resolve_task_paths(OmegaConf.create({"train_path": url}), t)


def test_one_task_object_per_config(tmp_path):
    from omegaconf import OmegaConf

    from alignlab.rewards.gold import GoldReward
    from alignlab.tasks import build_task

    cfg = compose(
        ["task=sentiment_toy", f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path}"], "label"
    )
    task = build_task(cfg.task)
    assert build_task(OmegaConf.create(OmegaConf.to_container(cfg.task, resolve=True))) is task
    assert GoldReward(cfg.task).task is task  # the reward scores with the run's task, not a second one
    other = build_task({**OmegaConf.to_container(cfg.task, resolve=True), "score_on": "prompt+completion"})
    assert other is not task and other.score_on == "prompt+completion"


@pytest.mark.parametrize("name", ["sentiment_prompts", "sentiment_prompts_toy"])
def test_sentiment_data_configs_compose_without_preparing(name, tmp_path, monkeypatch):
    from hydra.utils import instantiate

    monkeypatch.setattr(prep, "fetch_sdist", lambda *a, **k: pytest.fail("composing must not fetch"))
    cfg = compose([f"data={name}", f"paths.output_dir={tmp_path}"])
    dm = instantiate(cfg.data, tokenizer=None)
    assert dm.hparams.train_path.startswith("task://") and dm.hparams.use_chat_template is False


@pytest.mark.parametrize("name", ["sentiment", "sentiment_toy"])
def test_task_configs_instantiate(name, tmp_path):
    from hydra.utils import instantiate

    cfg = compose([f"task={name}", f"paths.output_dir={tmp_path}"], config_name="label")
    task = instantiate(cfg.task)
    assert task.name == name and task.use_chat_template is False and "positive" in task.rubric


# -- the real source (network: PyPI) ----------------------------------------------------------------------
@pytest.mark.slow
def test_real_prepare_gives_over_1000_distinct_prompts_and_scorers_agree_with_humans(tmp_path, capsys):
    prep.main(["--cache-dir", str(tmp_path), "--agreement"])
    out = capsys.readouterr().out
    task = SentimentTask(cache_dir=str(tmp_path))
    sizes = {s: len(task.prompts(s)) for s in task.splits}
    allp = [p for s in task.splits for p in task.prompts(s)]
    assert len(allp) == len(set(allp)) >= 1000
    assert f"train={sizes['train']} val={sizes['val']} test={sizes['test']}" in out
    prov = json.loads((tmp_path / "tasks" / "sentiment" / "provenance.json").read_text())
    assert prov["sentences"] == 10605 and len(prov["archive_sha256"]) == 64
    agreement = json.loads((tmp_path / "tasks" / "sentiment" / "agreement.json").read_text())
    for r in agreement["scorers"].values():
        assert r["pearson"] > 0.35 and r["spearman"] > 0.35


def test_a_task_override_reaches_rl_prompts_and_the_gold_reward(tmp_path):
    """task.* overrides change the training prompts and the validation gold reward of the train app too
    (both built from the run's one task config)."""
    from hydra.utils import instantiate

    from alignlab.tasks import build_task
    from alignlab.tasks.base import resolve_task_paths

    cfg = compose(
        ["experiment=ppo_sentiment", "task=sentiment_toy", "task.score_on=prompt+completion",
         f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path}"]
    )  # fmt: skip
    task = build_task(cfg.task)
    resolve_task_paths(cfg.data, task)
    assert cfg.data.train_path == task.prompt_file("train")
    gold = instantiate(cfg.algo.val_rewards.gold)
    assert gold.task is task and gold.task.score_on == "prompt+completion"
    reward = instantiate(cfg.algo.reward) if cfg.algo.reward._target_.endswith("GoldReward") else None
    assert reward is None or reward.task is task

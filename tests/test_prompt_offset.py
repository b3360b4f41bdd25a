"""``prompt_offset``: the sample and label apps can skip a split's first prompts, so a judge is audited on
test prompts that no profile evaluates on (evaluation reads test[:n])."""

from __future__ import annotations

import json

import pytest
from tests.conftest import compose


def _sample(tmp_path, *extra):
    from alignlab.sample import sample

    cfg = compose(
        [
            f"paths.output_dir={tmp_path}",
            "progress=false",
            "task=sentiment_toy",
            "model=tiny",
            "batch_size=4",
            "sampling.max_new_tokens=4",
            *extra,
        ],
        config_name="sample",
    )
    return cfg, sample(cfg)


def test_offset_skips_the_first_prompts_of_the_split(tmp_path, tiny_lm):
    from alignlab.tasks import build_task

    cfg, rep = _sample(tmp_path, "split=train", "n_prompts=3", "prompt_offset=2")
    rows = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    want = build_task(cfg.task).prompts("train")[2:5]
    assert [r["prompt"] for r in rows] == want, ([r["prompt"] for r in rows], want)
    assert rep["pairs_sampled"] == 3


def test_an_offset_past_the_split_is_one_clear_error(tmp_path, tiny_lm):
    from alignlab.tasks import build_task
    from alignlab.utils.config import ConfigError

    n = len(build_task(compose(["task=sentiment_toy"], config_name="sample").task).prompts("test"))
    with pytest.raises(ConfigError, match=f"has only {n} prompts"):
        _sample(tmp_path, "split=test", f"prompt_offset={n}")
    with pytest.raises(ConfigError, match="must be >= 0"):
        _sample(tmp_path, "prompt_offset=-1")

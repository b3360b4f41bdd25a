"""The instruction-following task: each constraint checker on hand-written strings, prompts parsed back to
their constraints, deterministic splits disjoint by (template, topic), the scorers, the prompt files, the
config, and an end-to-end evaluation of the tiny model on a few prompts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from alignlab.tasks import constraints as C
from alignlab.tasks.instruct import InstructTask, build_rows
from alignlab.utils.config import ConfigError
from conftest import CONF, app_env, compose

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return InstructTask(cache_dir=str(tmp_path_factory.mktemp("cache")))


def ok(kind: str, arg, text: str) -> bool:
    return C.Constraint(kind, arg).check(text)


# -- checkers: a passing and a failing example each, and the edges ----------------------------------------
def test_word_counts():
    assert C.words("Hello, world! It's a well-known café.") == [
        "Hello",
        "world",
        "It's",
        "a",
        "well-known",
        "café",
    ]
    assert C.words("-- — ... 42") == ["42"]
    assert ok("min_words", 3, "one two three") and not ok("min_words", 3, "one two")
    assert ok("min_words", 3, "  one,\ttwo,\nthree!  ")  # whitespace and punctuation are not words
    assert not ok("min_words", 3, "one two - —")  # dashes are not words
    assert ok("max_words", 3, "one two three") and not ok("max_words", 3, "one two three four")
    assert ok("max_words", 2, "naïve café") and not ok("max_words", 1, "naïve café")


def test_an_empty_response_satisfies_nothing():
    for kind in C.KINDS:
        arg = {"min_words": 0, "max_words": 5, "n_sentences": 0, "bullets": 0, "include_keyword": "x",
               "avoid_keyword": "x", "starts_with": "x", "end_punct": "!"}.get(kind)  # fmt: skip
        for empty in ("", "   \n", "!", "- ,"):
            assert not ok(kind, arg, empty), (kind, empty)


def test_keywords_match_whole_words_any_case_and_plurals():
    assert ok("include_keyword", "ocean", "The Ocean is wide.") and not ok(
        "include_keyword", "ocean", "Seas."
    )
    assert ok("include_keyword", "ocean", "two oceans") and ok(
        "include_keyword", "volcano", "volcanoes erupt"
    )
    assert not ok("include_keyword", "ocean", "oceanic winds") and not ok("include_keyword", "cat", "concat")
    assert not ok("include_keyword", "dog", "dog-friendly")  # a hyphenated word is one word
    assert ok("avoid_keyword", "ocean", "The sea is wide.") and not ok("avoid_keyword", "ocean", "OCEAN!")
    assert not ok("avoid_keyword", "bee", "Bees hum.") and ok("avoid_keyword", "bee", "A beehive hums.")
    assert ok("avoid_keyword", "cafe", "Un café.")  # accents differ: another word


def test_sentences():
    assert C.count_sentences("One. Two! Three?") == 3
    assert C.count_sentences("One... Two?!  ") == 2  # a run of marks ends one sentence; trailing spaces
    assert C.count_sentences("One. Two") == 2  # an unfinished last sentence counts
    assert C.count_sentences("Version 2.5 is out.") == 1  # a dot inside a number is no end
    assert C.count_sentences("One. ...") == 1  # a tail with no word is no sentence
    assert C.count_sentences("Hi. — ! Bye.") == 2  # nor is a part between ends with no word
    assert ok("n_sentences", 2, "It rains. I stay in.") and not ok("n_sentences", 2, "It rains.")
    assert not ok("n_sentences", 2, "It rains. I stay in. I read.")


def test_bullets():
    text = "Some fruit:\n- apples\n* pears\n  • plums\n-no space\n- \n"
    assert C.count_bullets(text) == 3  # "-no space" and an empty item are not bullets
    assert ok("bullets", 3, text) and not ok("bullets", 2, text)
    assert not ok("bullets", 2, "1. apples\n2. pears")  # a numbered list is not a bullet list


def test_starts_with():
    assert ok("starts_with", "Today", "Today, the sun shines.") and not ok(
        "starts_with", "Today", "So today."
    )
    assert ok("starts_with", "Today", '  "today" is short.') and ok("starts_with", "Yes", "**Yes!** Sure.")
    assert not ok("starts_with", "Here", "Here's one.") and not ok("starts_with", "Yes", "Yesterday.")
    assert C.first_word("# Honestly. x") == "Honestly" and C.first_word("...") == ""


def test_lowercase_no_commas_end_punct():
    assert ok("lowercase", None, "all small here, 42!") and not ok("lowercase", None, "all small but One")
    assert not ok("lowercase", None, "un café Été") and ok("lowercase", None, "un café été")  # unicode case
    assert ok("no_commas", None, "No commas here.") and not ok("no_commas", None, "One, two.")
    assert not ok("no_commas", None, "一，二") and not ok(
        "no_commas", None, "一、二"
    )  # fullwidth, ideographic
    assert ok("end_punct", "!", "Great!  \n") and not ok("end_punct", "!", "Great!?")  # trailing space ok
    assert ok("end_punct", "?", "Why?") and not ok("end_punct", "?", 'He asked "why?"')


# -- prompts -------------------------------------------------------------------------------------------
def test_every_prompt_parses_back_to_the_constraints_it_was_built_from(task):
    for split in task.splits:
        for row in task.rows[split]:
            parsed = C.parse_constraints(row["prompt"])
            assert [c.to_dict() for c in parsed] == row["constraints"], row["prompt"]


def test_prompt_constraint_mix(task):
    rows = [r for s in task.splits for r in task.rows[s]]
    counts = {1: 0, 2: 0, 3: 0}
    for r in rows:
        kinds = [c["kind"] for c in r["constraints"]]
        counts[len(kinds)] += 1
        assert kinds[0] in C.PRODUCTIVE and len(set(kinds)) == len(kinds)
        assert not any(frozenset((a, b)) in C.CONFLICTS for a in kinds for b in kinds)
    assert all(n > 100 for n in counts.values()), counts
    seen = {c["kind"] for r in rows for c in r["constraints"]}
    assert seen == set(C.KINDS)


def test_splits_are_deterministic_and_disjoint_by_template_and_topic(task):
    sizes = {s: len(task.prompts(s)) for s in task.splits}
    assert sizes["train"] > 700 and 80 < sizes["val"] < 130 and 80 < sizes["test"] < 130, sizes
    combos = {s: {(r["template"], r["topic"]) for r in task.rows[s]} for s in task.splits}
    assert not combos["train"] & combos["val"] and not combos["train"] & combos["test"]
    assert not combos["val"] & combos["test"]
    all_prompts = [p for s in task.splits for p in task.prompts(s)]
    assert len(set(all_prompts)) == len(all_prompts)
    again = InstructTask(cache_dir="/unused")  # same data seed: the same prompts, in the same order
    assert all(again.prompts(s) == task.prompts(s) for s in task.splits)
    other = InstructTask(seed=1, cache_dir="/unused")
    assert other.prompts("test") != task.prompts("test")
    assert {(r["template"], r["topic"]) for r in other.rows["test"]} != combos["test"]  # the split too


def test_constraint_counts_and_kinds_follow_the_config():
    rows = build_rows(0, 2, 2, 2, ["min_words", "no_commas"], 0.1, 0.1)
    for r in rows["train"]:
        assert [c["kind"] for c in r["constraints"]] == ["min_words", "no_commas"]


def test_bad_config_is_one_clear_error():
    with pytest.raises(ConfigError, match="unknown constraint kind"):
        InstructTask(kinds=["min_words", "rhymes"])
    with pytest.raises(ConfigError, match="needs at least one of"):
        InstructTask(kinds=["no_commas"])
    with pytest.raises(ConfigError, match="min_constraints"):
        InstructTask(min_constraints=3, max_constraints=2)
    with pytest.raises(ConfigError, match="val_fraction"):
        InstructTask(val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(ValueError, match="has splits"):
        InstructTask().prompts("dev")


def test_prompt_file_rows_and_cache(tmp_path):
    task = InstructTask(cache_dir=str(tmp_path))
    path = Path(task.prompt_file("val"))
    assert path.is_relative_to(tmp_path / "tasks" / "instruct")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == task.prompts("val")
    assert all(isinstance(r["constraints"], list) and r["constraints"] for r in rows)
    stamp = path.stat().st_mtime_ns
    assert Path(task.prompt_file("test")).parent == path.parent and path.stat().st_mtime_ns == stamp
    assert (path.parent / "manifest.json").exists()
    assert InstructTask(cache_dir=str(tmp_path), seed=1).prompt_file("val") != str(path)


# -- scorers -------------------------------------------------------------------------------------------
def test_gold_is_the_fraction_followed_and_second_is_all_or_nothing(task):
    prompt = 'Describe coffee to a friend. Answer with at most 5 words. Do not use any commas. End your response with an exclamation mark.'  # fmt: skip
    completions = [
        "Coffee is warm!",
        "Coffee, warm!",
        "Coffee, warm and very good indeed.",
        "Coffee is so very warm today!",
    ]
    gold = task.gold_scores([prompt] * 4, completions)
    np.testing.assert_allclose(gold, [1.0, 2 / 3, 0.0, 2 / 3])
    np.testing.assert_allclose(task.second_scores([prompt] * 4, completions), [1.0, 0.0, 0.0, 0.0])
    rates = task.pass_rates([prompt] * 4, completions)
    assert rates["no_commas"] == {"n": 4, "pass_rate": 0.5} and rates["max_words"]["pass_rate"] == 0.5


def test_scorers_reject_bad_input(task):
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        task.gold_scores(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="states no instruction"):
        task.gold_scores(["Write about the sea."], ["The sea."])
    with pytest.raises(TypeError, match="not single strings"):
        task.second_scores("Do not use any commas.", "x")


def test_scores_cli(tmp_path):
    prompt = "Describe coffee to a friend. Do not use any commas."
    samples = tmp_path / "samples.jsonl"
    samples.write_text(
        "\n".join(json.dumps({"prompt": prompt, "completion": c}) for c in ("Hot.", "Hot, dark."))
    )
    env = app_env(tmp_path, PYTHONPATH=str(REPO / "src"))
    run = subprocess.run([sys.executable, "-m", "alignlab.tasks.instruct", str(samples)],
                         capture_output=True, text=True, env=env, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "2 completions: gold 0.500" in run.stdout and "no_commas" in run.stdout
    bad = subprocess.run([sys.executable, "-m", "alignlab.tasks.instruct", str(tmp_path / "nope.jsonl")],
                         capture_output=True, text=True, env=env, cwd=tmp_path)  # fmt: skip
    assert bad.returncode == 2 and "file not found" in bad.stderr and "Traceback" not in bad.stderr


# -- config and end to end -------------------------------------------------------------------------------
def config_task(tmp_path):
    from alignlab.tasks import build_task

    cfg = compose(["task=instruct", f"paths.cache_dir={tmp_path}"], config_name="evaluate")
    return cfg, build_task(cfg.task)


def test_config_sets_the_task_owned_values(tmp_path):
    from omegaconf import OmegaConf

    cfg, task = config_task(tmp_path)
    assert isinstance(task, InstructTask) and task.name == "instruct" and tuple(task.tags) == ("instruct",)
    assert "instructions" in task.rubric and task.question.endswith("?")
    assert task.use_chat_template is True and task.max_new_tokens >= 48
    labeller = OmegaConf.load(CONF / "judge" / f"{task.labeller}.yaml")
    assert "task" not in labeller and "pointwise" not in labeller.get("template", {})  # a generic judge
    assert cfg.prompt_format.use_chat_template is True  # the evaluate app reads the task's choice


def test_max_prompt_tokens_holds_every_prompt_in_the_chat_template(tmp_path):
    from alignlab.models.bundled import default_cache_dir

    model_dir = default_cache_dir() / "models" / "smollm2-135m-instruct"
    if not (model_dir / "tokenizer.json").exists():
        pytest.skip("the bundled SmolLM2 tokenizer is not cached")
    from transformers import AutoTokenizer

    _, task = config_task(tmp_path)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    prompts = [p for s in task.splits for p in task.prompts(s)]
    bare = [len(ids) for ids in tok(prompts, add_special_tokens=False)["input_ids"]]
    # the template adds the same tokens around every prompt: its 10 longest prompts are the longest in it
    longest = max(
        len(tok.apply_chat_template([{"role": "user", "content": prompts[i]}], add_generation_prompt=True,
                                    tokenize=True, return_dict=False))
        for i in np.argsort(bare)[-10:]
    )  # fmt: skip
    assert longest <= task.max_prompt_tokens


def test_tiny_model_evaluates_on_instruct_prompts_end_to_end(tmp_path):
    from alignlab.evaluate import evaluate

    out = tmp_path / "run"
    cfg = compose(
        ["model=tiny", "task=instruct", "split=val", "n_prompts=4", "batch_size=2", "sampling.max_new_tokens=6",
         "n_bootstrap=50", "prompt_format.use_chat_template=false", "prompt_format.max_prompt_length=96",
         f"paths.output_dir={out}", f"paths.cache_dir={tmp_path}"],
        config_name="evaluate",
    )  # fmt: skip
    record = evaluate(cfg)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["task"] == "instruct" and saved["n"] == 4
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    task = InstructTask(cache_dir=str(tmp_path))
    assert [r["prompt"] for r in rows] == task.prompts("val")[:4]
    prompts, completions = [r["prompt"] for r in rows], [r["completion"] for r in rows]
    gold = task.gold_scores(prompts, completions)
    np.testing.assert_allclose(saved["per_prompt"]["gold_reward"], gold, atol=1e-6)
    np.testing.assert_allclose(saved["per_prompt"]["second_reward"], task.second_scores(prompts, completions))
    assert record["gold_reward"] == pytest.approx(gold.mean()) and 0.0 <= record["gold_reward"] <= 1.0


def test_the_docs_python_example_and_constraint_table_are_true(tmp_path):
    doc = (REPO / "docs" / "instruct_task.md").read_text(encoding="utf-8")
    for kind in C.KINDS:
        assert f"| `{kind}`" in doc, kind
    block = doc.split("## From Python")[1].split("```python")[1].split("```")[0]
    scope: dict = {}
    checked = 0
    for line in block.strip().splitlines():
        code, _, claim = line.partition("#")
        code, claim = code.strip(), claim.strip()
        if code.startswith(("from ", "import ")) or " = " in code:
            exec(
                code.replace('compose_task("instruct")', f'compose_task("instruct", cache_dir="{tmp_path}")'),
                scope,
            )
        elif code:
            assert repr(eval(code, scope)) == claim, code
            checked += 1
    assert checked == 3

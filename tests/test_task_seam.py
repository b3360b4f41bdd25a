"""The task owns everything task-specific: no other file names the bundled task, configs read the task's
settings, the task chooses its labeller, a judge made for one task refuses another, and a task that
lacks a method fails in one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from alignlab.tasks import Task
from conftest import REPO, compose

# The bundled task's own files: the only ones in src/ and conf/ that may name it. Each entry says why.
TASK_OWN = [
    "src/alignlab/tasks/sentiment*.py",  # the task itself, its toy variant, its scorer audit, its judge data
    "src/alignlab/tasks/human_ratings.py",  # the human ratings of its source archive
    "src/alignlab/tasks/prepare.py",  # its prepare step (fetches and splits its source)
    "src/alignlab/tasks/scorers.py",  # its gold and second scorers (VADER, AFINN)
    "conf/task/sentiment*.yaml",  # its configs
    "conf/task/default.yaml",  # the one place the bundled default task is chosen
    "conf/task/toy.yaml",  # the one place the tiny profile's toy task is chosen
    "conf/data/sentiment_prompts*.yaml",  # its prompt data configs
    "conf/experiment/*_sentiment.yaml",  # its recipes with their measured numbers
    "conf/comparison/sentiment.yaml",  # its comparison
]
WORDS = re.compile(r"sentiment|movie", re.I)


def _own(rel: str) -> bool:
    from fnmatch import fnmatch

    return any(fnmatch(rel, pattern) for pattern in TASK_OWN)


def test_no_file_outside_the_bundled_task_names_it():
    offenders = []
    for root in ("src", "conf"):
        for path in sorted((REPO / root).rglob("*")):
            if path.suffix not in (".py", ".yaml", ".yml") or "__pycache__" in path.parts:
                continue
            rel = path.relative_to(REPO).as_posix()
            if _own(rel):
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if WORDS.search(line):
                    offenders.append(f"{rel}:{n}: {line.strip()[:100]}")
    assert not offenders, "task-specific words outside the task's files:\n" + "\n".join(offenders)


def test_the_allow_list_names_only_files_that_exist():
    from fnmatch import fnmatch

    files = [p.relative_to(REPO).as_posix() for root in ("src", "conf") for p in (REPO / root).rglob("*")]
    for pattern in TASK_OWN:
        assert any(fnmatch(f, pattern) for f in files), f"{pattern} matches no file: drop it from TASK_OWN"


# -- the Task base class ------------------------------------------------------------------------------------
def _task_cfg(cls_name: str, **keys) -> dict:
    return {"_target_": f"{__name__}.{cls_name}", **keys}


class NoGold(Task):
    name = "no_gold"

    def prompts(self, split):
        return ["a", "b"]


class Brevity(Task):
    name = "brevity_unit"

    def prompts(self, split):
        return {"train": ["one two", "three"], "val": ["four"], "test": ["five"]}[split]

    def gold_scores(self, prompts, completions):
        return np.array([1.0 - min(1.0, abs(len(c.split()) - 8) / 8) for c in completions])


def test_a_task_without_a_required_method_fails_in_one_line_naming_it():
    from alignlab.tasks import build_task
    from alignlab.utils.config import ConfigError

    with pytest.raises(ConfigError) as e:
        build_task(_task_cfg("NoGold"))
    assert "NoGold" in str(e.value) and "gold_scores" in str(e.value) and "\n" not in str(e.value)


def test_a_task_whose_module_cannot_be_imported_names_the_fix():
    from alignlab.tasks import build_task
    from alignlab.utils.config import ConfigError

    with pytest.raises(ConfigError, match="PYTHONPATH"):
        build_task({"_target_": "nowhere_to_be_found.Task"})


def test_default_prompt_file_holds_the_prompts(tmp_path, monkeypatch):
    from alignlab.tasks import build_task

    monkeypatch.setenv("ALIGNLAB_CACHE", str(tmp_path))
    task = build_task(_task_cfg("Brevity", max_new_tokens=16))
    path = task.prompt_file("train")
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]
    assert rows == [{"prompt": "one two"}, {"prompt": "three"}] and str(tmp_path) in path
    assert task.max_new_tokens == 16 and task.second_scores(["x"], ["y"]) is None


def test_yaml_settings_reach_a_task_whose_constructor_does_not_take_them():
    from alignlab.tasks import build_task

    cfg = compose(["task=sentiment", "paths.output_dir=/tmp/x", "++task.question=Q?", "++task.tags=[t1]"],
                  "evaluate")  # fmt: skip
    task = build_task(cfg.task)
    assert task.question == "Q?" and task.tags == ("t1",) and task.labeller == "tuned_smollm2"


def test_task_attr_reads_the_task_object_when_its_yaml_is_silent():
    from omegaconf import OmegaConf

    import alignlab.utils.hydra  # noqa: F401  (registers the resolvers)

    cfg = OmegaConf.create(
        {"task": _task_cfg("Brevity"), "n": "${task_attr:max_new_tokens}", "q": "${task_attr:question}",
         "tags": "${task_tags:dpo}", "cap": "${min:${task_attr:max_new_tokens},8}"}
    )  # fmt: skip
    Brevity.max_new_tokens = 20
    try:
        assert cfg.n == 20 and cfg.cap == 8 and cfg.q == Task.question
        assert list(cfg.tags) == ["dpo", "brevity_unit"]
    finally:
        del Brevity.max_new_tokens


# -- configs read the task ----------------------------------------------------------------------------------
def _pipeline(overrides: list[str], task: dict | None = None):
    """The pipeline config of ``overrides``, with ``task`` (a task config) in place of the default task."""
    from omegaconf import OmegaConf, open_dict

    cfg = compose([*overrides, "paths.output_dir=/tmp/x"], "pipeline")
    if task is not None:
        with open_dict(cfg):
            cfg.task = OmegaConf.create(task)
    return cfg


def _stages(overrides: list[str], task: dict | None = None) -> dict:
    from omegaconf import OmegaConf

    from alignlab.pipeline import stage_config, stage_list

    cfg = _pipeline(overrides, task)
    stages = stage_list(cfg)
    dirs = {n: REPO / n for n, _ in stages}
    return {n: OmegaConf.to_container(stage_config(cfg, s, dirs), resolve=True) for n, s in stages}


@pytest.mark.parametrize("profile,tokens", [("quick", 16), ("standard", 24)])
def test_bundled_task_keeps_each_profiles_lengths_and_labeller(profile, tokens):
    st = _stages([f"profile={profile}", "method=rlaif_rloo"])
    assert st["samples"]["sampling"]["max_new_tokens"] == tokens
    assert st["policy"]["algo"]["max_new_tokens"] == tokens
    assert st["eval"]["sampling"]["max_new_tokens"] == tokens
    assert st["labels"]["judge"]["model"]["task"] == "sentiment"  # the tuned labeller, chosen by the task
    assert st["samples"]["prompt_format"]["use_chat_template"] is False
    assert st["policy"]["data"]["use_chat_template"] is False


def test_a_new_task_sets_lengths_template_labeller_and_tags_of_every_stage():
    task = _task_cfg("Brevity", max_new_tokens=12, max_prompt_tokens=40, use_chat_template=True,
                     labeller="smollm2_135m", tags=["short"])  # fmt: skip
    st = _stages(["profile=quick", "method=rlaif_dpo"], task)
    assert st["samples"]["sampling"]["max_new_tokens"] == 12  # under the quick budget's cap of 16
    assert st["samples"]["prompt_format"] == {**st["samples"]["prompt_format"], "use_chat_template": True,
                                              "max_prompt_length": 40}  # fmt: skip
    assert st["policy"]["data"]["max_prompt_length"] == 40 and st["policy"]["data"]["use_chat_template"]
    assert st["labels"]["judge"]["model"]["source"] == "smollm2_135m"
    assert "bound_tasks" not in st["labels"]["judge"]
    assert set(st["policy"]["tags"]) >= {"dpo", "brevity_unit", "short"}
    rl = _stages(["profile=quick", "method=direct_rlaif_rloo"], task)
    assert rl["policy"]["algo"]["reward"]["judge"]["model"]["source"] == "smollm2_135m"
    assert rl["policy"]["algo"]["max_new_tokens"] == 12


def test_a_judge_made_for_one_task_refuses_another_in_one_line():
    from omegaconf import OmegaConf

    from alignlab.judges.option import check_bound_judges
    from alignlab.pipeline import stage_config, stage_list
    from alignlab.tasks import build_task
    from alignlab.utils.config import ConfigError

    cfg = _pipeline(["method=rlaif_dpo"], _task_cfg("Brevity", labeller="tuned_smollm2"))

    labels = dict(stage_list(cfg))["labels"]
    scfg = stage_config(cfg, labels, {"samples": REPO})
    task = build_task(cfg.task)
    with pytest.raises(ConfigError, match="brevity_unit") as e:
        check_bound_judges(scfg, task)
    assert "\n" not in str(e.value)
    toy = compose(["task=toy", "paths.output_dir=/tmp/x", "paths.cache_dir=/tmp/x"], "evaluate").task
    check_bound_judges(scfg, build_task(OmegaConf.to_container(toy, resolve=True)))  # a task it is made for


def test_the_judge_itself_refuses_another_task_and_takes_the_question():
    from alignlab.judges.local import LocalJudge
    from alignlab.tasks import build_task
    from alignlab.utils.config import ConfigError

    task = build_task(_task_cfg("Brevity"))
    bound = LocalJudge({"source": "tiny"}, mode="pointwise", bound_tasks=["other"])
    with pytest.raises(ConfigError, match="other"):
        bound.set_task(task)
    free = LocalJudge({"source": "tiny"}, mode="pointwise")
    free.set_task(task)
    assert free.template.question == task.question and free.template.rubric == task.rubric


def test_shipped_demo_data_is_refused_for_another_task(tmp_path, monkeypatch):
    from alignlab.resources import resource
    from alignlab.tasks import build_task
    from alignlab.tasks.base import check_shipped_data
    from alignlab.utils.config import ConfigError

    data = {"train_path": resource("pref_toy.jsonl")}
    lines = Path(data["train_path"]).read_text(encoding="utf-8").splitlines()
    prompts = [json.loads(line)["prompt"] for line in lines]
    with pytest.raises(ConfigError, match="brevity_unit"):
        check_shipped_data(data, build_task(_task_cfg("Brevity")), prompts)
    monkeypatch.setenv("ALIGNLAB_CACHE", str(tmp_path))
    toy = build_task(compose(["task=toy", f"paths.output_dir={tmp_path}"], "evaluate").task)
    check_shipped_data(data, toy, prompts)  # the demo data is the toy task's own


# -- judges read the task's framing, principles and tuning data ---------------------------------------------
def _judge(task: str | dict, overrides: list[str]):
    """The label app's judge for ``task`` (a conf/task name or a task config), given that task."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf, open_dict

    from alignlab.tasks import build_task

    cfg = compose([*overrides, "paths.output_dir=/tmp/x", "paths.cache_dir=/tmp/x"], "label")
    if isinstance(task, dict):
        with open_dict(cfg):
            cfg.task = OmegaConf.create(task)
    else:
        cfg = compose(
            [f"task={task}", *overrides, "paths.output_dir=/tmp/x", "paths.cache_dir=/tmp/x"], "label"
        )
    judge = instantiate(cfg.judge)
    judge.set_task(build_task(cfg.task))
    return judge


def test_the_pointwise_judge_asks_in_the_tasks_framing():
    from alignlab.judges.templates import POINTWISE_USER

    own = _judge("sentiment", ["judge=smollm2_135m_pointwise"]).template
    task = build_task_of("sentiment")
    assert (own.pointwise, own.question) == (task.pointwise, task.pointwise_question)
    assert own.pointwise_includes_prompt is False and own.question != task.question
    other = _judge(_task_cfg("Brevity"), ["judge=smollm2_135m_pointwise"]).template
    assert (other.pointwise, other.question) == (POINTWISE_USER, Brevity.question)
    assert other.pointwise_includes_prompt is True  # a task's own response is judged with its prompt


def test_the_task_constitution_holds_the_tasks_principles():
    c = _judge(
        "sentiment", ["judge=smollm2_135m", "+constitution@judge.template.constitution=task"]
    ).template.constitution
    assert c.principles and list(c.principles) == list(build_task_of("sentiment").principles)
    principles = ["Which response is shorter?", "Which response is closer to eight words?"]
    mine = _judge(
        _task_cfg("Brevity", principles=principles),
        ["judge=smollm2_135m", "+constitution@judge.template.constitution=task"],
    )
    assert list(mine.template.constitution.principles) == principles
    from hydra.errors import InstantiationException

    from alignlab.utils.app import user_error_of

    with pytest.raises(InstantiationException) as e:  # a task without principles: one line, the fix
        _judge(_task_cfg("Brevity"), ["judge=smollm2_135m", "+constitution@judge.template.constitution=task"])
    assert "principles setting" in str(user_error_of(e.value))


def test_the_tuned_judge_learns_what_the_task_hands_over():
    sentiment = _judge("sentiment", ["judge=tuned_smollm2"])
    toy = _judge("toy", ["judge=tuned_smollm2"])
    assert sentiment.spec.task == toy.spec.task == build_task_of("sentiment").judge_data
    assert sentiment.identity() == toy.identity()  # the toy task's judge is the bundled task's
    assert sentiment.spec.recipe().corpora == build_task_of("sentiment").judge_tuning_data().sources
    assert sentiment.template.question == build_task_of("sentiment").question


def test_a_task_without_tuning_data_is_refused_by_the_tuned_judge_in_one_line():
    from alignlab.judges.tuning import TunedJudgeSpec, TuningRecipe, judge_data
    from alignlab.utils.config import ConfigError

    with pytest.raises(ConfigError, match="brevity_unit") as e:
        _judge(_task_cfg("Brevity"), ["judge=tuned_smollm2"])
    assert "judge_data" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="brevity_unit.*judge_tuning_data") as e:
        judge_data(Brevity(), TuningRecipe())  # a task that names itself but has no data
    with pytest.raises(ConfigError, match="judge_data") as e:
        TunedJudgeSpec(tuning={}, task=None).identity()
    assert "\n" not in str(e.value)


def build_task_of(name: str):
    from alignlab.tasks import compose_task

    return compose_task(name, cache_dir="/tmp/x")

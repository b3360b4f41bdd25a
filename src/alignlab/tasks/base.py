"""The task interface, and the one way to build a task: from its ``conf/task/<name>.yaml`` config.

A task owns everything task-specific: its prompts per split, its gold (and second) scorer, what a judge
is asked about it (``rubric``, ``question``, a pointwise framing, ``principles``) and the data a judge is
tuned on for it (``judge_data``, ``judge_tuning_data``), how its prompts are fed (``use_chat_template``),
its prompt and completion lengths, its default RLAIF labeller and its tags. Configs read these values with
``${task_attr:KEY}`` (the YAML's value when it sets one, else the task object's attribute), so a profile,
an experiment, a method or a judge never holds a task's value. A new task is a ``Task`` subclass plus a
YAML whose ``_target_`` names it (docs/tasks.md); every app builds it with ``build_task(cfg.task)``, and
the same config gives the same object within a process.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alignlab.tasks.judge_data import JudgeData

_BUILT: dict[str, Task] = {}

# the settings every task has (class attributes below), settable from its YAML
SETTINGS = (
    "name",
    "rubric",
    "question",
    "use_chat_template",
    "max_prompt_tokens",
    "max_new_tokens",
    "labeller",
    "tags",
    "pointwise",
    "pointwise_question",
    "pointwise_includes_prompt",
    "principles",
    "judge_data",
)


class Task:
    """Prompts (train/val/test), a gold reward, and what judges are asked about them.

    A subclass must implement ``prompts(split)`` and ``gold_scores(prompts, completions)`` (the names in
    ``required``); everything else has a default. A task lacking a required method fails when it is
    built, with one line naming the class and the method.

    A task without a gold reward (real preference data: nothing scores a completion) sets
    ``has_gold = False`` and implements only ``prompts``. It is then evaluated by a judge's win rate
    against the base policy (``alignlab.evaluator``), and what needs gold (``judge=gold``, the simulated
    annotators; ``reward=gold``) is refused at start-up in one line naming the task.
    """

    required: tuple[str, ...] = ("prompts", "gold_scores")
    """The methods a subclass must implement (checked by ``build_task``)."""
    has_gold: bool = True
    """Whether ``gold_scores`` exists; False: no gold reward (then ``gold_scores`` is not required)."""
    splits: tuple[str, ...] = ("train", "val", "test")
    """The splits ``prompts`` accepts."""

    name: str = "task"
    """The task's name: run records, tags, the prompt-file cache."""
    rubric: str = "Which response follows the prompt better?"
    """The pairwise judge's criterion ("Which response ...?")."""
    question: str = "Does this response follow the prompt well?"
    """The pointwise judge's yes/no question about one response (direct RLAIF, pointwise labellers)."""
    use_chat_template: bool = False
    """Feed the prompts through the model's chat template (true) or as plain text to continue (false)."""
    max_prompt_tokens: int = 64
    """Longest prompt in tokens: sampling, labelling, training data and evaluation keep prompts this long."""
    max_new_tokens: int = 48
    """Completion length the task needs: sampling, RL rollouts and evaluation generate this many tokens
    (a profile's budget may cap it: conf/profile)."""
    labeller: str = "smollm2_135m"
    """The conf/judge option that labels this task's pairs in RLAIF methods (and scores for direct RLAIF)."""
    tags: tuple[str, ...] = ()
    """Extra run tags (the name is always one)."""
    pointwise: str = "Text: {text}\n\n{question} Answer yes or no."
    """How an untuned pointwise judge (conf/judge/smollm2_135m_pointwise) is shown one text: a user message
    with ``{text}`` and ``{question}``."""
    pointwise_question: str | None = None
    """The question in that message (None: ``question``)."""
    pointwise_includes_prompt: bool = True
    """Show the prompt before the response in that message (false: the response alone)."""
    principles: tuple[str, ...] = ()
    """Constitutional principles about the task's criterion (``constitution=task``); empty: none."""
    judge_data: str | None = None
    """The conf/task option (or task YAML path) whose ``judge_tuning_data`` a tuned judge learns from when
    it judges this task (conf/judge/tuned_smollm2); None: the task has none, and a tuned judge refuses it."""

    def __init__(self, **settings: Any):
        """
        Args:
            **settings: any of ``SETTINGS`` (name, rubric, question, use_chat_template, max_prompt_tokens,
                max_new_tokens, labeller, tags, pointwise, pointwise_question, pointwise_includes_prompt,
                principles, judge_data), overriding the class's values.
        """
        apply_settings(self, settings)

    # -- what a subclass implements -----------------------------------------------------------------------
    def prompts(self, split: str) -> list[str]:
        """The prompt strings of ``split`` (one of ``splits``), in a fixed order."""
        raise NotImplementedError

    def gold_scores(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """Ground-truth reward of each completion, shape (N,); higher is better."""
        raise NotImplementedError(f"task {self.name!r} has no gold reward (has_gold = {self.has_gold})")

    # -- defaults -----------------------------------------------------------------------------------------
    def second_scores(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray | None:
        """An independent second scorer, reported beside the gold one (None if the task has none)."""
        return None

    def prompt_file(self, split: str) -> str:
        """Path of a JSONL file of ``{"prompt": ...}`` rows for ``split``: by default ``prompts(split)``
        written once to the cache (``$ALIGNLAB_CACHE/tasks/<name>/``), named by a hash of its content."""
        if split not in self.splits:
            from alignlab.utils.config import ConfigError

            raise ConfigError(f"task {self.name!r} has splits {', '.join(self.splits)}; got split={split!r}")
        rows = [json.dumps({"prompt": p}, ensure_ascii=False) for p in self.prompts(split)]
        text = "".join(r + "\n" for r in rows)
        from alignlab.utils.hashing import text_hash

        digest = text_hash(text)
        path = cache_root() / "tasks" / self.name / f"{split}-{digest}.jsonl"
        if not path.exists():
            from alignlab.utils.io import write_text

            write_text(path, text)
        return str(path)

    def judge_tuning_data(self, sources: Sequence[str] | None = None) -> JudgeData | None:
        """Human judgements of single texts a judge can be tuned on (``alignlab.judges.tuning``), drawn from
        ``sources`` (None: every source the task offers); None: the task has none (the default)."""
        return None

    def settings(self) -> dict[str, Any]:
        """The task's settings (``SETTINGS``) as plain values."""
        return {k: plain(getattr(self, k)) for k in SETTINGS}


def cache_root() -> Path:
    """``$ALIGNLAB_CACHE`` or ``~/.cache/alignlab`` (the same rule as ``paths.cache_dir``)."""
    from alignlab.utils.paths import cache_dir as _cache_dir

    return Path(_cache_dir())


def plain(value: Any) -> Any:
    """A setting as a config-friendly value (tuples and list nodes become lists)."""
    from omegaconf import ListConfig, OmegaConf

    if isinstance(value, ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return list(value) if isinstance(value, (tuple, list)) else value


def apply_settings(task: Any, settings: dict[str, Any]) -> None:
    """Set ``SETTINGS`` values on ``task`` (None keeps the class's value); an unknown key is an error."""
    for key, value in settings.items():
        if key not in SETTINGS:
            raise TypeError(f"{type(task).__name__}() got an unexpected keyword argument {key!r}")
        if value is not None:
            setattr(task, key, tuple(value) if key == "tags" else value)


def check_task(task: Any) -> None:
    """One line naming the class and the method when a task lacks one its class requires."""
    from alignlab.utils.config import ConfigError

    cls = type(task)
    where = f"{cls.__module__}.{cls.__qualname__}"
    for method in getattr(task, "required", Task.required):
        if method == "gold_scores" and not getattr(task, "has_gold", True):
            continue  # a task without a gold reward (docs/tasks.md)
        impl = getattr(cls, method, None)
        if impl is None or impl is getattr(Task, method, None):
            sig = {
                "prompts": "prompts(self, split)",
                "gold_scores": "gold_scores(self, prompts, completions)",
            }
            raise ConfigError(
                f"task {where} does not implement {sig.get(method, method)}; add it to the class "
                "(docs/tasks.md lists what a task implements)"
            )


def _accepts(cls: type, key: str) -> bool:
    """Whether ``cls(...)`` names ``key`` as a parameter (a setting it does not name is set afterwards)."""
    try:
        return key in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def _target_class(target: str) -> type:
    """The class a task's ``_target_`` names; a missing module or class is one line, with the fix."""
    import importlib

    from alignlab.utils.config import ConfigError

    module, _, attr = str(target).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(
            f"task._target_={target} cannot be imported ({type(e).__name__}: {e}); put the directory of "
            "its module on PYTHONPATH (docs/tasks.md)"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigError(f"task._target_={target} is not a subclass of alignlab.tasks.Task (docs/tasks.md)")
    return cls


def build_task(cfg: Any) -> Task:
    """The task of a ``conf/task`` config (``{_target_: ..., **kwargs}``); a ``Task`` passes through.

    Built once per distinct config in a process, so every component of a run shares one object. The
    ``SETTINGS`` keys go to the constructor when it takes them, else they are set on the object.
    """
    if isinstance(cfg, Task):
        return cfg
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, dict) or "_target_" not in cfg:
        from alignlab.utils.config import ConfigError

        raise ConfigError(
            f"a task must be a conf/task config with a _target_ (got {cfg!r}); choose one with task=<name> "
            "(conf/task, or your own: docs/tasks.md)"
        )
    key = json.dumps(cfg, sort_keys=True, default=str)
    if key not in _BUILT:
        from hydra.utils import instantiate

        cfg = dict(cfg)
        cls = _target_class(cfg["_target_"])
        late = {k: cfg.pop(k) for k in SETTINGS if k in cfg and not _accepts(cls, k)}
        try:
            task = instantiate(cfg)
        except Exception as e:  # a key the class does not take: one line naming it
            cause = e.__cause__ or e
            if not isinstance(cause, TypeError):
                raise
            from alignlab.utils.config import ConfigError

            raise ConfigError(
                f"task._target_={cfg['_target_']}: {cause}; check the task's YAML keys"
            ) from None
        apply_settings(task, late)
        check_task(task)
        _BUILT[key] = task
    return _BUILT[key]


def task_setting(task_cfg: Any, key: str) -> Any:
    """A task setting for a config (``${task_attr:KEY}``): the task config's own value when it sets the
    key, else the built task's attribute, else (no task, or one that cannot be built yet: the app reports
    why when it builds it) the ``Task`` class's value."""
    from omegaconf import DictConfig

    if key not in SETTINGS:
        raise KeyError(f"task_attr:{key}: a task setting is one of {', '.join(SETTINGS)}")
    if isinstance(task_cfg, DictConfig) and task_cfg.get(key) is not None:
        return plain(task_cfg[key])
    if task_cfg:
        from alignlab.utils.errors import UserError

        try:
            return plain(getattr(build_task(task_cfg), key))
        except UserError:
            pass
    return plain(getattr(Task, key))


def task_tags(*tags: str, task_cfg: Any = None) -> list[str]:
    """``tags`` followed by the task's name and its own tags (``${task_tags:dpo,smollm2}``)."""
    if not task_cfg:
        return list(tags)
    own = [task_setting(task_cfg, "name"), *task_setting(task_cfg, "tags")]
    return [*tags, *[t for t in own if t not in tags]]


def compose_task(name: str, **overrides: Any) -> Task:
    """Build ``conf/task/<name>.yaml`` (or the task YAML at path ``name``) outside a Hydra app (CLIs,
    notebooks), with key overrides."""
    from omegaconf import OmegaConf

    from alignlab.utils.config import ConfigError
    from alignlab.utils.paths import CONF_DIR

    path = Path(name) if name.endswith((".yaml", ".yml")) else Path(f"{CONF_DIR}/task/{name}.yaml")
    if not path.is_file():
        raise ConfigError(
            f"no task config {path}; give a conf/task option or the path of your task's YAML (docs/tasks.md)"
        )
    cfg = OmegaConf.load(path)
    for k, v in overrides.items():
        if v is not None and k in cfg:
            cfg[k] = v
    if "cache_dir" in cfg and OmegaConf.is_interpolation(cfg, "cache_dir"):
        cfg.cache_dir = None  # ${paths.cache_dir} has no `paths` here: the task's default cache
    return build_task(cfg)


TASK_URL = "task://"


def resolve_task_paths(data_cfg: Any, task: Task | None) -> None:
    """Replace every ``task://SPLIT`` value of a data config by the task's prompt file of that split."""
    from omegaconf import open_dict

    from alignlab.utils.config import ConfigError

    for key in list(data_cfg.keys()):
        value = data_cfg.get(key)
        if not (isinstance(value, str) and value.startswith(TASK_URL)):
            continue
        split = value[len(TASK_URL) :]
        if task is None:
            raise ConfigError(
                f"data.{key}={value} reads the run's task, but no task is set; add task=<name> "
                "(conf/task, or your own: docs/tasks.md)"
            )
        if "@" in split or "/" in split or not split:
            raise ConfigError(f"data.{key}={value}: expected task://SPLIT (train, val or test)")
        with open_dict(data_cfg):
            data_cfg[key] = task.prompt_file(split)


def check_shipped_data(data_cfg: Any, task: Task | None, prompts: Sequence[str]) -> None:
    """Refuse training a task on the package's shipped demo data when those rows are not its prompts
    (``train experiment=dpo_tiny task=X`` would otherwise train on the demo task's pairs and exit 0)."""
    if task is None:
        return
    from alignlab.resources import RESOURCES
    from alignlab.utils.config import ConfigError

    path = str(data_cfg.get("train_path") or "")
    if not path or Path(path).resolve().parent != RESOURCES:
        return
    own = {p for split in task.splits for p in task.prompts(split)}
    foreign = [p for p in prompts if p not in own]
    if foreign:
        raise ConfigError(
            f"data.train_path={Path(path).name} is the package's demo data, and {len(foreign)} of its "
            f"{len(prompts)} prompts (e.g. {foreign[0]!r}) are not task {task.name!r}'s; train on the task's "
            f"pairs (python -m alignlab.label task={task.name} ...; data.train_path=<run>/pairs.jsonl) or "
            "drop task="
        )

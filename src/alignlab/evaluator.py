"""What produces a run's headline number, and the start-up checks around it.

A task with a gold reward (``Task.has_gold``) is scored by its gold scorer. A task without one (real
preference data: nothing scores a completion) is evaluated by a judge's win rate against the base policy
on the same held-out prompts (``alignlab.win_rate.paired_win_rate``: both orders, a tie counts 0.5, a
Student-t CI over prompts); the evaluation record's ``evaluator`` names which (``gold scorer`` or
``judge <identity>``). Here:

* ``evaluator_option``: the pipeline's evaluator judge (``eval_judge``, else the profile's
  ``win_rate_judge``; a task without gold whose profile names none or ``gold`` gets the task's labeller);
* ``refuse_gold``: what needs a gold reward the task lacks (``judge=gold``, ``reward=gold``, best-of-n's
  gold oracle) is refused in one line naming the task and the fix, before anything loads; the gold
  reward logged on validation only (``val_rewards``) is dropped instead;
* ``same_judge_warning``: the evaluator judge is the judge whose labels or rewards trained the policy
  (same ``identity()``), so the policy was trained to please the judge that grades it: warned once (not
  for the simulated annotators, whose gold is the target itself).
"""

from __future__ import annotations

from typing import Any

from alignlab.utils.config import config_children
from alignlab.utils.runtime import get_logger

log = get_logger(__name__)

GOLD_TARGETS = {
    "alignlab.judges.gold.GoldJudge": (
        "the simulated annotators (judge=gold) need one",
        "label with a judge: an rlaif_* method or method.labeller=<conf/judge option> in the pipeline, "
        "judge=<conf/judge option> in an app",
    ),
    "alignlab.rewards.gold.GoldReward": (
        "the gold reward (reward=gold) needs one",
        "train against a reward model or a judge: an rlaif_* or direct_rlaif* method in the pipeline, "
        "reward@algo.reward=reward_model or judge_yes in the train app",
    ),
}
GOLD_APPS = {
    "best_of_n": ("best-of-n (its oracle ranks by gold) needs one", "leave the best_of_n methods out")
}


def has_gold(task: Any) -> bool:
    """Whether ``task`` has a gold reward (``Task.has_gold``; objects without the attribute: yes)."""
    return bool(getattr(task, "has_gold", True))


def no_gold_error(task: Any, what: str, fix: str, where: str = ""):
    """The one line for a component that needs the gold reward ``task`` lacks."""
    from alignlab.utils.config import ConfigError

    at = f" ({where})" if where else ""
    return ConfigError(
        f"task {getattr(task, 'name', task)!r} has no gold reward (has_gold = False), and {what}{at}; "
        f"{fix} (docs/tasks.md)"
    )


def refuse_gold(node: Any, task: Any, where: str = "", app: str | None = None) -> None:
    """For a task without a gold reward: drop the gold reward logged on validation (``val_rewards``
    entries) from ``node`` (an app's or a stage's config, in place) and refuse any other component that
    needs gold, or the app ``app`` when it does (``GOLD_APPS``). A task with gold: nothing."""
    from omegaconf import DictConfig, ListConfig, open_dict

    if task is None or has_gold(task):
        return
    if app in GOLD_APPS:
        raise no_gold_error(task, *GOLD_APPS[app], where)
    if isinstance(node, DictConfig):
        target = node.get("_target_") if "_target_" in node else None
        if target in GOLD_TARGETS:
            raise no_gold_error(task, *GOLD_TARGETS[target], where)
        rewards = node.get("val_rewards") if "val_rewards" in node else None
        if isinstance(rewards, DictConfig):
            with open_dict(rewards):
                for name in [k for k in rewards if (rewards[k] or {}).get("_target_") in GOLD_TARGETS]:
                    rewards.pop(name)  # a monitor of gold, not the training signal: nothing to log
    elif not isinstance(node, ListConfig):
        return
    for child in config_children(node):
        refuse_gold(child, task, where)


def evaluator_of(task: Any, judge: Any = None) -> str | None:
    """What produces the headline number of an evaluation of ``task``: ``gold scorer``, ``judge
    <identity>`` (a task without gold, with a judge bound to it) or None (neither)."""
    if has_gold(task):
        return "gold scorer"
    if judge is None:
        return None
    model = getattr(getattr(judge, "spec", None), "source", None)  # a judge LM: its model, for a reader
    return f"judge {judge.identity()}" + (f" (model {model})" if model else "")


def headline(ev: dict) -> tuple[str, float | None]:
    """(name, value) of an evaluation record's headline: the gold reward, else the judge's win rate."""
    if ev.get("gold_reward") is not None:
        return "gold reward", float(ev["gold_reward"])
    value = ev.get("win_rate")
    return "judge win rate vs base", None if value is None else float(value)


def headline_text(ev: dict, base: dict) -> str:
    """The pipeline's last line: the headline against the base policy's, and the KL."""
    name, value = headline(ev)
    kl = f"KL {ev.get('kl') or 0:.3f}"
    if name == "gold reward":
        return f"gold reward {value:+.3f} (base {base.get('gold_reward') or 0:+.3f}), {kl}"
    if value is None:
        return f"no gold reward and no judge win rate (set eval_judge=<conf/judge option>), {kl}"
    ci = f"[{ev.get('win_rate_ci_low', 0):.3f}, {ev.get('win_rate_ci_high', 1):.3f}]"
    return f"judge win rate vs base {value:.3f} {ci} by {ev.get('evaluator')}, {kl}"


def evaluator_option(cfg: Any) -> str | None:
    """The conf/judge option of the pipeline's ``eval`` stage: ``eval_judge``, else the profile's
    ``win_rate_judge``; for a task without gold whose profile names none or ``gold``, the task's labeller."""
    if cfg.get("eval_judge"):
        return str(cfg.eval_judge)
    judge = cfg.profile.get("win_rate_judge")
    if judge in (None, "", "gold"):
        from alignlab.tasks import build_task

        task = build_task(cfg.task)
        if not has_gold(task):
            log.info("task %s has no gold reward: its evaluator is the judge %s", task.name, task.labeller)
            return task.labeller
    return judge


def _judge_nodes(node: Any, path: str = ""):
    """(path, config) of every judge config in ``node``: a key ``judge`` whose value has a ``_target_``."""
    from omegaconf import DictConfig, OmegaConf

    if not isinstance(node, DictConfig):
        return
    for key in node:
        if OmegaConf.is_missing(node, key) or key == "task":
            continue
        child = node[key]
        if key == "judge" and isinstance(child, DictConfig) and "_target_" in child:
            yield f"{path}{key}", child
        elif isinstance(child, DictConfig):
            yield from _judge_nodes(child, f"{path}{key}.")


def _identity(node: Any, task: Any) -> str | None:
    """The ``identity()`` of the judge a config makes, bound to ``task``; None when it cannot be made
    now (the stage that uses it reports why)."""
    from hydra.utils import instantiate

    from alignlab.judges.base import bind_task

    try:
        judge = instantiate(node)
        bind_task(judge, task)
        return str(judge.identity())
    except Exception as e:  # a judge that needs an earlier stage's output
        log.debug("judge identity unknown before the stage runs: %s", e)
        return None


def same_judge_warning(configs: dict, apps: dict, task: Any) -> str | None:
    """When the ``eval`` stage's judge has the identity of a judge that trained the policy (a labelling
    stage's judge, an online judge, a judge reward), log one warning and return its text."""
    ev = configs.get("eval")
    node = ev.get("judge") if ev is not None and "judge" in ev else None
    if not node or node.get("_target_") in GOLD_TARGETS:  # no judge, or the gold oracle: nothing to please
        return None
    evaluator = _identity(node, task)
    if evaluator is None:
        return None
    for name, scfg in configs.items():
        if apps.get(name) in ("evaluate", "best_of_n"):
            continue
        for path, judge in _judge_nodes(scfg):
            if _identity(judge, task) == evaluator:
                text = (
                    f"the evaluator judge ({evaluator}) is the judge that trained this policy (stage "
                    f"{name!r}, {path}): the policy was trained to please the judge that grades it, so its "
                    "win rate overstates what another judge would say; set eval_judge=<another conf/judge "
                    "option> for an independent evaluator"
                )
                log.warning(text)
                return text
    return None


def check_evaluator(configs: dict, apps: dict, task: Any) -> str | None:
    """The pipeline's start-up check of its stage configs: ``refuse_gold`` for each stage, then
    ``same_judge_warning`` (returned, for the record and the report)."""
    for name, scfg in configs.items():
        refuse_gold(scfg, task, f"stage {name!r}", apps.get(name))
    return same_judge_warning(configs, apps, task)

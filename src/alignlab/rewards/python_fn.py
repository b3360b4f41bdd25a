"""A plain Python function as the reward (verifiable rewards, RLVR): ``reward=python
reward.fn=mypkg.checks:score`` calls ``score(prompts, completions) -> list[float]``, so a user's checker
(an exact-match answer, a unit test, a regex) needs no class.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

import torch

from alignlab.rewards.base import RewardFunction, check_finite
from alignlab.utils.config import ConfigError


def resolve_function(spec: str, key: str = "reward.fn") -> Callable:
    """``module:function`` (or ``module.function``) -> the callable, or a ``ConfigError`` naming ``key``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"{key} is empty: give module:function, e.g. {key}=mypkg.checks:score")
    module_name, sep, attr = spec.partition(":")
    if not sep:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"{key}={spec!r} is not module:function: write it as e.g. {key}=mypkg.checks:score")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ModuleNotFoundError, or the user's module failing as it imports
        raise ConfigError(
            f"{key}={spec!r}: cannot import module {module_name!r} ({type(e).__name__}: {e}); "
            "check the name and that it is on PYTHONPATH (or installed)"
        ) from e
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        what = "is not callable" if fn is not None else "has no such attribute"
        raise ConfigError(f"{key}={spec!r}: module {module_name!r} {what} {attr!r}; name a function in it")
    return fn


class PythonFunctionReward(RewardFunction):
    """Scores completions with ``fn(prompts, completions) -> list[float]``, one finite number each."""

    def __init__(self, fn: str = "", name: str | None = None):
        """
        Args:
            fn: the function as ``module:function``; it is imported when the reward is built.
            name: how the reward is named in logs (default: ``python[<fn>]``).
        """
        self.spec = fn
        self.fn = resolve_function(fn)
        self.name = name or f"python[{fn}]"

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        out = self.fn(list(prompts), list(completions))
        try:
            values = [float(v) for v in out]
        except (TypeError, ValueError) as e:
            raise ConfigError(
                f"reward.fn={self.spec!r} must return a list of numbers, one per completion; "
                f"it returned {type(out).__name__} ({e})"
            ) from e
        if len(values) != len(completions):
            raise ConfigError(
                f"reward.fn={self.spec!r} returned {len(values)} scores for {len(completions)} completions; "
                "return one number per completion"
            )
        return check_finite(torch.tensor(values, dtype=torch.float32), self.name, completions)


def check_python_rewards(node, prefix: str = "algo.") -> None:
    """Import every ``PythonFunctionReward``'s function named anywhere in a config tree (``cfg.algo``),
    so a wrong ``reward.fn`` fails at start-up, before a model loads."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, DictConfig):
        target = f"{PythonFunctionReward.__module__}.{PythonFunctionReward.__name__}"
        if node.get("_target_") == target:
            if OmegaConf.is_missing(node, "fn"):
                raise ConfigError(
                    f"{prefix}fn is not set: name the reward function, e.g. {prefix}fn=mypkg.checks:score"
                )
            resolve_function(node.fn, f"{prefix}fn")
            return
        children = [(node[k], f"{prefix}{k}.") for k in node if not OmegaConf.is_missing(node, k)]
    elif isinstance(node, ListConfig):
        children = [(v, f"{prefix}{i}.") for i, v in enumerate(node)]
    else:
        return
    for child, path in children:
        check_python_rewards(child, path)

"""Hydra glue: where conf/ lives, custom resolvers, instantiating lists of callbacks and loggers, and
checking config values against the typed signatures of their ``_target_``."""

from __future__ import annotations

from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

from hydra.utils import instantiate
from omegaconf import BooleanNode, DictConfig, FloatNode, IntegerNode, OmegaConf, StringNode, ValueNode

from alignlab.utils.paths import CONF_DIR, CONF_PACKAGE, CONF_PATH, _conf_dir  # noqa: F401 (importable here)
from alignlab.utils.paths import cache_dir as _cache_dir

_NODES = {int: IntegerNode, float: FloatNode, bool: BooleanNode, str: StringNode}
_ARTICLE = {int: "an", float: "a", bool: "a", str: "a"}


def _resource(name: str) -> str:
    from alignlab.resources import resource

    return resource(name)


def _cpu_precision() -> str:
    from alignlab.utils.precision import cpu_precision

    return cpu_precision()


def _task_attr(key: str, *, _root_: Any) -> Any:
    from alignlab.tasks.base import task_setting

    return task_setting(_root_.get("task"), key)


def _task_tags(*tags: str, _root_: Any) -> list[str]:
    from alignlab.tasks.base import task_tags

    return task_tags(*tags, task_cfg=_root_.get("task"))


def register_resolvers() -> None:
    # ${task_attr:max_new_tokens}: the run's task's setting (alignlab.tasks.base.SETTINGS);
    # ${task_tags:dpo,lora}: these tags and the task's; ${min:a,b}: a budget's cap on a task's length;
    # ${add:a,b}: a sequence length from a prompt and a completion length
    for name, fn in (
        ("resource", _resource),
        ("alignlab_cache", _cache_dir),
        ("cpu_precision", _cpu_precision),
        ("task_attr", _task_attr),
        ("task_tags", _task_tags),
        ("min", min),
        ("add", lambda *xs: sum(xs)),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()


def instantiate_dict(cfg: DictConfig | None) -> list:
    """Instantiate every entry of a ``name: {_target_: ...}`` mapping (callbacks, loggers)."""
    if not cfg:
        return []
    return [instantiate(v) for v in cfg.values() if isinstance(v, DictConfig) and "_target_" in v]


# -- typed config: values checked against the typed signatures of their _target_ --------------------
def _scalar_type(annotation: Any) -> tuple[type | None, bool]:
    """(int|float|bool|str or None, whether None is allowed) for an annotation; (None, _) = unchecked."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (Union, UnionType) and len(args) == 1:
        return (args[0] if args[0] in _NODES else None), True
    return (annotation if annotation in _NODES else None), False


def _hints(target: Any) -> dict[str, Any]:
    """Annotated parameters of a function or a class's ``__init__``, with those of its base classes'
    (a subclass passes ``**kwargs`` on); the subclass wins."""
    fns = [c.__init__ for c in reversed(target.__mro__)] if isinstance(target, type) else [target]
    hints: dict[str, Any] = {}
    for fn in fns:
        try:
            hints.update(get_type_hints(fn))
        except Exception:  # unresolvable annotations (third-party code): nothing to check there
            continue
    hints.pop("return", None)
    return hints


def type_errors(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Every value of a node with a ``_target_`` (model, peft, algo, data, their nested specs) that its
    target's typed signature or dataclass fields cannot take, as ``key=value: expected type`` lines.
    Interpolations are resolved first; keys the target does not annotate are not checked."""
    from hydra.utils import get_object
    from omegaconf.errors import ValidationError

    errors: list[str] = []
    target_name = cfg.get("_target_") if isinstance(cfg, DictConfig) else None
    hints: dict[str, Any] = {}
    if isinstance(target_name, str):
        try:
            hints = _hints(get_object(target_name))
        except Exception:  # an unimportable target fails with its own error at instantiation
            hints = {}
    for key in cfg:
        key = str(key)
        if key.startswith("_"):
            continue
        node = cfg._get_node(key)
        full = f"{prefix}{key}"
        if isinstance(node, DictConfig):
            errors += type_errors(node, full + ".")
            continue
        if key not in hints or OmegaConf.is_missing(cfg, key) or not isinstance(node, ValueNode):
            continue
        kind, optional = _scalar_type(hints[key])
        try:
            value = cfg[key]
        except Exception:  # an interpolation that cannot resolve here (``${hydra:...}``)
            continue
        if kind is None or (value is None and optional):
            continue
        try:
            _NODES[kind](value=value, is_optional=False)
        except ValidationError:
            owner = target_name.rsplit(".", 1)[-1]
            errors.append(f"{full}={value!r} is not {_ARTICLE[kind]} {kind.__name__} ({owner}.{key})")
    return errors


def check_types(cfg: DictConfig) -> None:
    """Raise a ``ConfigError`` naming every mistyped key (``algo.beta=abc``) before anything loads."""
    errors = type_errors(cfg)
    if errors:
        from alignlab.utils.errors import ConfigError

        raise ConfigError(f"{'; '.join(errors)}: fix the value on the command line or in the config")

"""Hydra glue: where conf/ lives, custom resolvers, instantiating lists of callbacks and loggers."""

from __future__ import annotations

import os
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

# conf/ sits at the repository root (alignlab is run from a clone, installed editable).
CONF_DIR = str(Path(os.environ.get("ALIGNLAB_CONF", Path(__file__).resolve().parents[3] / "conf")))


def _resource(name: str) -> str:
    from alignlab.resources import resource

    return resource(name)


def _cache_dir() -> str:
    from alignlab.models.bundled import default_cache_dir

    return str(default_cache_dir())


def register_resolvers() -> None:
    for name, fn in (("resource", _resource), ("alignlab_cache", _cache_dir)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()


def instantiate_dict(cfg: DictConfig | None) -> list:
    """Instantiate every entry of a ``name: {_target_: ...}`` mapping (callbacks, loggers)."""
    if not cfg:
        return []
    return [instantiate(v) for v in cfg.values() if isinstance(v, DictConfig) and "_target_" in v]

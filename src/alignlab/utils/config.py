"""Config helpers: secret redaction, saving the resolved config, start-up checks."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from alignlab.utils.errors import ConfigError, UserError  # noqa: F401 (ConfigError importable here)
from alignlab.utils.io import write_text

REDACTED = "***REDACTED***"
# Keys whose values are secrets. Keys that only *name* an environment variable (``api_key_env``)
# are not secret and are kept.
_SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|passwd|authorization)$", re.I)
_SECRET_ENV = re.compile(r"(API_KEY|TOKEN|SECRET|PASSWORD)", re.I)


def secret_values() -> list[str]:
    """Values of environment variables that look like secrets (longer than 3 characters)."""
    return [v for k, v in os.environ.items() if _SECRET_ENV.search(k) and len(v) > 3]


def redact(obj: Any, secrets: list[str] | None = None) -> Any:
    """Return a copy of a plain container with secret-looking keys and known secret values masked."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if isinstance(k, str) and _SECRET_KEY.search(k) and v not in (None, "", "???"):
                out[k] = REDACTED
            else:
                out[k] = redact(v, secrets)
        return out
    if isinstance(obj, list):
        return [redact(v, secrets) for v in obj]
    if isinstance(obj, str):
        for s in secrets:
            if s in obj:
                obj = obj.replace(s, REDACTED)
        return obj
    return obj


def to_container(cfg: DictConfig, resolve: bool = True) -> dict:
    return OmegaConf.to_container(cfg, resolve=resolve, throw_on_missing=False)  # type: ignore[return-value]


def save_resolved_config(cfg: DictConfig, output_dir: str | os.PathLike) -> Path:
    """Write the resolved, redacted config to ``output_dir/config_resolved.yaml``."""
    data = redact(to_container(cfg))
    path = Path(output_dir) / "config_resolved.yaml"
    write_text(path, OmegaConf.to_yaml(OmegaConf.create(data)))
    return path


def flatten(d: dict, prefix: str = "") -> dict:
    """{algo: {beta: 0.3}} -> {"algo.beta": 0.3}"""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_children(node: Any) -> list:
    """The nodes under a config node, for walks over a whole config: a dict's values that are set (the
    ``task`` node skipped: walks look at what configures *for* a task), a list's items, else nothing."""
    if isinstance(node, DictConfig):
        return [node[k] for k in node if not OmegaConf.is_missing(node, k) and k != "task"]
    if isinstance(node, ListConfig):
        return list(node)
    return []

"""Where alignlab's configs and caches live: a leaf module (no alignlab imports), so that any module,
the task base class included, can ask without importing Hydra glue."""

from __future__ import annotations

import os
from pathlib import Path

CONF_PACKAGE = "alignlab.conf"  # the configs inside an installed alignlab (setup.py maps conf/ to it)


def _repo_conf() -> Path | None:
    """conf/ of the source tree this module runs from (a clone, editable install), else None."""
    root = Path(__file__).resolve().parents[3]
    conf = root / "conf"
    return conf if (root / "pyproject.toml").is_file() and (conf / "train.yaml").is_file() else None


def _conf_dir() -> tuple[str, str]:
    """(directory, Hydra config path) of the configs: ``ALIGNLAB_CONF`` when set, else the clone's conf/
    in a source tree or editable install, else the copy installed inside the package (``pkg://``)."""
    if os.environ.get("ALIGNLAB_CONF"):
        path = str(Path(os.environ["ALIGNLAB_CONF"]).resolve())
        return path, path
    repo = _repo_conf()
    if repo is not None:
        return str(repo), str(repo)
    packaged = Path(__file__).resolve().parents[1] / "conf"
    return str(packaged), f"pkg://{CONF_PACKAGE}"


# CONF_DIR: a directory (initialize_config_dir, OmegaConf.load). CONF_PATH: for hydra.main's
# config_path, ``pkg://alignlab.conf`` when alignlab runs from an installed wheel.
CONF_DIR, CONF_PATH = _conf_dir()


def cache_dir() -> str:
    """``$ALIGNLAB_CACHE`` or ``~/.cache/alignlab``."""
    # alignlab.models.bundled.default_cache_dir (tests/test_user_errors.py checks they agree), without
    # importing torch: resolving a path stays cheap, so a bad setting fails in seconds
    return str(Path(os.environ.get("ALIGNLAB_CACHE", Path.home() / ".cache" / "alignlab")).expanduser())

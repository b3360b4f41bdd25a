"""Loggers: wandb (offline unless the user is logged in; never blocks on the network), CSV, none."""

from __future__ import annotations

import netrc
import os
from pathlib import Path


def wandb_logged_in() -> bool:
    """True when an API key is available from the environment or ~/.netrc (no network call)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        rc = netrc.netrc(os.environ.get("NETRC", Path.home() / ".netrc"))
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("//")[-1].split("/")[0]
    return rc.authenticators(host) is not None


def resolve_wandb_mode(mode: str | None) -> str:
    """``auto`` -> ``online`` if logged in else ``offline``; ``WANDB_MODE`` in the environment wins."""
    env = os.environ.get("WANDB_MODE")
    if env:
        return env
    if mode in (None, "auto"):
        return "online" if wandb_logged_in() else "offline"
    return mode


def make_wandb_logger(
    project: str = "alignlab",
    save_dir: str = ".",
    name: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    mode: str = "auto",
    entity: str | None = None,
    log_model: bool = False,
    job_type: str | None = None,
):
    """A Lightning ``WandbLogger``; the run directory lands in ``save_dir/wandb``."""
    from lightning.pytorch.loggers import WandbLogger

    resolved = resolve_wandb_mode(mode)
    os.environ["WANDB_MODE"] = resolved
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=project,
        save_dir=save_dir,
        name=name,
        group=group,
        tags=list(tags or []),
        mode=resolved,
        entity=entity,
        log_model=log_model,
        job_type=job_type,
        settings=__import__("wandb").Settings(silent=True, console="off", x_disable_stats=True),
    )

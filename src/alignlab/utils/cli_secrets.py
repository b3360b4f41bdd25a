"""Secrets on the command line are refused before Hydra writes anything.

Hydra copies every override into ``.hydra/config.yaml``, ``.hydra/hydra.yaml`` and ``.hydra/overrides.yaml``,
and wandb records the command line; redacting all of those after the fact cannot be complete. So an
override whose key looks like a secret (``+judge.api_key=sk-...``, ``token=``, ``password=``, ...) stops the
app at once with one line naming the environment variable to use instead. Keys that only *name* a
variable (``judge.api_key_env=MY_KEY``) are fine, and so are tokenizer settings such as ``pad_token``.
"""

from __future__ import annotations

import re

from alignlab.utils.config import _SECRET_ENV, _SECRET_KEY
from alignlab.utils.errors import UserError

# tokenizer settings that end in "token" but hold no secret
_NOT_SECRET = re.compile(r"(pad|eos|bos|unk|sep|cls|mask|stop|start|end|special)_?token$", re.I)
_ENV_SET = "hydra.job.env_set."


def _key_and_value(arg: str) -> tuple[str, str] | None:
    """The key and value of a ``key=value`` override (``+``/``++``/``~`` prefixes dropped); None for flags
    and arguments without ``=``."""
    if arg.startswith("-") or "=" not in arg:
        return None
    key, value = arg.split("=", 1)
    return key.lstrip("+~").strip(), value.strip().strip("'\"")


def secret_key(key: str) -> bool:
    """True when the override ``key`` (dotted) names a secret value."""
    if key.startswith(_ENV_SET):
        return bool(_SECRET_ENV.search(key[len(_ENV_SET) :]))
    name = key.rsplit(".", 1)[-1]
    return bool(_SECRET_KEY.search(name)) and not _NOT_SECRET.search(name)


def hint(key: str) -> str:
    """Where this secret goes instead."""
    if key.startswith(_ENV_SET):
        return f"export {key[len(_ENV_SET) :]}=<secret> in the shell that starts the run instead"
    path = key.rsplit(".", 1)[0] if "." in key else ""
    if "judge" in path and "api" in key.lower():
        return (
            f"export OPENAI_API_KEY=<key> (or any name, given as {path}.api_key_env=<NAME>); "
            "the judge reads its key from that environment variable"
        )
    return (
        "put it in an environment variable (WANDB_API_KEY for wandb, HF_TOKEN for the Hugging Face hub, "
        "OPENAI_API_KEY for a judge server) and pass only its name"
    )


def check_argv(argv: list[str]) -> None:
    """Raise ``UserError`` for the first secret-looking override in ``argv`` (the program name excluded)."""
    for arg in argv:
        kv = _key_and_value(arg)
        if kv is None:
            continue
        key, value = kv
        if value in ("", "null", "None", "???") or not secret_key(key):
            continue
        raise UserError(
            f"{key}=... on the command line would be written in plain text to .hydra/ and recorded by "
            f"wandb; secrets come from the environment only: {hint(key)}"
        )

"""Published results: each finished pipeline run's small result file, kept where a rerun finds it.

With ``publish.dir`` set (e.g. ``docs/results/standard/runs``), a pipeline job writes its result record
there as ``<method>-s<seed>[-<variant>].json`` when it finishes, and optionally commits that one file to
git (``publish.git_commit=true``), so a run that a reclaimed machine loses half way keeps every finished
job. A rerun of the same command first looks there: a job whose record exists for the same configuration
(``config_key``) is skipped and its record returned, so only the missing jobs run. ``alignlab.compare``
reads these files as it reads ``result.json``.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from alignlab.utils.config import flatten  # the sweep point's keys, as the pipeline flattens them
from alignlab.utils.hashing import stable_hash
from alignlab.utils.io import write_json
from alignlab.utils.precision import cpu_precision
from alignlab.utils.runtime import get_logger

log = get_logger(__name__)
# what a published record keeps: everything compare reads (curves carry their points), not the stage list
_DROP = ("stages",)


def config_key(cfg: DictConfig) -> str:
    """What makes two pipeline jobs the same job: method, seed, variant, profile, model, task, evaluation."""
    keep = {}
    for k in ("method", "seed", "variant", "profile", "model", "task", "evaluation"):
        v = cfg.get(k)
        keep[k] = OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
    for k in ("model", "task"):  # where the caches are is not what was run
        keep[k] = {key: v for key, v in (keep[k] or {}).items() if key != "cache_dir"}
    # what trainer=cpu trains in here (bf16-mixed or 32-true, by the CPU or $ALIGNLAB_CPU_PRECISION): a job
    # run in another precision is another job, so a machine without native bf16 never skips a bf16 result
    keep["cpu_precision"] = cpu_precision()
    return stable_hash(keep)


def result_path(cfg: DictConfig) -> Path:

    variant = {
        k: v for k, v in flatten(OmegaConf.to_container(cfg.variant, resolve=True)).items() if v is not None
    }
    tail = "".join(f"-{k.split('.')[-1]}{v}" for k, v in sorted(variant.items()))
    return Path(str(cfg.publish.dir)) / f"{cfg.method.name}-s{cfg.seed}{tail}.json"


def published(cfg: DictConfig) -> dict | None:
    """The published record of this job, when one exists for the same configuration."""
    if not cfg.get("publish") or not cfg.publish.get("dir"):
        return None
    path = result_path(cfg)
    if not path.exists():
        return None
    rec = json.loads(path.read_text())
    if rec.get("config_key") != config_key(cfg):
        log.warning("[pipeline] %s holds another configuration's result: running the job again", path)
        return None
    return rec


def publish(cfg: DictConfig, record: dict) -> Path | None:
    """Write the job's small result file to ``publish.dir`` (and commit it when ``publish.git_commit``)."""
    if not cfg.get("publish") or not cfg.publish.get("dir"):
        return None
    path = result_path(cfg)
    small = {k: v for k, v in record.items() if k not in _DROP}
    small["config_key"] = config_key(cfg)
    write_json(path, small)
    if cfg.publish.get("git_commit"):
        commit(
            path,
            f"results: {path.stem} ({cfg.profile.name}), gold reward {record['eval']['gold_reward']:+.3f}",
        )
    print(f"[pipeline] published {path}", flush=True)
    return path


def commit(path: Path, msg: str) -> None:
    """Commit that one file to git (``alignlab.tune`` commits its search records the same way)."""
    for attempt in range(5):  # two jobs finishing together contend for git's index lock
        try:
            subprocess.run(["git", "add", str(path)], check=True, capture_output=True, timeout=60)
            subprocess.run(["git", "commit", "-m", msg, "--", str(path)], check=True, capture_output=True,
                           timeout=60)  # fmt: skip
            break
        except (OSError, subprocess.SubprocessError) as e:  # the file is written either way
            if attempt == 4:
                log.warning("[pipeline] could not commit %s (%s); commit it by hand", path, e)
            time.sleep(2 + attempt)

"""Loggers: wandb (offline unless the user is logged in; never blocks on the network), CSV, none.

Also the run's whole config for every logger, stage runs kept apart from a wandb agent's sweep run, and a
reader for offline run files (tests and tools check what a run logged without a server)."""

from __future__ import annotations

import csv
import json
import netrc
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from alignlab.utils.io import atomic_open

# Environment variables a wandb agent sets for the one run it started (the pipeline's summary run).
SWEEP_RUN_ENV = ("WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_RESUME")


def wandb_loggers(loggers: list) -> list:
    """The Lightning ``WandbLogger``s among ``loggers``: the one check every caller uses before a
    wandb-only call (tables, ``wandb.finish``)."""
    from lightning.pytorch.loggers import WandbLogger

    return [lg for lg in loggers if isinstance(lg, WandbLogger)]


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


def wandb_settings(console: str = "auto", system_metrics: bool = True):
    """``wandb.Settings`` for our runs: quiet; ``console`` capture (auto|off|wrap|redirect) and system
    metrics (CPU/GPU/memory every few seconds) as configured."""
    import wandb

    return wandb.Settings(silent=True, console=console, x_disable_stats=not system_metrics)


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
    console: str = "auto",
    system_metrics: bool = True,
):
    """A Lightning ``WandbLogger``; the run directory lands in ``save_dir/wandb``.

    Args:
        project: wandb project.
        save_dir: directory that gets ``wandb/``.
        name: run name (wandb picks one when null).
        group: runs of one comparison or sweep share a group.
        tags: run tags.
        mode: ``auto`` (online when logged in), ``online``, ``offline`` or ``disabled``.
        entity: wandb entity (user or team); null for the default.
        log_model: upload checkpoints as wandb artifacts.
        job_type: what kind of job the run is (``sft``, ``reward_model``, ``policy`` ...).
        console: console capture: ``auto``, ``off``, ``wrap`` or ``redirect``.
        system_metrics: log CPU/GPU/memory use alongside the training curves.
    """
    from lightning.pytorch.loggers import WandbLogger

    resolved = resolve_wandb_mode(mode)
    os.environ["WANDB_MODE"] = resolved
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    run_id = resumed_run_id(save_dir)  # a resumed stage continues its wandb run (wandb sync merges them)
    return WandbLogger(
        id=run_id,
        resume="allow" if run_id else None,
        project=project,
        save_dir=save_dir,
        name=name,
        group=group,
        tags=list(tags or []),
        mode=resolved,
        entity=entity,
        log_model=log_model,
        job_type=job_type,
        settings=wandb_settings(console, system_metrics),
    )


def resumed_run_id(save_dir: str | os.PathLike) -> str | None:
    """The id of the wandb run an earlier attempt of this run directory started (``wandb/*run-<time>-<id>``,
    the newest), so a resumed stage continues that run; None in a fresh directory."""
    runs = sorted(Path(save_dir, "wandb").glob("*run-*-*"), key=lambda p: p.name.split("run-", 1)[1])
    runs = [p for p in runs if p.is_dir()]
    return runs[-1].name.rsplit("-", 1)[1] if runs else None


def make_csv_logger(
    save_dir: str, name: str = "csv", version: str | int | None = "", flush_logs_every_n_steps: int = 1
):
    """Lightning's ``CSVLogger``, except that a resumed run continues ``metrics.csv`` instead of deleting
    it: rows logged before the step the run resumed at are kept. Rows are written as they are logged
    (``flush_logs_every_n_steps``), so a run killed after a checkpoint has every row up to it on disk."""
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter
    from lightning.pytorch.loggers.logger import rank_zero_experiment

    class ContinuingWriter(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:  # Lightning deletes an earlier metrics.csv here
            self.earlier: list[dict] | None = None
            if self._fs.isfile(self.metrics_file_path):
                with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                    self.earlier = list(csv.DictReader(f))

        def save(self) -> None:
            if self.earlier is not None and self.metrics:
                self._keep_earlier(min(int(m["step"]) for m in self.metrics))
            super().save()

        def _keep_earlier(self, first_step: int) -> None:
            """Rewrite metrics.csv with the earlier rows before ``first_step`` (rows after the checkpoint
            the run resumed from are logged again by this run)."""
            kept = [r for r in self.earlier or [] if r.get("step") and int(float(r["step"])) < first_step]
            keys = {k for r in kept for k, v in r.items() if v not in ("", None)}
            self.metrics_keys = sorted(keys | set(self.metrics_keys) | set().union(*self.metrics))
            with atomic_open(self.metrics_file_path, "w") as f:
                writer = csv.DictWriter(f, fieldnames=self.metrics_keys, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(kept)
            self.earlier = None

    class ContinuingCSVLogger(CSVLogger):
        @property
        @rank_zero_experiment
        def experiment(self):
            if self._experiment is None:
                self._fs.makedirs(self.root_dir, exist_ok=True)
                self._experiment = ContinuingWriter(log_dir=self.log_dir)
            return self._experiment

    return ContinuingCSVLogger(
        save_dir=save_dir, name=name, version=version, flush_logs_every_n_steps=flush_logs_every_n_steps
    )


def log_run_config(loggers: list, cfg: DictConfig) -> None:
    """Give every logger the run's whole resolved config, secrets redacted as in
    ``config_resolved.yaml`` (wandb: the run config; CSV: ``hparams.yaml``)."""
    from alignlab.utils.config import redact, to_container

    if not loggers:
        return
    data = redact(to_container(cfg))
    data.pop("hydra", None)
    for lg in loggers:
        lg.log_hyperparams(data)


@contextmanager
def outside_sweep_run() -> Iterator[None]:
    """Inside this block new wandb runs are runs of their own, not the run a wandb agent started this
    process for (its ``WANDB_RUN_ID``/``WANDB_SWEEP_ID`` are hidden, then put back). The pipeline runs
    each stage in it, so a stage's curves get their own run and the sweep run keeps the sweep metric."""
    import wandb

    saved = {k: os.environ.pop(k) for k in SWEEP_RUN_ENV if k in os.environ}
    if saved:
        wandb.teardown()  # wandb reads these variables once per process setup
    try:
        yield
    finally:
        if saved:
            wandb.teardown()
            os.environ.update(saved)


def log_stage_run(
    save_dir: str | os.PathLike,
    config: dict,
    metrics: dict,
    project: str = "alignlab",
    group: str | None = None,
    job_type: str | None = None,
    name: str | None = None,
    mode: str = "auto",
    console: str = "auto",
    system_metrics: bool = True,
    examples: list[dict] | None = None,
) -> None:
    """One wandb run for a stage that has no Lightning logger (labelling, evaluation): ``config``
    (redacted) as the run config, the numbers of ``metrics`` as its summary and ``examples`` (an
    evaluation's prompt/completion/gold rows) as the table ``examples``, outside any sweep run."""
    import wandb

    from alignlab.utils.config import redact

    Path(save_dir).mkdir(parents=True, exist_ok=True)
    with outside_sweep_run():
        run = wandb.init(
            project=project,
            group=group,
            job_type=job_type,
            name=name,
            dir=str(save_dir),
            mode=resolve_wandb_mode(mode),
            config=redact(config),
            settings=wandb_settings(console, system_metrics),
        )
        try:
            logged: dict = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            if examples:
                cols = list(examples[0])
                logged["examples"] = wandb.Table(
                    columns=cols, data=[[e.get(c) for c in cols] for e in examples]
                )
            run.log(logged)
        finally:
            run.finish()


# ----------------------------------------------------------------------------- offline run files


@dataclass
class OfflineRun:
    """What a run wrote to its ``run-<id>.wandb`` file."""

    run_id: str = ""
    project: str = ""
    group: str = ""
    job_type: str = ""
    config: dict = field(default_factory=dict)  # nested, as logged
    history: list[dict] = field(default_factory=list)  # one dict per logged step
    summary: dict = field(default_factory=dict)


_BLOCK = 32768  # the LevelDB log format wandb's transaction log uses: 32 KiB blocks, 7-byte headers
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a wandb run file (no ':W&B' header)")
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (_FULL, _LAST):
            yield buf
            buf = b""


def _set_nested(out: dict, keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        out = out.setdefault(k, {})
    out[keys[-1]] = value


def _item_value(item) -> tuple[list[str], Any]:
    keys = list(item.nested_key) or [item.key]
    return keys, json.loads(item.value_json) if item.value_json else None


def read_offline_run(run_dir: str | os.PathLike) -> OfflineRun:
    """Read ``run_dir`` (``wandb/offline-run-*`` or ``wandb/run-*``): config, history and summary.
    In the process that logged the run, call ``wandb.teardown()`` first: the wandb service may hold the
    end of the file until it stops."""
    from wandb.proto import wandb_internal_pb2 as pb

    files = sorted(Path(run_dir).glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file in {run_dir}")
    run = OfflineRun()
    for raw in _records(files[0]):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run  # later run records may leave fields blank: keep the first values
            run.run_id, run.project = run.run_id or r.run_id, run.project or r.project
            run.group, run.job_type = run.group or r.run_group, run.job_type or r.job_type
            updates = r.config.update
        elif kind == "config":
            updates = rec.config.update
        elif kind == "history":
            row: dict = {}
            for item in rec.history.item:
                keys, value = _item_value(item)
                row[".".join(keys)] = value
            run.history.append(row)
            continue
        elif kind == "summary":
            for item in rec.summary.update:
                keys, value = _item_value(item)
                run.summary[".".join(keys)] = value
            continue
        else:
            continue
        for item in updates:
            keys, value = _item_value(item)
            if keys[0] != "_wandb":
                _set_nested(run.config, keys, value)
    return run


def offline_runs(root: str | os.PathLike) -> list[OfflineRun]:
    """Every run under ``root`` (searched recursively for ``wandb/*run-*`` directories)."""
    dirs = sorted({p.parent for p in Path(root).rglob("run-*.wandb")})
    return [read_offline_run(d) for d in dirs]

"""Hydra launcher configs (conf/hydra/launcher/): every one composes with its plugin, and a local Ray runs a
tiny two-run sweep, one Ray task per run.

The Ray plugin is the `ray` extra, installed by `make test-slow` (Ray is a large dependency the fast suite
does not need); the submitit plugin comes with the `dev` extra.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CONF, REPO, app_env

LAUNCHERS = sorted(p.stem for p in (CONF / "hydra" / "launcher").glob("*.yaml"))
PLUGIN = {"submitit": "hydra_plugins.hydra_submitit_launcher", "ray": "hydra_plugins.hydra_ray_launcher"}


def _plugin(name: str) -> str:
    return PLUGIN[next(k for k in PLUGIN if name.startswith(k))]


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _compose_multirun(launcher: str, tmp_path: Path):
    from hydra import compose, initialize_config_dir

    import alignlab.utils.hydra  # noqa: F401  (registers resolvers)

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            config_name="pipeline",
            overrides=[f"hydra/launcher={launcher}", "profile=tiny", f"paths.output_dir={tmp_path}"],
            return_hydra_config=True,
        )


def test_every_launcher_has_a_known_plugin():
    assert {"submitit_slurm_cpu", "submitit_slurm_gpu", "ray_local", "ray_gpu"} <= set(LAUNCHERS)
    for name in LAUNCHERS:
        assert _plugin(name)


@pytest.mark.parametrize(
    "name", [n if n.startswith("submitit") else pytest.param(n, marks=pytest.mark.slow) for n in LAUNCHERS]
)
def test_launcher_composes(name, tmp_path):
    if not _installed(_plugin(name)):
        pytest.skip(f"{_plugin(name)} is not installed (make test-slow installs the ray extra)")
    cfg = _compose_multirun(name, tmp_path)
    launcher = cfg.hydra.launcher
    assert launcher._target_.startswith(_plugin(name))
    if name.startswith("ray"):
        assert launcher.ray.remote.num_cpus >= 1 and "address" in launcher.ray.init
        assert launcher.ray.remote.num_gpus == (1 if name == "ray_gpu" else 0)
    else:
        assert launcher.timeout_min > 0 and launcher.nodes == 1
        assert (launcher.gpus_per_node or 0) == (1 if name.endswith("gpu") else 0)


@pytest.mark.slow
def test_ray_launcher_runs_each_run_as_a_ray_task(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    env = app_env(tmp_path, RAY_USAGE_STATS_ENABLED="0")
    sweep = tmp_path / "sweep"
    args = [
        "alignlab.pipeline",
        "--multirun",
        "hydra/launcher=ray_local",
        "profile=tiny",
        "method=dpo",
        "seed=0,1",
        f"artifacts_dir={tmp_path / 'artifacts'}",
        "wandb.enabled=false",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "_run_job pid=" in out  # the runs ran inside Ray workers, not in this process
    results = [json.loads((sweep / str(i) / "result.json").read_text()) for i in (0, 1)]
    assert [r["seed"] for r in results] == [0, 1]
    assert all(r["method"] == "dpo" for r in results)

"""wandb sweep files for the equal-tuning searches: ``python -m alignlab.tune_sweeps [--comparison tuned]``.

For users who prefer ``wandb agent`` to ``python -m alignlab.tune``: one sweep file per method,
``sweeps/tuned/<method>.yaml``, generated from ``conf/hparams_search/<method>.yaml`` (the Optuna space that
``alignlab.tune`` searches): ``method: bayes``, the same objective (``val/objective``, maximised), every
searched key with the same distribution and bounds (log scale as ``log_uniform_values``, choices as
``values``), ``run_cap`` the comparison's ``tune.n_trials``, and a command that runs each point as an
``alignlab.tune`` trial (``python -m alignlab.tune_trial comparison=<name> method=<method> key=value ...``).
A space with no exact wandb equivalent (an integer or stepped range) is refused. Regenerate after editing a
space; ``tests/test_tune_sweeps.py`` fails while a file is stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alignlab.utils.errors import ConfigError, cli_app

SWEEP_DIR = Path(__file__).resolve().parents[2] / "sweeps" / "tuned"


def wandb_parameter(key: str, dist) -> dict:
    """One Optuna distribution as a wandb sweep parameter with exactly the same support."""
    name = type(dist).__name__
    if hasattr(dist, "choices"):
        return {"values": list(dist.choices)}
    log = getattr(dist, "log", False) or name == "LogUniformDistribution"
    step = getattr(dist, "step", None) or getattr(dist, "q", None)
    if name in ("UniformDistribution", "LogUniformDistribution", "FloatDistribution") and step is None:
        kind = "log_uniform_values" if log else "uniform"
        return {"distribution": kind, "min": float(dist.low), "max": float(dist.high)}
    if name in ("IntUniformDistribution", "IntDistribution") and step in (None, 1) and not log:
        return {"distribution": "int_uniform", "min": int(dist.low), "max": int(dist.high)}
    raise ConfigError(
        f"{key}: {dist} has no exact wandb sweep equivalent; use choice() or interval() in the space"
    )


def sweep_config(method: str, comparison: str = "tuned") -> dict:
    """The wandb sweep of ``method``'s search under ``comparison=<comparison>`` (a conf/comparison file)."""
    from alignlab.tune import METRIC, load_space, method_config

    dists, _ = load_space(method)
    tune = method_config([f"comparison={comparison}"], method).get("tune")
    if tune is None:
        raise ConfigError(f"comparison={comparison} has no `tune` settings: name a tuned comparison (tuned)")
    return {
        "project": "alignlab",
        "name": f"{comparison}-{method}",
        "description": f"conf/hparams_search/{method}.yaml as a wandb sweep (python -m alignlab.tune_sweeps)",
        "program": "alignlab.tune_trial",
        "command": [
            "${env}",
            "${interpreter}",
            "-m",
            "alignlab.tune_trial",
            f"comparison={comparison}",
            f"method={method}",
            "${args_no_hyphens}",
        ],
        "method": "bayes",
        "metric": {"name": METRIC, "goal": "maximize"},
        "run_cap": int(tune.n_trials),
        "parameters": {k: wandb_parameter(k, d) for k, d in dists.items()},
    }


def render(method: str, comparison: str = "tuned") -> str:
    import yaml

    head = (f"# wandb sweep sweeps/tuned/{method}.yaml && wandb agent <entity>/<project>/<sweep id>\n"
            f"# Generated from conf/hparams_search/{method}.yaml by python -m alignlab.tune_sweeps: edit the space "
            "there, then regenerate.\n")  # fmt: skip
    return head + yaml.safe_dump(sweep_config(method, comparison), sort_keys=False, width=120)


def tuned_methods(comparison: str = "tuned") -> list[str]:
    """The methods ``comparison`` tunes (its ``tune.methods``)."""
    from alignlab.pipeline import compose_stage

    return [str(m) for m in compose_stage("pipeline", [f"comparison={comparison}"]).tune.methods]


def write_all(out: Path = SWEEP_DIR, comparison: str = "tuned") -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for method in tuned_methods(comparison):
        path = out / f"{method}.yaml"
        path.write_text(render(method, comparison))
        paths.append(path)
    return paths


@cli_app("alignlab-tune-sweeps")
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--comparison", default="tuned", help="the tuned comparison whose methods and trials to use"
    )
    ap.add_argument("--out", default=str(SWEEP_DIR), help="where the sweep files go (default sweeps/tuned)")
    a = ap.parse_args(argv)
    for path in write_all(Path(a.out), a.comparison):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

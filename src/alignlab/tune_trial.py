"""One trial of a method's search, outside Optuna: what a wandb sweep agent runs (``sweeps/tuned/<method>.yaml``).

    python -m alignlab.tune_trial comparison=tuned method=rlhf algo.optimizer.lr=0.001 algo.kl_coef=0.05 ...

Arguments are ``key=value``: every searched key of ``conf/hparams_search/<method>.yaml``, named as
``alignlab.tune`` names them (``algo.optimizer.lr``, ``passes``), each with a value its space allows, and
pipeline overrides (``comparison``, ``method``, ``profile``, ``model``, ``task``, ``tune.*``). The trial runs as
an ``alignlab.tune`` trial does: on ``tune.search_seed``, evaluated on the validation prompts, with the keys
that keep the profile's data budget; its objective is logged to wandb as ``val/objective`` in the group
``tune-<comparison>-<method>`` (the agent's sweep run), and written to ``<run dir>/trial.json``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from alignlab.utils.errors import ConfigError, cli_app


def parse_value(key: str, text: str):
    """A command-line value typed as Hydra types it (``1e-05`` a float, ``True`` a bool, ``dapo`` a string)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        (override,) = OverridesParser.create().parse_overrides([f"{key}={text}"])
    except Exception as e:
        raise ConfigError(f"{key}={text}: not a value ({e})") from e
    return override.value()


def split_args(args: list[str], dists: dict, method: str) -> tuple[list[str], dict]:
    """(pipeline overrides, searched params): each searched value checked against its distribution."""
    overrides, params = [], {}
    space = f"conf/hparams_search/{method}.yaml"
    for arg in args:
        key, sep, text = arg.partition("=")
        if not sep:
            raise ConfigError(f"{arg!r}: arguments are key=value (a searched key of {space}, or an override)")
        if key not in dists:
            overrides.append(arg)
            continue
        value, dist = parse_value(key, text), dists[key]
        if hasattr(dist, "choices"):
            ok = value in dist.choices and type(value) in {type(c) for c in dist.choices}
        else:
            ok = (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and dist.low <= value <= dist.high
            )
        if not ok:
            raise ConfigError(f"{key}={text}: outside the space of {space} ({dist}); use a value it allows")
        params[key] = value
    missing = sorted(set(dists) - set(params))
    if missing:
        raise ConfigError(
            f"{', '.join(missing)}: searched in {space} but not given; regenerate the sweep file "
            "(python -m alignlab.tune_sweeps) or pass them as key=value"
        )
    return overrides, params


def run_trial(args: list[str]) -> dict:
    """Run the trial the arguments name; returns what ``trial.json`` holds."""
    from alignlab.pipeline import objective, run_pipeline
    from alignlab.tune import job_config, load_space, log_trial, method_config, policy_base, trial_variant
    from alignlab.utils.io import write_json

    methods = [a.partition("=")[2] for a in args if a.startswith("method=")]
    if len(methods) != 1:
        raise ConfigError("name the method once: method=<name> (a file of conf/hparams_search)")
    method = methods[0]
    dists, search = load_space(method)
    overrides, params = split_args(args, dists, method)
    from hydra.errors import HydraException

    try:
        pcfg = method_config(overrides, method)
    except HydraException as e:  # a typo'd key or an unknown option: Hydra's own sentence
        raise ConfigError(" ".join(str(e).split())) from e
    tune = pcfg.get("tune")
    if tune is None:
        raise ConfigError("no `tune` settings: add comparison=tuned (or tuned_quick) to the command")
    variant = trial_variant(policy_base(pcfg), params, search)
    tag = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    out = Path(str(tune.storage_dir)) / method / f"sweep-{tag}"
    cfg = job_config(pcfg, variant, tune.search_seed, "val", out, f"tune-{tune.name}-{method}")
    rec = run_pipeline(cfg)
    value = objective(cfg, rec)
    log_trial(cfg, rec, params, value)
    trial = {"method": method, "params": params, "variant": variant, "value": value, "seed": int(tune.search_seed),
             "split": rec["eval"].get("split"), "gold_reward": rec["eval"]["gold_reward"], "kl": rec["eval"].get("kl"),
             "dir": str(out)}  # fmt: skip
    write_json(out / "trial.json", trial)
    print(f"[tune] {method} trial: objective {value:+.4f} (val) {params}; {out / 'trial.json'}", flush=True)
    return trial


@cli_app("alignlab-tune-trial")
def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    run_trial(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

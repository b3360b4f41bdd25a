"""Equal tuning for every method: ``python -m alignlab.tune comparison=tuned_quick`` (or ``comparison=tuned``).

For each method of ``tune.methods``: an Optuna study (TPE) over the method's search space,
``conf/hparams_search/<method>.yaml`` (the same file runs one method's search through Hydra's Optuna sweeper),
with the same number of trials and the same per-trial budget (the profile's) for every method. A trial is
one pipeline job (``alignlab.pipeline.run_pipeline``) on one seed, ``tune.search_seed``, shared by every
trial (so the pairs, labels and reward model are built once per search), whose evaluation runs on the
VALIDATION prompts; its objective is ``alignlab.pipeline.objective`` (gold reward, less ``kl_penalty`` per
nat of KL past ``kl_budget``). Then the best trial's configuration (the highest validation objective) is
trained on ``tune.final_seeds`` and evaluated on the test prompts exactly like the standard comparison:
pipeline jobs with that configuration as their ``variant``, published to ``publish.dir`` (``alignlab.compare``
reads them, and pairs them with the default settings' runs of the same seeds).

Budget: trials keep the profile's data. ``trainer.max_steps`` counts optimiser updates, so where a space
searches the updates made per rollout batch (PPO's epochs x minibatches) it is rescaled to keep the
profile's rollout batches; ``search.passes`` multiplies it (more passes over the same pairs), and
``search.keep_product`` holds a product fixed (RLOO's prompts per batch x group size k).

Resumable: the study lives in ``<tune.storage_dir>/<method>.db`` (sqlite); a rerun counts the finished
trials and runs only the missing ones, a trial left RUNNING by a killed run is marked failed and its
configuration runs again (its stages resume from the artifact store). ``<tune.record_dir>/<method>.json``
records every trial (params, validation objective, CPU-seconds and judge calls of the stages it ran), the
chosen configuration and the final runs; a new machine with no study restores the finished trials from it.
Why not Hydra's Optuna sweeper: it runs ``n_trials`` more trials on every invocation (a rerun repeats
finished work), one study per command, and cannot follow a search with the final seeds.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from alignlab.tune_report import best_trial  # the selection rule (kept beside the report that shows it)
from alignlab.utils.app import hydra_app
from alignlab.utils.hydra import CONF_DIR
from alignlab.utils.runtime import get_logger

log = get_logger(__name__)
SPACE_DIR = Path(CONF_DIR) / "hparams_search"


def _error(msg: str):
    from alignlab.utils.config import ConfigError

    return ConfigError(msg)


# -- the search space ------------------------------------------------------------------------------------
def load_space(method: str) -> tuple[dict, dict]:
    """(distributions, search settings) of ``conf/hparams_search/<method>.yaml``: its ``hydra.sweeper.params``
    (``variant.<key>: <Hydra sweep>``) as Optuna distributions named ``<key>``, and its ``search`` node."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override
    from optuna.distributions import BaseDistribution, CategoricalDistribution

    path = SPACE_DIR / f"{method}.yaml"
    if not path.exists():
        raise _error(f"{path}: no search space for method {method!r}; write one (see docs/tuning.md)")
    raw = OmegaConf.load(path)
    params = OmegaConf.select(raw, "hydra.sweeper.params")
    if not params:
        raise _error(f"{path}: hydra.sweeper.params is empty; list the method's variant.* keys to search")
    dists = {}
    for key, sweep in OmegaConf.to_container(params).items():
        if not key.startswith("variant."):
            raise _error(f"{path}: hydra.sweeper.params.{key}: search only variant.* keys (the policy stage)")
        try:
            (override,) = OverridesParser.create().parse_overrides([f"{key}={sweep}"])
            dist = create_optuna_distribution_from_override(override)
        except Exception as e:
            raise _error(f"{path}: hydra.sweeper.params.{key}={sweep!r} is not a sweep ({e})") from e
        if not isinstance(dist, BaseDistribution):
            raise _error(
                f"{path}: hydra.sweeper.params.{key}={sweep!r} is one value; use choice(), interval()"
            )
        dists[key[len("variant.") :]] = dist
    search = OmegaConf.to_container(raw.get("search") or OmegaConf.create({}))
    if search.get("passes"):
        dists["passes"] = CategoricalDistribution([int(p) for p in search["passes"]])
    return dists, search


def budget_values(base: DictConfig, params: dict, search: dict) -> dict:
    """The keys that keep a trial on the profile's data budget (see the module docstring), as variant keys."""
    out = {}
    steps = int(base.trainer.max_steps)
    keys = list(search.get("updates_per_batch") or [])
    if keys:  # max_steps counts updates: keep the profile's rollout batches
        old = math.prod(int(OmegaConf.select(base, k)) for k in keys)
        new = math.prod(int(params.get(k, OmegaConf.select(base, k))) for k in keys)
        steps = math.ceil(steps / old) * new
    steps *= int(params.get("passes", 1))
    if steps != int(base.trainer.max_steps):
        out["trainer.max_steps"] = steps
    pair = search.get("keep_product")
    if pair and pair[1] in params:  # [derived, searched]: derived x searched stays the profile's product
        total = int(OmegaConf.select(base, pair[0])) * int(OmegaConf.select(base, pair[1]))
        out[pair[0]] = max(1, total // int(params[pair[1]]))
    return out


def trial_variant(base: DictConfig, params: dict, search: dict) -> dict:
    """What a trial's params set on the policy stage: the searched keys and the budget-keeping ones."""
    variant = {k: v for k, v in params.items() if k != "passes"}
    variant.update(budget_values(base, params, search))
    return variant


# -- one pipeline job --------------------------------------------------------------------------------------
def method_config(overrides: list[str], method: str) -> DictConfig:
    """The pipeline's config for ``method`` under the command line's other overrides."""
    from alignlab.pipeline import compose_stage

    keep = [o for o in overrides if not o.lstrip("+~").startswith("method=")]
    return compose_stage("pipeline", [*keep, f"method={method}"])


def policy_base(pcfg: DictConfig) -> DictConfig:
    """The policy stage's config at the profile's settings (no variant)."""
    from alignlab.pipeline import PLACEHOLDER, stage_config, stage_list

    stages = dict(stage_list(pcfg))
    if "policy" not in stages:
        raise _error(f"method {pcfg.method.name!r} trains no policy: nothing to tune (tune.methods)")
    return stage_config(pcfg, stages["policy"], {n: Path(PLACEHOLDER) / n for n in stages})


def job_config(pcfg: DictConfig, variant: dict, seed: int, split: str, out: Path, group: str) -> DictConfig:
    cfg = copy.deepcopy(pcfg)
    with open_dict(cfg):
        cfg.seed = int(seed)
        for key, value in variant.items():
            OmegaConf.update(cfg, f"variant.{key}", value, force_add=True)
        cfg.profile.eval.split = split
        cfg.paths.output_dir = str(out)
        cfg.wandb.group = group
    return cfg


def fresh_cost(record: dict) -> tuple[float, int]:
    """CPU-seconds and judge calls of the stages this job ran (cached stages were paid for earlier)."""
    ran = [s for s in record["stages"] if not s["cached"]]
    cpu = sum(float((s["info"] or {}).get("cpu_s") or 0) for s in ran)
    calls = sum(int((s["info"] or {}).get("queries") or 0) for s in ran if s["name"] == "labels")
    calls += sum(
        int((s["info"] or {}).get("reward/judge_queries") or 0)
        + int((s["info"] or {}).get("win_rate_pairs") or 0)
        for s in ran
    )
    return round(cpu, 1), calls


# -- the study ------------------------------------------------------------------------------------------
def open_study(tune: DictConfig, method: str, dists: dict, saved: dict | None):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings(
        "ignore", category=optuna.exceptions.ExperimentalWarning
    )  # ask/tell, enqueue_trial
    storage = Path(str(tune.storage_dir)) / f"{method}.db"
    storage.parent.mkdir(parents=True, exist_ok=True)
    sampler = optuna.samplers.TPESampler(
        seed=int(tune.sampler_seed), n_startup_trials=int(tune.n_startup_trials)
    )
    study = optuna.create_study(study_name=method, storage=f"sqlite:///{storage}", direction="maximize",
                                sampler=sampler, load_if_exists=True)  # fmt: skip
    if not study.trials and saved:  # a new machine: the published record's trials come back, same numbers
        for t in sorted(saved.get("trials", []), key=lambda t: t["number"]):
            if set(t["params"]) != set(dists):
                raise _error(
                    f"{tune.record_dir}/{method}.json holds another search space's trials: move it away"
                )
            ok = t["state"] == "COMPLETE"
            state = optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL
            study.add_trial(optuna.trial.create_trial(params=t["params"], distributions=dists, state=state,
                                                      value=t["value"] if ok else None))  # fmt: skip
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        log.warning("[tune] %s: trial %d was left running (a killed run): running its configuration again",
                    method, t.number)  # fmt: skip
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(t.params)
    return study


def trial_rows(study, old: dict) -> list[dict]:
    rows = []
    for t in study.trials:
        row = {"number": t.number, "state": t.state.name, "params": t.params, "value": t.value}
        rows.append({**old.get(t.number, {}), **row})
    return rows


def search_method(overrides: list[str], method: str) -> dict:
    """One method's search, then its final runs; returns (and writes) the method's record."""
    import optuna
    from optuna.distributions import distribution_to_json

    from alignlab.pipeline import log_to_wandb, objective, run_pipeline
    from alignlab.publish import commit, publish, published
    from alignlab.utils.io import write_json

    pcfg = method_config(overrides, method)
    tune = pcfg.tune
    dists, search = load_space(method)
    base = policy_base(pcfg)
    record_path = Path(str(tune.record_dir)) / f"{method}.json"
    saved = json.loads(record_path.read_text()) if record_path.exists() else None
    study = open_study(tune, method, dists, saved)
    extra = {t["number"]: {k: v for k, v in t.items() if k not in ("state", "params", "value")}
             for t in (saved or {}).get("trials", [])}  # fmt: skip
    root = Path(str(tune.storage_dir)) / method
    record = {
        "method": method, "comparison": str(tune.name), "profile": str(pcfg.profile.name),
        "n_trials": int(tune.n_trials), "search_seed": int(tune.search_seed),
        "final_seeds": [int(s) for s in tune.final_seeds], "selection": "max validation objective",
        "objective": {"split": "val", "kl_budget": pcfg.get("kl_budget"), "kl_penalty": float(pcfg.kl_penalty)},
        "space": {k: str(v) for k, v in dists.items()}, "search": search,
        "space_json": {k: json.loads(distribution_to_json(v)) for k, v in dists.items()},  # alignlab.tune_report
    }  # fmt: skip

    def save(final: list | None = None) -> None:
        rows = trial_rows(study, extra)
        done = [r for r in rows if r["state"] == "COMPLETE"]
        best = best_trial(rows) if done else None
        cost = {"search_cpu_s": round(sum(r.get("cpu_s") or 0 for r in rows), 1),
                "search_judge_calls": sum(r.get("judge_calls") or 0 for r in rows)}  # fmt: skip
        if final is not None:
            record["final"] = final
            cost["final_cpu_s"] = round(sum(f.get("cpu_s") or 0 for f in final), 1)
            cost["final_judge_calls"] = sum(f.get("judge_calls") or 0 for f in final)
        write_json(record_path, {**record, "trials": rows, "best": best, "cost": cost})
        if pcfg.publish.get("git_commit"):
            commit(record_path, f"tune: {method} search ({len(done)}/{tune.n_trials} trials)")

    # 1. trials on the validation prompts, until n_trials have finished
    complete = optuna.trial.TrialState.COMPLETE
    while len(study.get_trials(deepcopy=False, states=(complete,))) < int(tune.n_trials):
        trial = study.ask(dists)
        variant = trial_variant(base, trial.params, search)
        out = root / f"trial-{trial.number}"
        cfg = job_config(pcfg, variant, tune.search_seed, "val", out, f"tune-{tune.name}-{method}")
        try:
            rec = run_pipeline(cfg)
        except (
            Exception
        ):  # a bug or a bad value fails the trial; an interrupt leaves it RUNNING (rerun resumes it)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            save()
            raise
        value = objective(cfg, rec)
        cpu, calls = fresh_cost(rec)
        extra[trial.number] = {"variant": variant, "gold_reward": rec["eval"]["gold_reward"],
                               "kl": rec["eval"].get("kl"), "split": rec["eval"].get("split"), "cpu_s": cpu,
                               "judge_calls": calls, "dir": str(out)}  # fmt: skip
        trial.set_user_attr("cpu_s", cpu)  # the study alone carries the cost too (alignlab.tune_report)
        trial.set_user_attr("judge_calls", calls)
        study.tell(trial, value)
        log_trial(cfg, rec, trial.params, value)
        save()
        print(
            f"[tune] {method} trial {trial.number}: objective {value:+.4f} (val) {trial.params}", flush=True
        )
    # 2. the best trial's configuration on fresh seeds, evaluated on the test prompts
    best = best_trial(trial_rows(study, extra))
    best["variant"] = trial_variant(base, best["params"], search)
    final = []
    for seed in tune.final_seeds:
        cfg = job_config(pcfg, best["variant"], seed, str(pcfg.profile.eval.split), root / f"final-s{seed}",
                         f"tuned-{tune.name}")  # fmt: skip
        rec = published(cfg)
        cpu, calls = (0.0, 0) if rec is not None else (None, None)
        if rec is None:
            # a tuned run carries `tuned`: alignlab.compare keeps it out of the default runs' verdicts
            rec = {**run_pipeline(cfg), "tuned": str(tune.name)}
            write_json(Path(cfg.paths.output_dir) / "result.json", rec)
            publish(cfg, rec)
            log_to_wandb(cfg, rec)
            cpu, calls = fresh_cost(rec)
        final.append({"seed": int(seed), "variant": best["variant"], "gold_reward": rec["eval"]["gold_reward"],
                      "kl": rec["eval"].get("kl"), "split": rec["eval"].get("split"), "cpu_s": cpu,
                      "judge_calls": calls})  # fmt: skip
        save(final)
    print(f"[tune] {method}: best trial {best['number']} (val objective {best['value']:+.4f}); "
          f"record {record_path}", flush=True)  # fmt: skip
    return json.loads(record_path.read_text())


METRIC = "val/objective"
"""The trials' objective as wandb logs it (the wandb sweep files of ``alignlab.tune_sweeps`` maximise it)."""


def log_trial(cfg: DictConfig, record: dict, params: dict, value: float) -> None:
    """One trial as a wandb run in its method's search group (``cfg.wandb.group``; a wandb agent's sweep run
    is picked up as is): the searched params as its config, the objective and the validation numbers."""
    if not cfg.wandb.enabled:
        return
    import wandb

    from alignlab.loggers import resolve_wandb_mode, wandb_settings

    run = wandb.init(project=cfg.wandb.project, group=cfg.wandb.group, job_type=f"tune-{record['method']}",
                     dir=cfg.paths.output_dir, mode=resolve_wandb_mode("auto"),
                     tags=[*cfg.get("tags", []), record["method"], "trial"],
                     config={**params, "method": record["method"], "seed": record["seed"],
                             "variant": record["variant"]},
                     settings=wandb_settings(cfg.wandb.get("console", "auto"), cfg.wandb.get("system_metrics", True)))  # fmt: skip
    try:
        flat = {f"val/{k}": v for k, v in record["eval"].items() if isinstance(v, (int, float))}
        flat[METRIC] = float(value)
        run.log(flat)
        run.summary.update(flat)
    finally:
        run.finish()


def check(cfg: DictConfig) -> None:
    """Every mistake the searches would hit late, before the first trial."""
    tune = cfg.get("tune")
    if tune is None:
        raise _error("no `tune` settings: run python -m alignlab.tune comparison=tuned_quick (or tuned)")
    if not tune.methods or int(tune.n_trials) < 1:
        raise _error("tune.methods must name methods and tune.n_trials must be >= 1 (conf/comparison)")
    if int(tune.search_seed) in {int(s) for s in tune.final_seeds}:
        raise _error(
            f"tune.search_seed={tune.search_seed} is among tune.final_seeds: the final seeds must be fresh"
        )
    if str(cfg.profile.eval.split) == "val":
        raise _error("profile.eval.split=val: the final runs are evaluated on the test prompts (split=test)")
    for method in tune.methods:
        load_space(method)


def tune_all(cfg: DictConfig, overrides: list[str]) -> dict:
    """Every method's search and final runs (``tune.n_jobs`` methods at once, as processes)."""
    check(cfg)
    methods = [str(m) for m in cfg.tune.methods]
    n_jobs = min(int(cfg.tune.get("n_jobs") or 1), len(methods))
    if n_jobs > 1:
        from joblib import Parallel, delayed

        records = Parallel(n_jobs=n_jobs, backend="loky")(
            delayed(search_method)(overrides, m) for m in methods
        )
    else:
        records = [search_method(overrides, m) for m in methods]
    from alignlab.tune_report import write_report

    tune = cfg.tune
    report_dir = Path(str(tune.get("report_dir") or Path(str(tune.record_dir)).parent))
    print(f"[tune] report: {write_report([Path(str(tune.record_dir)), Path(str(tune.storage_dir))], report_dir)}",
          flush=True)  # fmt: skip
    return dict(zip(methods, records))


@hydra_app("pipeline")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    records = tune_all(cfg, list(HydraConfig.get().overrides.task))
    for method, rec in records.items():
        best, cost = rec["best"], rec["cost"]
        finals = ", ".join(f"{f['gold_reward']:+.3f}" for f in rec.get("final", []))
        print(f"[tune] {method}: {rec['n_trials']} trials, best {best['variant']} (val {best['value']:+.4f}); "
              f"test gold {finals}; search {cost['search_cpu_s']:.0f} CPU-s", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

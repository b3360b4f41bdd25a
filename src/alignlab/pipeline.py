"""Pipelines: ``python -m alignlab.pipeline method=rlhf|dpo|rlaif_ppo|rlaif_dpo|direct_rlaif|... [seed=N]``.

A method is data (``conf/method/<name>.yaml``): an ordered list of stages, each naming the app it runs
(sample, label, train, evaluate), the budget of the profile it gets (``conf/profile``) and the earlier
stages whose outputs it reads; ``evaluation`` in ``conf/pipeline.yaml`` appends the stages every method
shares (the base policy and the trained policy on the same held-out prompts). This module only walks
that list:

    samples ──► labels (gold | judge) ──► reward_model ──► policy (PPO / RLOO)     rlhf, rlaif_ppo, rloo, ...
                                     └──► policy (DPO)                             dpo, rlaif_dpo
    judge as reward ──────────────────────────────────► policy (PPO / RLOO)       direct_rlaif, ...
    base policy and the trained policy ──► eval_base, eval (+ the judge's win rate)

A stage's config is its app's config composed with the stage's config-group choices, then the pipeline's
``model`` and ``task`` (forwarded whole, so ``model=hf model.name_or_path=<hub id>`` reaches every stage),
then the app's defaults, the budget's keys and the inputs. Every stage's output is content-addressed
(``alignlab.artifacts.Store``): its directory is named by the hash of its resolved config, which names its
inputs' directories, so the pairs are sampled once and labelled once per labeller and shared by every
method and seed that uses them, and rerunning a finished pipeline does no work. A stage that died resumes
from its last checkpoint on the next run. The run directory gets ``result.json`` (read by
``alignlab.compare``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from alignlab.evaluator import check_evaluator, evaluator_option, headline, headline_text
from alignlab.pipeline_record import examples_of, job_config
from alignlab.utils.app import hydra_app
from alignlab.utils.config import flatten
from alignlab.utils.hydra import CONF_DIR
from alignlab.utils.runtime import configure_runtime, get_logger

log = get_logger(__name__)
PLACEHOLDER = "__ARTIFACT_DIR__"
# keys that do not change what a stage computes
_VOLATILE = ("paths", "logger", "callbacks", "progress", "task_name", "tags", "hydra")


def _run_app(app: str) -> Callable[[DictConfig], dict]:
    """The function of each app a stage can run; returns what the stage record keeps."""

    def sample(cfg):
        from alignlab.sample import sample as run

        return run(cfg)

    def label(cfg):
        from alignlab.judges.report import RECORD_KEYS  # what the record's label_audit keeps
        from alignlab.label import label as run

        rep = run(cfg)
        keep = ("pairs_sampled", "decided", "ties", "invalid", "gold_accuracy", "cohen_kappa",
                "position_bias_rate", "calls", "queries", "cache_hits", *RECORD_KEYS)  # fmt: skip
        return {k: rep.get(k) for k in keep if k in rep}

    def train(cfg):
        from alignlab.train import train as run

        metrics, _ = run(cfg)
        return {k: v for k, v in metrics.items() if "/" in k}

    def evaluate(cfg):
        from alignlab.evaluate import evaluate as run

        rec = run(cfg)
        return {k: v for k, v in rec.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def best_of_n(cfg):
        from alignlab.best_of_n import best_of_n as run

        rec = run(cfg)
        return {k: v for k, v in rec.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    apps = {"sample": sample, "label": label, "train": train, "evaluate": evaluate, "best_of_n": best_of_n}
    if app not in apps:
        from alignlab.utils.config import ConfigError

        raise ConfigError(
            f"stage app {app!r} is not one of {', '.join(apps)} (conf/method, conf/pipeline.yaml)"
        )
    return apps[app]


def compose_stage(config_name: str, overrides: list[str]) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with ``overrides``, inside or outside a Hydra app."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = [*overrides, f"paths.output_dir={PLACEHOLDER}"]
    if GlobalHydra.instance().is_initialized():
        return compose(config_name=config_name, overrides=overrides)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def stage_config(pcfg: DictConfig, stage: dict, dirs: dict[str, Path]) -> DictConfig:
    """The config of one stage of the pipeline ``pcfg`` (see the module docstring for the order)."""
    from alignlab.utils.config import ConfigError

    prof = OmegaConf.to_container(pcfg.profile, resolve=True)
    budget_name = stage.get("budget")
    if budget_name is not None and budget_name not in prof:
        raise ConfigError(
            f"stage budget {budget_name!r} is not in profile {prof.get('name')!r} (conf/profile)"
        )
    budget = dict(prof.get(budget_name) or {})
    app_defaults = dict(OmegaConf.to_container(pcfg.app_defaults, resolve=True).get(stage["app"]) or {})
    groups = dict(app_defaults.pop("groups", None) or {})
    if budget.get("experiment"):
        groups["experiment"] = budget.pop("experiment")
    groups.update(budget.pop("groups", None) or {})
    groups.update(stage.get("groups") or {})
    cfg = compose_stage(stage["app"], [f"{k}={v}" for k, v in groups.items() if v is not None])
    values = {
        **flatten(app_defaults),
        **flatten(budget),
        **(stage.get("values") or {}),
    }
    for key, ref in (stage.get("inputs") or {}).items():
        src, _, rel = ref.partition("/")
        if src not in dirs:
            raise ConfigError(f"stage input {key}: {ref} names stage {src!r}, which has not run before it")
        values[key] = str(dirs[src] / rel)
    with open_dict(cfg):
        cfg.model = pcfg.model  # forwarded whole
        cfg.task = pcfg.task
    for key, value in values.items():  # struct mode: a key the app does not have is an error
        try:
            OmegaConf.update(cfg, key, value, merge=True)
        except Exception as e:  # omegaconf's errors name the key but not where it came from
            raise ConfigError(
                f"stage {stage['app']} (budget {budget_name!r}): cannot set {key}={value!r} ({type(e).__name__}); "
                f"check the key in conf/profile/{prof.get('name')}.yaml or the method's stage"
            ) from e
    return cfg


def stage_spec(cfg: DictConfig) -> dict:
    """What determines a stage's output: its resolved config without volatile keys."""
    data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    return {k: v for k, v in data.items() if k not in _VOLATILE}


class Runner:
    """Runs stages through the artifact store and keeps the bookkeeping for ``result.json``."""

    def __init__(self, store_root: Path, wandb_stages: dict | None = None):
        from alignlab.artifacts import Store

        self.store = Store(store_root)
        self.wandb_stages = wandb_stages  # project/group/name prefix: a wandb run per stage that runs
        self.stages: list[dict] = []
        self.dirs: dict[str, Path] = {}

    def run(self, name: str, app: str, cfg: DictConfig, kind: str) -> Path:
        spec = {"app": app, **stage_spec(cfg)}
        out = self.store.path(kind, spec)
        with open_dict(cfg):
            cfg.paths.output_dir = str(out)
            if (
                app == "train"
                and (out / "checkpoints" / "last.ckpt").exists()
                and not (out / "DONE.json").exists()
            ):
                cfg.ckpt_path = "last"  # a stage that died: continue from its last checkpoint
                log.info("[pipeline] %s: resuming from %s", kind, out / "checkpoints" / "last.ckpt")
        fn = _run_app(app)

        def timed(_out) -> dict:  # CPU seconds too: wall time means little beside other jobs
            from alignlab.loggers import log_stage_run, outside_sweep_run

            cpu = time.process_time()
            with outside_sweep_run():  # a stage's wandb run is its own, not a wandb agent's sweep run
                info = dict(fn(cfg) or {})
                if self.wandb_stages and app != "train":  # train stages log through their Lightning logger
                    w = self.wandb_stages
                    log_stage_run(out, OmegaConf.to_container(cfg, resolve=True), info, project=w["project"],
                                  group=w["group"], job_type=name, name=f"{w['prefix']}-{name}",
                                  examples=examples_of(out, 8) if app == "evaluate" else None)  # fmt: skip
            return {**info, "cpu_s": round(time.process_time() - cpu, 1)}

        path, rec, cached = self.store.run(kind, spec, timed)
        word = "cached" if cached else f"done in {rec['seconds']:.0f} s"
        print(f"[pipeline] {kind:<12} {word:<16} {path}", flush=True)
        self.stages.append(
            {"stage": kind, "name": name, "dir": str(path), "cached": cached, "seconds": rec["seconds"],
             "info": rec.get("info", {})}
        )  # fmt: skip
        self.dirs[name] = path
        return path


def stage_list(cfg: DictConfig) -> list[tuple[str, dict]]:
    """The method's stages then the shared evaluation stages, as (name, stage) in order; the policy
    stage gets the sweep point (``variant``) and the evaluation stage the profile's win-rate judge."""
    own = OmegaConf.to_container(cfg.method.stages, resolve=True)
    shared = OmegaConf.to_container(cfg.evaluation, resolve=True)
    # a method's stage named like a shared one replaces it (best_of_n's `eval` selects, trains nothing)
    stages = {k: v for k, v in own.items() if k not in shared}
    stages.update({k: own.get(k, v) for k, v in shared.items()})
    variant = {
        k: v for k, v in flatten(OmegaConf.to_container(cfg.variant, resolve=True)).items() if v is not None
    }
    if "policy" not in stages and ("eval" not in own or variant):
        from alignlab.utils.config import ConfigError

        raise ConfigError(
            f"method {cfg.method.name!r} has no `policy` stage (conf/method/{cfg.method.name}.yaml)"
            + (f" for the sweep point variant {variant}" if variant else "")
        )
    if "policy" in stages:
        stages["policy"] = {
            **stages["policy"],
            "values": {**(stages["policy"].get("values") or {}), **variant},
        }
    if cfg.wandb.enabled and cfg.wandb.get("stages"):  # each training stage's curves in its own wandb run
        for name, stage in stages.items():
            if stage["app"] == "train":
                wb = {"project": cfg.wandb.project, "group": cfg.wandb.group, "job_type": name,
                      "name": f"{cfg.method.name}-{name}-s{cfg.seed}"}  # fmt: skip
                stage["groups"] = {**(stage.get("groups") or {}), "logger": "csv_wandb"}
                stage["values"] = {
                    **(stage.get("values") or {}),
                    **{f"logger.wandb.{k}": v for k, v in wb.items()},
                }
    judge = evaluator_option(cfg)  # a task without gold reward: its headline's judge (alignlab.evaluator)
    if not judge:  # no judge: the win-rate input is not read
        stages["eval"]["inputs"] = {k: v for k, v in stages["eval"]["inputs"].items() if "win_rate" not in k}
    else:
        stages["eval"]["groups"] = {**(stages["eval"].get("groups") or {}), "judge": judge}
    return list(stages.items())


def run_pipeline(cfg: DictConfig) -> dict:
    """Run the stages of ``cfg.method`` for ``cfg.seed``; returns the record written to ``result.json``."""
    configure_runtime()
    import json

    from alignlab.utils.io import write_json

    start = time.perf_counter()
    wb = None
    if cfg.wandb.enabled and cfg.wandb.get("stages"):
        wb = {
            "project": cfg.wandb.project,
            "group": cfg.wandb.group,
            "prefix": f"{cfg.method.name}-s{cfg.seed}",
        }
    runner = Runner(Path(cfg.artifacts_dir), wb)
    stages = stage_list(cfg)
    # every stage's config is built and type-checked before the first stage runs (a typo'd key or a
    # mistyped value in a late stage fails now, not after an hour of earlier stages)
    from alignlab.judges.option import check_bound_judges
    from alignlab.tasks import build_task
    from alignlab.utils.hydra import check_types

    task = build_task(cfg.task)  # a task that lacks a method fails now, in one line
    placeholder = {name: Path(PLACEHOLDER) / name for name, _ in stages}
    checked = {}
    for name, stage in stages:  # checked one by one: a bad stage fails before the later ones are composed
        checked[name] = scfg = stage_config(cfg, stage, placeholder)
        check_types(scfg)
        check_bound_judges(scfg, task)  # a judge made for another task is refused before any stage runs
    same_judge = check_evaluator(checked, {n: s["app"] for n, s in stages}, task)  # no gold; one judge
    configs = {}
    for name, stage in stages:
        # the policy stage is stored under its budget's name (ppo, rloo, dpo): one directory kind per recipe
        kind = stage.get("budget") if name == "policy" else name
        configs[name] = stage_config(cfg, stage, runner.dirs)
        runner.run(name, stage["app"], configs[name], kind)

    base = json.loads((runner.dirs["eval_base"] / "metrics.json").read_text())
    ev = json.loads((runner.dirs["eval"] / "metrics.json").read_text())
    # judge queries (one per judgement: each order of a pair, or each text in pointwise mode), answered by
    # the model or the cache, when the stage ran; plus a direct-RLAIF reward's queries during training
    info = [s["info"] or {} for s in runner.stages]
    judge_calls = sum(
        int(i.get("queries") or 0) for s, i in zip(runner.stages, info) if s["name"] == "labels"
    )
    judge_calls += sum(
        int(i.get("reward/judge_queries") or 0) + int(i.get("win_rate_pairs") or 0) for i in info
    )
    from alignlab.judges.report import RECORD_KEYS
    from alignlab.pipeline_record import curve, examples_of, machine_summary
    from alignlab.tasks.describe import scorers
    from alignlab.utils.precision import cpu_precision

    curves = [curve(s, configs[s["name"]]) for s in runner.stages if s["name"] in ("reward_model", "policy")]
    examples = {k: examples_of(runner.dirs[d]) for k, d in (("base", "eval_base"), ("policy", "eval"))}
    labels = next((s["info"] for s in runner.stages if s["name"] == "labels"), {})
    record = {
        "method": cfg.method.name,
        "task": task.name,
        **scorers(task),  # gold_scorer, second_scorer: what the report's gains are measured with
        "labeller": cfg.method.get("labeller"),
        "seed": int(cfg.seed),
        "variant": {k: v for k, v in flatten(OmegaConf.to_container(cfg.variant)).items() if v is not None},
        "profile": cfg.profile.name,
        "eval": ev,
        "base_eval": base,
        "evaluator_warning": same_judge,  # the evaluator judge trained the policy (alignlab.evaluator)
        "labels_used": int(labels.get("decided") or 0),
        "label_audit": {k: labels[k] for k in RECORD_KEYS if k in labels},  # judges.report
        "judge_calls": judge_calls,
        "precision": cpu_precision(),  # what trainer=cpu trained in (the CPU's or $ALIGNLAB_CPU_PRECISION)
        "machine": machine_summary(),
        # the compute each stage took when it ran (shared stages count in full for every method)
        "wall_time_s": round(sum(s["seconds"] for s in runner.stages), 1),
        "cpu_time_s": round(sum(float((s["info"] or {}).get("cpu_s") or 0) for s in runner.stages), 1),
        "this_run_s": round(time.perf_counter() - start, 1),
        "stages": runner.stages,
        "curves": curves,
        "examples": examples,
    }
    out = Path(cfg.paths.output_dir)
    write_json(out / "result.json", record)
    # an evaluation that measures several policies (best_of_n: each n, and the gold oracle) writes the others
    # as points/*.json; each becomes a record beside result.json, named like a published one (compare reads it)
    for path in sorted((runner.dirs["eval"] / "points").glob("*.json")):
        point = json.loads(path.read_text())
        tail = "".join(f"-{k}{v}" for k, v in sorted(point["variant"].items()))
        name = record["method"] + point["suffix"]
        write_json(out / f"{name}-s{cfg.seed}{tail}.json",
                   {**record, "method": name, "variant": point["variant"], "eval": point["eval"],
                    "examples": {**examples, "policy": point.get("examples", [])}})  # fmt: skip
    print(f"[pipeline] {cfg.method.name} seed {cfg.seed}: {headline_text(ev, base)}; result: {out / 'result.json'}",
          flush=True)  # fmt: skip
    return record


def log_to_wandb(cfg: DictConfig, record: dict) -> None:
    """The run's numbers to wandb, grouped per sweep (a wandb agent's sweep run is picked up as is)."""
    if not cfg.wandb.enabled:
        return
    import wandb

    from alignlab.loggers import resolve_wandb_mode, wandb_settings

    run = wandb.init(
        project=cfg.wandb.project,
        group=cfg.wandb.group,
        job_type=record["method"],
        dir=cfg.paths.output_dir,
        mode=resolve_wandb_mode("auto"),
        tags=[*cfg.get("tags", []), record["method"]],
        config=job_config(cfg, record),
        settings=wandb_settings(cfg.wandb.get("console", "auto"), cfg.wandb.get("system_metrics", True)),
    )
    try:
        flat = {f"eval/{k}": v for k, v in record["eval"].items() if isinstance(v, (int, float))}
        flat.update({f"base/{k}": v for k, v in record["base_eval"].items() if isinstance(v, (int, float))})
        flat.update({k: record[k] for k in ("labels_used", "judge_calls", "wall_time_s")})
        run.log(flat)
        run.summary.update(flat)
    finally:
        run.finish()


def objective(cfg: DictConfig, record: dict) -> float:
    """Held-out gold reward, penalised past the KL budget (what sweepers maximise)."""
    gold = headline(record["eval"])[1]  # a task without gold reward: the judge's win rate
    if cfg.get("kl_budget") is None:
        return gold
    excess = max(0.0, float(record["eval"].get("kl") or 0.0) - float(cfg.kl_budget))
    return gold - float(cfg.kl_penalty) * excess


@hydra_app("pipeline")
def main(cfg: DictConfig) -> float:
    from alignlab.publish import publish, published

    record = published(cfg)
    if record is not None:  # finished and published by an earlier run of the same command
        print(f"[pipeline] {cfg.method.name} seed {cfg.seed}: published result found, skipping", flush=True)
        return objective(cfg, record)
    record = run_pipeline(cfg)
    publish(cfg, record)
    log_to_wandb(cfg, record)
    return objective(cfg, record)


if __name__ == "__main__":
    main()

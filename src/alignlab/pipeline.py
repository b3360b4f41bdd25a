"""Pipelines: ``python -m alignlab.pipeline method=rlhf|dpo|rlaif_ppo|rlaif_dpo|direct_rlaif|... [seed=N]``.

A method is a chain of stages, each a call of another entry point (label, train, evaluate) on a config
composed from ``conf/``:

    samples ──► labels (gold | judge) ──► reward model ──► PPO / RLOO          rlhf, rlaif_ppo, rloo, ...
                                     └──► DPO                                  dpo, rlaif_dpo
    judge as reward ───────────────────────────────────► PPO / RLOO           direct_rlaif, direct_rlaif_rloo
    base policy and every trained policy ──► evaluate (held-out prompts)

Every stage's output is content-addressed (``alignlab.artifacts.Store``): its directory is named by the
hash of its resolved config, which names its inputs' directories, so the pairs are sampled once and
labelled once per labeller and shared by every method and seed that uses them, and rerunning a finished
pipeline does no work. A stage that died resumes from its last checkpoint on the next run.
The run directory gets ``result.json`` (read by ``alignlab.compare``).
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from alignlab.utils.hydra import CONF_DIR
from alignlab.utils.runtime import configure_runtime, get_logger

log = get_logger(__name__)
PLACEHOLDER = "__ARTIFACT_DIR__"
# keys that do not change what a stage computes
_VOLATILE = ("paths", "logger", "callbacks", "progress", "task_name", "tags", "hydra")
_POLICY_ALGOS = {"ppo": "ppo_sentiment", "rloo": "rloo_sentiment", "dpo": "dpo_sentiment"}


def compose_stage(config_name: str, overrides: list[str]) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with ``overrides``, inside or outside a Hydra app."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = [*overrides, f"paths.output_dir={PLACEHOLDER}"]
    if GlobalHydra.instance().is_initialized():
        return compose(config_name=config_name, overrides=overrides)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def stage_spec(cfg: DictConfig) -> dict:
    """What determines a stage's output: its resolved config without volatile keys."""
    data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    return {k: v for k, v in data.items() if k not in _VOLATILE}


class Runner:
    """Runs stages through the artifact store and keeps the bookkeeping for ``result.json``."""

    def __init__(self, store_root: Path):
        from alignlab.artifacts import Store

        self.store = Store(store_root)
        self.stages: list[dict] = []

    def run(self, kind: str, config_name: str, overrides: list[str], fn) -> Path:
        cfg = compose_stage(config_name, overrides)
        spec = {"app": config_name, **stage_spec(cfg)}
        out = self.store.path(kind, spec)
        with open_dict(cfg):
            cfg.paths.output_dir = str(out)
            if (
                config_name == "train"
                and (out / "checkpoints" / "last.ckpt").exists()
                and not (out / "DONE.json").exists()
            ):
                cfg.ckpt_path = "last"  # a stage that died: continue from its last checkpoint
                log.info("[pipeline] %s: resuming from %s", kind, out / "checkpoints" / "last.ckpt")
        path, rec, cached = self.store.run(kind, spec, lambda _out: fn(cfg))
        word = "cached" if cached else f"done in {rec['seconds']:.0f} s"
        print(f"[pipeline] {kind:<12} {word:<16} {path}", flush=True)
        self.stages.append(
            {
                "stage": kind,
                "dir": str(path),
                "cached": cached,
                "seconds": rec["seconds"],
                "info": rec.get("info", {}),
            }
        )
        return path


def _label(cfg: DictConfig) -> dict:
    from alignlab.label import label

    rep = label(cfg)
    keep = (
        "pairs_sampled",
        "decided",
        "ties",
        "invalid",
        "gold_accuracy",
        "cohen_kappa",
        "position_bias_rate",
        "calls",
        "queries",
        "cache_hits",
        "gold_kappa",
    )
    return {k: rep.get(k) for k in keep if k in rep}


def _train(cfg: DictConfig) -> dict:
    from alignlab.train import train

    metrics, _ = train(cfg)
    return {k: v for k, v in metrics.items() if "/" in k}


def _evaluate(cfg: DictConfig) -> dict:
    from alignlab.evaluate import evaluate

    return evaluate(cfg)


def judge_win_rate(judge, prompts: list[str], policy: list[str], reference: list[str], seed: int = 0) -> dict:
    """The judge's win rate of the policy's completions against the reference policy's, on the same
    prompts: mean P(policy ≻ reference) over the pairs the judge could decide (a pairwise judge asks both
    orders), with a bootstrap 95% CI; invalid answers are counted, never scored."""
    import numpy as np

    from alignlab.evaluate import bootstrap_ci

    results = judge.judge_pairs(prompts, policy, reference)
    p = np.asarray([r["p_first"] for r in results if r.get("p_first") is not None], dtype=float)
    out = {"win_rate_pairs": len(results), "win_rate_invalid": len(results) - int(p.size)}
    if p.size:
        lo, hi = bootstrap_ci(p, seed=seed)
        out.update({"win_rate": float(p.mean()), "win_rate_ci_low": lo, "win_rate_ci_high": hi})
    return out


def _win_rate(cfg: DictConfig, policy_dir: Path, base_dir: Path) -> dict:
    """Stage: the labeller of ``cfg`` (a composed label config) judges policy vs base completions."""
    import json

    from hydra.utils import instantiate

    from alignlab.judges.base import bind_task
    from alignlab.utils.io import write_json

    def rows(d: Path) -> list[dict]:
        return [json.loads(line) for line in (d / "samples.jsonl").read_text().splitlines() if line.strip()]

    pol, ref = rows(policy_dir), rows(base_dir)
    if [r["prompt"] for r in pol] != [r["prompt"] for r in ref]:
        raise ValueError(f"{policy_dir} and {base_dir} were evaluated on different prompts")
    judge = instantiate(cfg.judge)
    bind_task(judge, instantiate(cfg.task))
    out = judge_win_rate(
        judge, [r["prompt"] for r in pol], [r["completion"] for r in pol], [r["completion"] for r in ref]
    )
    write_json(Path(cfg.paths.output_dir) / "win_rate.json", out)
    return out


def run_pipeline(cfg: DictConfig) -> dict:
    """Run the stages of ``cfg.method`` for ``cfg.seed``; returns the record written to ``result.json``."""
    configure_runtime()
    from alignlab.utils.io import write_json

    start = time.perf_counter()
    m, prof = cfg.method, cfg.profile
    runner = Runner(Path(cfg.artifacts_dir))
    common = [f"model={cfg.model}", f"task={cfg.task}"]
    sampling = [f"sampling.max_new_tokens={prof.max_new_tokens}", f"sampling.temperature={prof.temperature}"]

    # 1. pairs: sampled once from the base policy (the data seed is the profile's, shared by all run seeds)
    labels_dir = None
    if m.labeller:
        samples = runner.run(
            "samples",
            "label",
            [
                *common,
                *sampling,
                "judge=gold",
                f"n_prompts={prof.pairs.n_prompts}",
                f"batch_size={prof.pairs.batch_size}",
                f"seed={prof.pairs.seed}",
                "progress=true",
            ],
            _label,
        )
        # 2. labels: once per labeller
        labels_dir = runner.run(
            "labels",
            "label",
            [
                *common,
                f"judge={m.labeller}",
                f"pairs_path={samples}/samples.jsonl",
                "samples_path=null",
                *list(prof.get("label_overrides") or []),
            ],
            _label,
        )
    pairs = f"{labels_dir}/pairs.jsonl" if labels_dir else None
    train_common = [
        f"model={cfg.model}",
        f"seed={cfg.seed}",
        "logger=csv",
        "trainer.enable_progress_bar=true",
    ]

    # 3. reward model on the labelled pairs
    reward_overrides: list[str] = []
    if m.reward_model:
        rm = runner.run(
            "reward_model",
            "train",
            [
                *train_common,
                "experiment=reward_sentiment",
                f"data.train_path={pairs}",
                *list(prof.reward_overrides),
            ],
            _train,
        )
        reward_overrides = ["reward@algo.reward=reward_model", f"algo.reward.path={rm}/policy"]
    elif m.direct_reward:
        reward_overrides = [f"reward@algo.reward={m.direct_reward}"]

    # 4. the policy
    algo = m.policy
    overrides = [*train_common, f"experiment={_POLICY_ALGOS[algo]}", *list(prof[f"{algo}_overrides"])]
    if algo == "dpo":
        overrides.append(f"data.train_path={pairs}")
    else:  # prompts and the validation gold reward of the pipeline's task
        overrides += [
            f"data.train_path=task://{cfg.task}@train",
            f"data.val_path=task://{cfg.task}@val",
            f"algo.val_rewards.gold.task={cfg.task}",
            *reward_overrides,
        ]
    variant = _flatten(OmegaConf.to_container(cfg.variant, resolve=True)) if cfg.get("variant") else {}
    overrides += [f"{k}={v}" for k, v in variant.items()]
    policy = runner.run(f"{algo}", "train", overrides, _train)

    # 5. evaluation of the base and the trained policy on the same held-out prompts
    ev_common = [
        *common,
        *sampling,
        f"n_prompts={prof.eval.n_prompts}",
        f"batch_size={prof.eval.batch_size}",
        f"seed={prof.eval.seed}",
        f"split={prof.eval.split}",
    ]
    base_dir = runner.run("eval_base", "evaluate", ev_common, _evaluate)
    eval_dir = runner.run("eval", "evaluate", [*ev_common, f"policy_path={policy}/policy"], _evaluate)

    import json

    base = json.loads((base_dir / "metrics.json").read_text())
    ev = json.loads((eval_dir / "metrics.json").read_text())
    # 6. the judge's win rate against the reference policy (optional: it costs judge calls)
    if prof.eval.get("win_rate_judge"):
        wr = runner.run(
            "win_rate",
            "label",
            [*common, f"judge={prof.eval.win_rate_judge}", f"+win_rate_inputs=[{eval_dir},{base_dir}]"],
            lambda c: _win_rate(c, eval_dir, base_dir),
        )
        ev.update(json.loads((wr / "win_rate.json").read_text()))
    # judge queries (one per judgement: each order of a pair, or each text in pointwise mode), answered by
    # the model or the cache, when the stage ran; plus a direct-RLAIF reward's queries during training
    judge_calls = sum(
        int((s["info"] or {}).get("queries") or 0) for s in runner.stages if s["stage"] == "labels"
    )
    judge_calls += sum(int((s["info"] or {}).get("reward/judge_queries") or 0) for s in runner.stages)
    judge_calls += sum(int((s["info"] or {}).get("win_rate_pairs") or 0) for s in runner.stages)
    curves = [
        {
            "stage": s["stage"],
            "csv": f"{s['dir']}/csv/metrics.csv",
            "metric": {"reward_model": "train/loss", "dpo": "train/loss"}.get(s["stage"], "objective/score"),
        }
        for s in runner.stages
        if s["stage"] in ("reward_model", "dpo", "ppo", "rloo")
    ]
    record = {
        "method": m.name,
        "seed": int(cfg.seed),
        "variant": variant,
        "eval": ev,
        "base_eval": base,
        "labels_used": int(
            next((s["info"].get("decided") or 0 for s in runner.stages if s["stage"] == "labels"), 0)
        ),
        "judge_calls": judge_calls,
        # the compute each stage took when it ran (shared stages count in full for every method)
        "wall_time_s": round(sum(s["seconds"] for s in runner.stages), 1),
        "this_run_s": round(time.perf_counter() - start, 1),
        "stages": runner.stages,
        "curves": curves,
    }
    out = Path(cfg.paths.output_dir)
    write_json(out / "result.json", record)
    print(
        f"[pipeline] {m.name} seed {cfg.seed}: gold reward {ev['gold_reward']:+.3f} "
        f"(base {base['gold_reward']:+.3f}), KL {ev.get('kl') or 0:.3f}; result: {out / 'result.json'}",
        flush=True,
    )
    return record


def _flatten(d: dict, prefix: str = "") -> dict:
    """{algo: {beta: 0.3}} -> {"algo.beta": 0.3}"""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def log_to_wandb(cfg: DictConfig, record: dict) -> None:
    """The run's numbers to wandb, grouped per sweep (a wandb agent's sweep run is picked up as is)."""
    if not cfg.wandb.enabled:
        return
    import wandb

    from alignlab.loggers import resolve_wandb_mode

    run = wandb.init(
        project=cfg.wandb.project,
        group=cfg.wandb.group,
        job_type=record["method"],
        dir=cfg.paths.output_dir,
        mode=resolve_wandb_mode("auto"),
        tags=[*cfg.get("tags", []), record["method"]],
        config={
            "method": record["method"],
            "seed": record["seed"],
            "variant": record["variant"],
            "profile": cfg.profile.name,
            "model": cfg.model,
            "task": cfg.task,
        },
        settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
    )
    try:
        flat = {f"eval/{k}": v for k, v in record["eval"].items() if isinstance(v, (int, float))}
        flat.update({f"base/{k}": v for k, v in record["base_eval"].items() if isinstance(v, (int, float))})
        flat.update(
            {
                "labels_used": record["labels_used"],
                "judge_calls": record["judge_calls"],
                "wall_time_s": record["wall_time_s"],
            }
        )
        run.log(flat)
        run.summary.update(flat)
    finally:
        run.finish()


def objective(cfg: DictConfig, record: dict) -> float:
    """Held-out gold reward, penalised past the KL budget (what sweepers maximise)."""
    gold = float(record["eval"]["gold_reward"])
    if cfg.get("kl_budget") is None:
        return gold
    excess = max(0.0, float(record["eval"].get("kl") or 0.0) - float(cfg.kl_budget))
    return gold - float(cfg.kl_penalty) * excess


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="pipeline")
def main(cfg: DictConfig) -> float:
    record = run_pipeline(cfg)
    log_to_wandb(cfg, record)
    return objective(cfg, record)


if __name__ == "__main__":
    main()

"""Training entry point: ``python -m alignlab.train [overrides]`` (Hydra app over conf/train.yaml).

Wiring only: compose, instantiate, fit, write artifacts, return the optimised metric.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from alignlab.utils.app import hydra_app
from alignlab.utils.runtime import configure_runtime, get_logger

log = get_logger(__name__)


def train(cfg: DictConfig) -> tuple[dict, dict]:
    """Run one training job described by ``cfg``; returns (metrics, objects)."""
    configure_runtime()
    import lightning as L
    from hydra.utils import instantiate

    from alignlab.evaluator import refuse_gold
    from alignlab.judges.option import check_bound_judges
    from alignlab.loggers import log_run_config
    from alignlab.models.peft import apply_peft
    from alignlab.tasks import build_task
    from alignlab.tasks.base import check_shipped_data, resolve_task_paths
    from alignlab.utils.checks import check_train_config
    from alignlab.utils.config import save_resolved_config
    from alignlab.utils.hydra import instantiate_dict
    from alignlab.utils.io import write_json

    check_train_config(cfg)
    task = build_task(cfg.task) if cfg.get("task") else None  # the run's one task object
    resolve_task_paths(cfg.data, task)
    check_bound_judges(cfg.get("algo"), task)
    refuse_gold(cfg.get("algo"), task)  # no gold reward: reward=gold refused, gold monitors dropped
    out = Path(cfg.paths.output_dir)
    save_resolved_config(cfg, out)
    # the data is read and validated before the model loads: a bad row costs seconds, not a model load
    datamodule = instantiate(cfg.data)
    rows = datamodule.read_rows()
    check_shipped_data(cfg.data, task, [r.get("prompt", "") for part in rows for r in part])
    check_judge_servers(cfg.get("algo"))
    L.seed_everything(cfg.seed, workers=True)
    log.info("loading model (%s)", cfg.model.source)
    lm = instantiate(cfg.model).load()
    datamodule.tokenizer = lm.tokenizer
    policy = apply_peft(lm.model, instantiate(cfg.peft) if cfg.get("peft") else None)
    module = instantiate(cfg.algo, policy=policy, tokenizer=lm.tokenizer)
    bind_rewards(module, task)
    callbacks = instantiate_dict(cfg.get("callbacks"))
    loggers = instantiate_dict(cfg.get("logger"))
    log_run_config(loggers, cfg)  # the whole resolved config, secrets redacted
    if not loggers:  # logger=none: a learning-rate monitor would have nowhere to write
        callbacks = [c for c in callbacks if type(c).__name__ != "LearningRateMonitor"]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics = _measure(cfg, trainer, module, datamodule)
        if trainer.is_global_zero:
            module.save_policy(out / "policy")
            write_json(out / "metrics.json", {"global_step": trainer.global_step, **metrics})
            log.info("policy saved to %s", out / "policy")
    finally:
        _finish_wandb(loggers)
    return metrics, {"trainer": trainer, "module": module, "datamodule": datamodule}


def bind_rewards(module, task) -> None:
    """Give the run's task to the rewards that ask about it (a judge's yes/no question or rubric)."""
    from alignlab.judges.base import bind_task

    if task is None:
        return
    reward_fn = getattr(module, "reward_fn", None)
    for reward in (getattr(reward_fn, "reward", None), *getattr(module, "val_rewards", {}).values()):
        if reward is not None and hasattr(reward, "set_task"):
            bind_task(reward, task)


def check_judge_servers(node) -> None:
    """A judge behind a server anywhere in ``node`` (direct RLAIF's reward) is asked once, now, before the
    model loads: a server that is down fails the run in seconds, naming its URL."""
    from hydra.utils import instantiate
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, DictConfig):
        if node.get("_target_") == "alignlab.judges.http.OpenAICompatibleJudge":
            instantiate(node).check_server()
            return
        children = [node[k] for k in node if not OmegaConf.is_missing(node, k)]
    elif isinstance(node, ListConfig):
        children = list(node)
    else:
        return
    for child in children:
        check_judge_servers(child)


def _scalars(trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


def _measure(cfg: DictConfig, trainer, module, datamodule) -> dict[str, float]:
    """The run's scalar metrics. When validation never ran (``trainer.max_steps`` below
    ``trainer.val_check_interval``) and an ``optimized_metric`` is asked for, one validation pass at the
    end measures it."""
    metrics = _scalars(trainer)
    name = cfg.get("optimized_metric")
    never_validated = not any(k.startswith("val/") for k in metrics)
    if name and name not in metrics and never_validated and len(datamodule.val_set or []):
        log.info(
            "validation never ran during fit: validating once at step %d to measure %s",
            trainer.global_step,
            name,
        )
        trainer.validate(module, datamodule=datamodule, verbose=False)
        metrics = {**metrics, **_scalars(trainer)}
    return metrics


def optimized_metric(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """The value a sweep optimises; a finished run never fails over it (a warning and None instead)."""
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics:
        log.warning(
            "optimized_metric=%s was not logged (logged: %s); the run finished, but a sweep gets no value",
            name,
            ", ".join(sorted(metrics)) or "nothing",
        )
        return None
    return metrics[name]


def _finish_wandb(loggers: list) -> None:
    from alignlab.loggers import wandb_loggers

    if wandb_loggers(loggers):
        import wandb

        wandb.finish()


@hydra_app("train")
def main(cfg: DictConfig) -> float | None:
    metrics, _ = train(cfg)
    return optimized_metric(cfg, metrics)


if __name__ == "__main__":
    main()

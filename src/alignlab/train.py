"""Training entry point: ``python -m alignlab.train [overrides]`` (Hydra app over conf/train.yaml).

Wiring only: compose, instantiate, fit, write artifacts, return the optimised metric.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from alignlab.utils.hydra import CONF_DIR
from alignlab.utils.runtime import configure_runtime, get_logger

log = get_logger(__name__)


def train(cfg: DictConfig) -> tuple[dict, dict]:
    """Run one training job described by ``cfg``; returns (metrics, objects)."""
    configure_runtime()
    import lightning as L
    from hydra.utils import instantiate

    from alignlab.loggers import log_run_config
    from alignlab.models.peft import apply_peft
    from alignlab.utils.checks import check_train_config
    from alignlab.utils.config import save_resolved_config
    from alignlab.utils.hydra import instantiate_dict
    from alignlab.utils.io import write_json

    check_train_config(cfg)
    out = Path(cfg.paths.output_dir)
    save_resolved_config(cfg, out)
    L.seed_everything(cfg.seed, workers=True)

    log.info("loading model (%s)", cfg.model.source)
    lm = instantiate(cfg.model).load()
    policy = apply_peft(lm.model, instantiate(cfg.peft) if cfg.get("peft") else None)
    datamodule = instantiate(cfg.data, tokenizer=lm.tokenizer)
    module = instantiate(cfg.algo, policy=policy, tokenizer=lm.tokenizer)
    callbacks = instantiate_dict(cfg.get("callbacks"))
    loggers = instantiate_dict(cfg.get("logger"))
    log_run_config(loggers, cfg)  # the whole resolved config, secrets redacted
    if not loggers:  # logger=none: a learning-rate monitor would have nowhere to write
        callbacks = [c for c in callbacks if type(c).__name__ != "LearningRateMonitor"]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        if trainer.is_global_zero:
            module.save_policy(out / "policy")
            write_json(out / "metrics.json", {"global_step": trainer.global_step, **metrics})
            log.info("policy saved to %s", out / "policy")
    finally:
        _finish_wandb(loggers)
    return metrics, {"trainer": trainer, "module": module, "datamodule": datamodule}


def _finish_wandb(loggers: list) -> None:
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb

        wandb.finish()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics, _ = train(cfg)
    name = cfg.get("optimized_metric")
    if name:
        if name not in metrics:
            raise KeyError(f"optimized_metric={name!r} was not logged; logged: {sorted(metrics)}")
        return metrics[name]
    return None


if __name__ == "__main__":
    main()

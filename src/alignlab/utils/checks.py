"""Start-up checks: a config that contradicts itself fails here with a sentence naming the keys."""

from __future__ import annotations

from omegaconf import DictConfig

from alignlab.utils.config import ConfigError


def check_train_config(cfg: DictConfig) -> None:
    tr = cfg.get("trainer", {})
    if cfg.model.get("source") == "hf" and not cfg.model.get("name_or_path"):
        raise ConfigError("model=hf needs model.name_or_path=<hub id or local directory>")
    from alignlab.models.loader import check_chat_template

    check_chat_template(cfg)  # data.use_chat_template=true on a model without one: before it loads
    from alignlab.rewards.python_fn import check_python_rewards

    check_python_rewards(cfg.get("algo"))  # reward=python: its function imports, before a model loads
    strategy = str(tr.get("strategy", "auto"))
    if strategy == "ddp" and _in_multirun():
        raise ConfigError(
            "trainer.strategy=ddp under hydra --multirun makes rank 1 re-run the whole sweep; "
            "use trainer=ddp_spawn, or one launcher job per run (hydra/launcher=submitit_slurm)"
        )
    module = _algo_class(cfg)
    if getattr(module, "clips_own_gradients", False) and tr.get("gradient_clip_val") is not None:
        raise ConfigError(
            f"algo={module.__name__} optimises manually and clips with algo.max_grad_norm; "
            "set trainer.gradient_clip_val=null (the online-RL experiments do)"
        )
    if (cfg.get("data") or {}).get("keep_ties") and module is not None:
        algo = cfg.algo
        soft = (module.__name__ == "DPOModule" and algo.get("loss_type") == "soft") or (
            module.__name__ == "RewardModule" and algo.get("soft_labels", True)
        )
        if not soft:
            raise ConfigError(
                f"data.keep_ties=true feeds tied pairs (p_chosen 0.5) to {module.__name__}, whose loss reads them "
                "as chosen ≻ rejected; keep ties only with a soft-label loss (algo.loss_type=soft, or the reward "
                "model's algo.soft_labels=true), or set data.keep_ties=false"
            )
    precision = str(tr.get("precision", "32"))
    if "16" in precision and tr.get("accelerator") == "cpu" and precision.startswith("16"):
        raise ConfigError(
            f"trainer.precision={precision} is not supported with trainer.accelerator=cpu; use 32 or bf16-mixed"
        )


def _algo_class(cfg: DictConfig) -> type | None:
    """The LightningModule class ``algo`` builds (None when it names none that imports: instantiation
    reports that later, with Hydra's own message)."""
    from hydra.utils import get_class

    target = (cfg.get("algo") or {}).get("_target_")
    try:
        return get_class(target) if target else None
    except Exception:
        return None


def _in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:
        return False

"""Direct preference optimisation and its family (cDPO, robust DPO, IPO, hinge/SLiC, soft labels, SimPO).

One training step:
  1. policy log-probs of chosen and rejected in ONE forward: by default each pair is one row
     ``prompt | chosen | rejected`` (the prompt runs once, ``share_prompt``), else the concatenated
     (2B, T) batch; the vocabulary head runs on completion positions only;
  2. reference log-probs: from the precomputed table (``precompute_ref_logps``), else one forward of the
     same model with the adapter disabled (LoRA) or of a frozen copy (full fine-tuning);
  3. optional length normalisation (mean instead of sum of token log-probs; always on for SimPO);
  4. the loss from ``alignlab.losses.preference`` and the metrics ``split/rewards/*``, ``split/logps/*``.
"""

from __future__ import annotations

import torch

from alignlab.losses.preference import LOSS_TYPES, preference_loss
from alignlab.models.completion import pair_logps
from alignlab.models.reference import ReferenceModel
from alignlab.modules.base import PolicyModule
from alignlab.modules.ref_cache import (
    RefLogpsCache,
    cache_key,
    compute_ref_table,
    data_fingerprint,
    lookup,
    model_fingerprint,
)
from alignlab.utils.config import ConfigError
from alignlab.utils.runtime import get_logger

log = get_logger(__name__)


class DPOModule(PolicyModule):
    """Offline preference optimisation on (prompt, chosen, rejected[, p_chosen]) batches."""

    def __init__(
        self,
        policy,
        tokenizer,
        optimizer=None,
        scheduler=None,
        loss_type: str = "sigmoid",
        beta: float = 0.1,
        label_smoothing: float = 0.0,
        simpo_gamma: float = 0.5,
        length_normalize: bool | None = None,
        precompute_ref_logps: bool = False,
        ref_cache_dir: str | None = None,
        share_prompt: bool = True,
    ):
        """
        Args:
            policy: the causal LM (LoRA-wrapped or not), built by the entry point.
            tokenizer: its tokenizer.
            optimizer: partial optimiser factory taking ``params``.
            scheduler: partial scheduler factory taking ``optimizer`` (optional).
            loss_type: sigmoid (DPO), cdpo, robust, ipo, hinge, soft (uses p_chosen) or simpo.
            beta: inverse temperature of the implicit reward (tau for IPO, 1/margin for hinge).
            label_smoothing: assumed label flip rate eps (cdpo, robust; optional for sigmoid and simpo).
            simpo_gamma: SimPO's target reward margin gamma.
            length_normalize: average instead of sum token log-probs; None = only for simpo.
            precompute_ref_logps: compute reference log-probs once before training and cache them on disk.
            ref_cache_dir: where the reference tables go; None keeps them in memory only.
            share_prompt: run each pair's prompt once (one row per pair, custom attention mask); off =
                the concatenated (2B, T) forward. Same log-probs either way.
        """
        super().__init__(policy, tokenizer, optimizer, scheduler)
        if loss_type not in LOSS_TYPES:
            raise ConfigError(f"algo.loss_type={loss_type!r} is not one of {', '.join(sorted(LOSS_TYPES))}")
        needs_ref, uses_eps = LOSS_TYPES[loss_type]
        if label_smoothing and not (uses_eps or loss_type == "sigmoid"):
            raise ConfigError(
                f"algo.label_smoothing={label_smoothing} has no effect with algo.loss_type={loss_type}; "
                "use loss_type=cdpo or robust, or set label_smoothing=0"
            )
        if loss_type == "cdpo" and not label_smoothing:
            raise ConfigError("algo.loss_type=cdpo needs algo.label_smoothing > 0 (the assumed flip rate)")
        if not 0.0 <= label_smoothing < 0.5:
            raise ConfigError(f"algo.label_smoothing={label_smoothing} must lie in [0, 0.5)")
        if beta <= 0:
            raise ConfigError(f"algo.beta={beta} must be > 0")
        if loss_type == "simpo" and length_normalize is False:
            raise ConfigError(
                "algo.loss_type=simpo is defined on length-normalised log-probs; "
                "remove algo.length_normalize=false"
            )
        if not needs_ref and precompute_ref_logps:
            log.info("algo.loss_type=%s uses no reference: skipping algo.precompute_ref_logps", loss_type)
            precompute_ref_logps = False
        self.loss_type = loss_type
        self.beta = beta
        self.label_smoothing = label_smoothing
        self.simpo_gamma = simpo_gamma
        self.length_normalize = loss_type == "simpo" if length_normalize is None else bool(length_normalize)
        self.needs_ref = needs_ref
        self.precompute_ref_logps = precompute_ref_logps
        self.ref_cache = RefLogpsCache(ref_cache_dir) if ref_cache_dir else None
        self.share_prompt = share_prompt
        self.ref_forward_calls = 0
        """How many reference forward passes ran (tests assert it stays 0 once the table exists)."""
        self._ref_tables: dict[str, dict[str, torch.Tensor]] = {}
        # pi_ref: under LoRA the adapter switched off (never a copy); under full fine-tuning a frozen
        # copy, unless every reference log-prob is precomputed from the untouched policy before the first
        # update (then the policy itself, read only then). None for reference-free losses.
        self.ref_model = (
            ReferenceModel.of(policy, frozen_copy=not precompute_ref_logps) if needs_ref else None
        )

    # -- log-probs ------------------------------------------------------------------------------
    def pair_logps(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed completion log-probs (2B,) and token counts (2B,), chosen rows then rejected: the one
        function behind the policy, the reference and the precomputed reference table."""
        return pair_logps(model, batch, self.share_prompt)

    # -- reference ------------------------------------------------------------------------------
    def reference_logps(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed reference log-probs (2B,) and token counts (2B,), one forward (counted)."""
        self.ref_forward_calls += 1
        with self.ref_model as ref:
            return self.pair_logps(ref, batch)

    def _ref_for_batch(self, batch: dict, split: str) -> torch.Tensor:
        table = self._ref_tables.get(split)
        if table is None:
            if self.ref_model.kind == "policy":  # full fine-tune: the policy has moved on
                raise RuntimeError(
                    f"no reference for the {split} batch: full fine-tuning with precomputed "
                    "reference log-probs only has them for the fit's train/val sets"
                )
            return self.reference_logps(batch)[0]
        c, r = lookup(table, batch["index"].to(table["ref_chosen_logps"].device), split)
        return torch.cat([c, r]).to(self.device)  # (2B,)

    def setup(self, stage: str) -> None:
        # Fingerprint the reference weights now: ``setup`` runs before Lightning restores a checkpoint, so
        # a resumed full fine-tune still finds the table computed from the untouched policy.
        if self.precompute_ref_logps and self.needs_ref and not hasattr(self, "_ref_model_id"):
            self._ref_model_id = model_fingerprint(self.policy)

    def on_fit_start(self) -> None:
        if not (self.precompute_ref_logps and self.needs_ref):
            return
        loaders = getattr(self.trainer.datamodule, "ordered_dataloaders", None)
        if loaders is None:
            raise ConfigError(
                "algo.precompute_ref_logps=true needs a datamodule with ordered_dataloaders() "
                "(data=preference or a label-app output)"
            )
        model_id = getattr(self, "_ref_model_id", None) or model_fingerprint(self.policy)
        for split, loader in loaders().items():
            self._ref_tables[split] = self._load_or_compute(split, loader, model_id)

    def _load_or_compute(self, split: str, loader, model_id: str) -> dict[str, torch.Tensor]:
        """The reference table of one split (``loader``: its pairs in file order), from the cache or
        one reference pass."""
        data_id, size = data_fingerprint(loader)
        tokenizer = getattr(self.tokenizer, "name_or_path", type(self.tokenizer).__name__)
        key = cache_key(data_id, model_id, tokenizer)
        if self.ref_cache is not None and (table := self.ref_cache.load(key)) is not None:
            log.info("reference log-probs for %s read from %s", split, self.ref_cache.path(key))
            return {k: v.to(self.device) for k, v in table.items()}
        if self.ref_model.kind == "policy" and self.trainer.ckpt_path:
            # the policy has moved away from the reference and there is no frozen copy to recompute it from
            where = self.ref_cache.directory if self.ref_cache else "memory (algo.ref_cache_dir is null)"
            raise ConfigError(
                f"resuming a full fine-tune with algo.precompute_ref_logps=true needs the cached "
                f"reference log-probs of the first run; none found for the {split} set in {where}"
            )
        was_training = self.policy.training
        self.policy.eval()
        try:
            with self.trainer.precision_plugin.forward_context():
                table = compute_ref_table(self.reference_logps, loader, size, self.device)
        finally:
            self.policy.train(was_training)
        if self.ref_cache is not None and self.trainer.is_global_zero:
            path = self.ref_cache.save(key, table)
            log.info("reference log-probs for %s (%d pairs) cached at %s", split, len(loader.dataset), path)
        return {k: v.to(self.device) for k, v in table.items()}

    # -- loss -----------------------------------------------------------------------------------
    def _step(self, batch: dict, split: str) -> torch.Tensor:
        n = batch["chosen_input_ids"].shape[0]
        # 1. policy: chosen and rejected in one forward (prompt shared, or the concatenated (2B, T))
        logps, ntok = self.pair_logps(self.policy, batch)  # (2B,), (2B,)
        # 2. reference: precomputed table, adapter-disabled policy, or frozen copy
        ref_logps = self._ref_for_batch(batch, split) if self.needs_ref else None
        # 3. length normalisation: mean token log-prob
        if self.length_normalize:
            logps = logps / ntok.clamp(min=1)
            ref_logps = ref_logps / ntok.clamp(min=1) if ref_logps is not None else None
        # 4. loss and implicit rewards
        out = preference_loss(
            self.loss_type,
            logps[:n],
            logps[n:],
            ref_logps[:n] if ref_logps is not None else None,
            ref_logps[n:] if ref_logps is not None else None,
            p_chosen=batch.get("p_chosen"),
            beta=self.beta,
            label_smoothing=self.label_smoothing,
            gamma=self.simpo_gamma,
        )
        loss = out.losses.mean()
        metrics = {
            f"{split}/loss": loss.detach(),
            f"{split}/rewards/chosen": out.chosen_rewards.mean(),
            f"{split}/rewards/rejected": out.rejected_rewards.mean(),
            f"{split}/rewards/accuracy": (out.chosen_rewards > out.rejected_rewards).float().mean(),
            f"{split}/rewards/margin": (out.chosen_rewards - out.rejected_rewards).mean(),
            f"{split}/logps/chosen": logps[:n].detach().mean(),
            f"{split}/logps/rejected": logps[n:].detach().mean(),
        }
        train = split == "train"
        self.log(
            f"{split}/loss",
            metrics.pop(f"{split}/loss"),
            prog_bar=True,
            on_step=train,
            on_epoch=not train,
            sync_dist=not train,
            batch_size=n,
        )
        self.log_dict(metrics, on_step=train, on_epoch=not train, sync_dist=not train, batch_size=n)
        return loss

    def on_train_epoch_end(self) -> None:
        # cumulative: with precomputed reference log-probs it stops growing after the precompute pass
        self.log("train/ref_forward_calls", float(self.ref_forward_calls), reduce_fx="max")
        log.info("epoch %d: %d reference forward passes so far", self.current_epoch, self.ref_forward_calls)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    # -- checkpoints ----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)  # the frozen reference copy is rebuilt, never saved
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("ref_model.")
        }

"""Log a table of sampled completions for a few fixed validation prompts."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from alignlab.models.generation import SamplingConfig, sample
from alignlab.utils.io import write_jsonl


class SampleTable(L.Callback):
    """At the end of each validation epoch, sample completions for the first ``num_prompts`` prompts.

    The table goes to wandb (when the run logs there) and to ``<output_dir>/samples/step_<N>.jsonl``.
    """

    def __init__(
        self,
        num_prompts: int = 4,
        max_new_tokens: int = 32,
        temperature: float = 0.7,
        top_p: float = 0.95,
        output_dir: str | None = None,
        seed: int = 0,
    ):
        """
        Args:
            num_prompts: how many validation prompts to sample for.
            max_new_tokens: completion length cap.
            temperature: sampling temperature (0 = greedy).
            top_p: nucleus mass.
            output_dir: where ``samples/`` goes; defaults to the trainer's log dir.
            seed: sampling seed, so tables are comparable across steps.
        """
        self.num_prompts = num_prompts
        self.cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        self.output_dir = output_dir
        self.seed = seed

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.fast_dev_run:
            return
        dm = trainer.datamodule
        val = getattr(dm, "val_set", None)
        if not val:
            return
        items = [val[i] for i in range(min(self.num_prompts, len(val)))]
        gen = sample(
            pl_module.policy,
            pl_module.tokenizer,
            [x["prompt_ids"] for x in items],
            self.cfg,
            generator_seed=self.seed,
        )
        rows = [
            {"step": trainer.global_step, "prompt": str(x.get("prompt", "")), "completion": t}
            for x, t in zip(items, gen.texts)
        ]
        out = (
            Path(self.output_dir or trainer.default_root_dir)
            / "samples"
            / f"step_{trainer.global_step:06d}.jsonl"
        )
        write_jsonl(out, rows)
        from alignlab.loggers import wandb_loggers

        for logger in wandb_loggers(trainer.loggers):
            logger.log_table(
                key="samples",
                columns=["step", "prompt", "completion"],
                data=[[r["step"], r["prompt"], r["completion"]] for r in rows],
            )

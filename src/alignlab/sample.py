"""Sample app: ``python -m alignlab.sample [task=<name>] model=smollm2_135m n_prompts=64``.

Wiring only: two completions per prompt of the task's split from a policy (the base model, or
``policy_path``), written as ``samples.jsonl`` (prompt, first, second) for the label app to label
(``pairs_path=<run>/samples.jsonl``) with any judge. Finished batches are journaled beside the output, so
a killed run resumes where it stopped. On CPU the policy samples in bf16 weights where the CPU computes
bf16 natively (``trainer=cpu``'s rule, ``load_policy``); the report's ``precision`` says which.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from alignlab.utils.app import hydra_app
from alignlab.utils.runtime import configure_runtime, get_logger

log = get_logger(__name__)


def check_sample_config(cfg: DictConfig) -> None:
    from alignlab.utils.config import ConfigError

    if cfg.get("n_prompts") is not None and int(cfg.n_prompts) < 1:
        raise ConfigError(f"n_prompts={cfg.n_prompts} must be >= 1 (or null for the whole split)")
    if int(cfg.get("prompt_offset") or 0) < 0:
        raise ConfigError(
            f"prompt_offset={cfg.prompt_offset} must be >= 0 (the number of the split's prompts to skip)"
        )
    if int(cfg.batch_size) < 1:
        raise ConfigError(f"batch_size={cfg.batch_size} must be >= 1")
    if cfg.model.get("source") == "hf" and not cfg.model.get("name_or_path"):
        raise ConfigError("model=hf needs model.name_or_path=<hub id or local directory>")


def sample_pair_set(cfg: DictConfig, task, journal: Path):
    """Two completions per prompt of ``task``'s ``cfg.split`` from the policy of ``cfg``: a ``PairSet``, and
    the precision the policy sampled in (``fp32``, or ``bf16`` on a CPU with native bf16: ``load_policy``)."""
    from hydra.utils import instantiate

    from alignlab.data.tokenize import Formatter
    from alignlab.models.reference import load_policy
    from alignlab.tasks.pairs import dir_stamp, sample_pairs, work_fingerprint

    prompts = task.prompts(cfg.split)
    offset = int(cfg.get("prompt_offset") or 0)
    if offset:
        if offset >= len(prompts):
            from alignlab.utils.config import ConfigError

            raise ConfigError(
                f"prompt_offset={offset}: the {cfg.split} split has only {len(prompts)} prompts; "
                f"use prompt_offset < {len(prompts)}"
            )
        prompts = prompts[offset:]
    if cfg.get("n_prompts"):
        prompts = prompts[: int(cfg.n_prompts)]
    loaded = load_policy(instantiate(cfg.model), cfg.get("policy_path"), cfg.get("device", "auto"))
    model, tok = loaded.model, loaded.tokenizer
    sampling = instantiate(cfg.sampling)
    pf = cfg.prompt_format
    max_prompt = int(pf.max_prompt_length)
    fmt = Formatter(
        tok, pf.use_chat_template, pf.system_prompt, max_prompt, max_prompt + sampling.max_new_tokens + 1
    )
    policy = cfg.get("policy_path")
    plain = [OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "prompt_format")]
    where = cfg.split if not offset else f"{cfg.split}[{offset}:]"  # an unchanged fingerprint without offset
    work = work_fingerprint(*plain, policy, dir_stamp(policy), cfg.get("device"), where, loaded.precision)
    pairs = sample_pairs(
        model, tok, prompts, sampling, fmt, int(cfg.batch_size), int(cfg.seed), cfg.progress,
        journal_path=journal, fingerprint=work,
    )  # fmt: skip
    return pairs, loaded.precision


def sample(cfg: DictConfig) -> dict:
    """Run one sampling job described by ``cfg``; returns its summary (also in ``samples.report.json``)."""
    configure_runtime()
    from alignlab.tasks import build_task
    from alignlab.utils.config import save_resolved_config
    from alignlab.utils.io import write_json

    check_sample_config(cfg)
    out = Path(str(cfg.output_path))
    save_resolved_config(cfg, out.parent)
    task = build_task(cfg.task)
    journal = out.parent / f".{out.stem}.sampling.journal.jsonl"
    pairs, precision = sample_pair_set(cfg, task, journal)
    pairs.save(str(out))
    journal.unlink(missing_ok=True)
    n = len(pairs.prompts)
    report = {
        "task": task.name,
        "split": cfg.split,
        "pairs_sampled": n,
        "precision": precision,
        "output": str(out),
    }
    write_json(out.with_suffix(".report.json"), report)
    print(f"[sample] wrote {n} prompts x 2 completions to {out}", flush=True)
    return report


@hydra_app("sample")
def main(cfg: DictConfig) -> None:
    sample(cfg)


if __name__ == "__main__":
    main()

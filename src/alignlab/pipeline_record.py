"""What a pipeline job's record keeps of its stages beyond the metrics: training curves (with their points,
so a published record can redraw them) and example completions."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


def curve(stage: dict, cfg: DictConfig) -> dict:
    """A training stage's curve: its metric, panel, training samples per step, and its points (read from
    the stage's CSV log, so a published result can redraw it)."""
    from alignlab.compare_plots import read_curve

    c = curve_spec(stage, cfg)
    if Path(c["csv"]).exists():
        xs, ys = read_curve(Path(c["csv"]), c["metric"])
        c["points"] = [[x, round(y, 5)] for x, y in zip(xs, ys)]
    return c


def curve_spec(stage: dict, cfg: DictConfig) -> dict:
    algo = cfg.algo._target_.rsplit(".", 1)[-1]
    batch = int(cfg.data.batch_size)
    if algo in ("RewardModule", "DPOModule", "OnlineDPOModule"):  # online DPO: one pair per prompt a step
        return {"stage": stage["stage"], "csv": f"{stage['dir']}/csv/metrics.csv", "metric": "train/loss",
                "panel": f"{stage['stage']}: train/loss", "samples_per_step": batch}  # fmt: skip
    # online RL: a step is one optimiser update; PPO makes ppo_epochs x num_minibatches per rollout batch
    per_batch = int(cfg.algo.get("ppo_epochs", 1)) * int(cfg.algo.get("num_minibatches", 1))
    completions = batch * int(cfg.algo.get("k", 1))
    reward = cfg.algo.reward._target_.rsplit(".", 1)[-1]
    return {"stage": stage["stage"], "csv": f"{stage['dir']}/csv/metrics.csv", "metric": "objective/score",
            "panel": f"RL score ({reward})", "samples_per_step": completions / per_batch}  # fmt: skip


def examples_of(eval_dir: Path, n: int = 4) -> list[dict]:
    """The first held-out prompts' completions of an evaluation (the report shows them side by side)."""
    import json

    path = eval_dir / "samples.jsonl"
    if not path.exists():
        return []
    from alignlab.utils.io import jsonl_lines

    rows = [json.loads(x) for x in jsonl_lines(path.read_text(encoding="utf-8"))[: n * 8]]
    seen, out = set(), []
    for r in rows:  # the first sample of each prompt
        if r["prompt"] not in seen and len(out) < n:
            seen.add(r["prompt"])
            out.append({k: r[k] for k in ("prompt", "completion", "gold")})
    return out


def job_config(cfg: DictConfig, record: dict) -> dict:
    """The pipeline job's wandb run config: what a sweep varies (method, seed, variant, profile) at the top,
    as a wandb agent sets it, and the whole resolved config, secrets redacted, under ``pipeline``."""
    from alignlab.utils.config import redact, to_container

    full = redact(to_container(cfg))
    full.pop("hydra", None)
    return {**{k: record[k] for k in ("method", "seed", "variant", "profile")}, "pipeline": full}


def machine_summary() -> dict:
    """Where the job ran: CPU model, cores, the accelerator if any (results are compared across machines)."""
    import os
    import platform

    import torch

    from alignlab.utils.precision import cpuinfo_field

    cpu = cpuinfo_field("model name") or platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__}

"""The train entry point: tiny SFT learns, artifacts land in the run dir, secrets never do."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alignlab.train import train
from conftest import REPO, compose


def _train_losses(run_dir: Path) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


def test_tiny_sft_loss_falls(tmp_path):
    cfg = compose(
        ["experiment=sft_tiny", f"paths.output_dir={tmp_path}", "trainer.enable_progress_bar=false"]
    )
    metrics, objs = train(cfg)
    losses = _train_losses(tmp_path)
    assert len(losses) >= 4
    assert losses[-1] < losses[0] - 1.0, losses  # a random byte model starts near ln(384) = 5.95
    assert metrics["val/loss"] < 3.5 and metrics["val/ppl"] == pytest.approx(
        torch.exp(torch.tensor(metrics["val/loss"])).item(), rel=1e-4
    )
    for name in ("config_resolved.yaml", "metrics.json", "policy/config.json", "checkpoints/last.ckpt"):
        assert (tmp_path / name).exists(), name
    assert list((tmp_path / "samples").glob("step_*.jsonl"))


def test_lora_sft_moves_adapter_not_base(tmp_path):
    cfg = compose(
        [
            "experiment=sft_tiny",
            "peft=lora",
            f"paths.output_dir={tmp_path}",
            "logger=none",
            "callbacks=none",
            "trainer.max_steps=10",
            "trainer.enable_progress_bar=false",
        ]
    )
    from alignlab.models import ModelSpec

    base = {n: p.clone() for n, p in ModelSpec(source="tiny").load().model.named_parameters()}
    _, objs = train(cfg)
    policy = objs["module"].policy
    moved = 0
    for n, p in policy.named_parameters():
        if "lora_B" in n:
            moved += int(p.abs().sum() > 0)
        elif not p.requires_grad:
            key = n.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(p, base[key]), n
    assert moved > 0
    assert (tmp_path / "policy" / "adapter_config.json").exists()


def test_checkpoint_is_lean_and_resumes(tmp_path):
    over = [
        "experiment=sft_tiny",
        "peft=lora",
        f"paths.output_dir={tmp_path}",
        "logger=none",
        "trainer.enable_progress_bar=false",
        "trainer.max_steps=20",
        "callbacks.checkpoint.every_n_train_steps=10",
        "~callbacks.samples",
    ]
    train(compose(over))
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"])
    assert ckpt["optimizer_states"] and ckpt["global_step"] == 20
    metrics, objs = train(compose([*over, "trainer.max_steps=30", "ckpt_path=last"]))
    assert objs["trainer"].global_step == 30


def test_secrets_never_reach_the_run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_SERVICE_API_KEY", "sk-test-secret-123456")
    cfg = compose(
        [
            "experiment=sft_tiny",
            f"paths.output_dir={tmp_path}",
            "trainer.max_steps=2",
            "trainer.enable_progress_bar=false",
            "+extra.api_key=sk-test-secret-123456",
            "+extra.note=token is sk-test-secret-123456",
        ]
    )
    train(cfg)
    text = (tmp_path / "config_resolved.yaml").read_text()
    assert "REDACTED" in text
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert b"sk-test-secret-123456" not in f.read_bytes(), f


def test_wandb_offline_run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("MY_API_KEY", "sk-wandb-secret-987654")
    cfg = compose(
        [
            "experiment=sft_tiny",
            "logger=wandb",
            f"paths.output_dir={tmp_path}",
            "trainer.max_steps=4",
            "trainer.val_check_interval=2",
            "trainer.enable_progress_bar=false",
            "+extra.api_key=sk-wandb-secret-987654",
        ]
    )
    train(cfg)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    for f in runs[0].rglob("*"):
        if f.is_file():
            assert b"sk-wandb-secret-987654" not in f.read_bytes(), f


def test_cli_returns_metric_and_fast_dev_run(tmp_path):
    env = {"OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "alignlab.train",
            "experiment=sft_tiny",
            "debug=fast_dev_run",
            f"hydra.run.dir={tmp_path}/run",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "config_resolved.yaml").exists()


def test_export_merged_loads_with_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    from alignlab.export import export_merged
    from alignlab.models import ModelSpec

    cfg = compose(
        [
            "experiment=sft_tiny",
            "peft=lora",
            f"paths.output_dir={tmp_path}",
            "logger=none",
            "callbacks=none",
            "trainer.max_steps=5",
            "trainer.enable_progress_bar=false",
        ]
    )
    _, objs = train(cfg)
    policy = objs["module"].policy.eval()
    out = export_merged(tmp_path / "policy", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, policy(input_ids=ids).logits, atol=1e-4)
    # and the saved adapter directory loads back as a policy through the one loader
    again = ModelSpec(source="hf", name_or_path=str(tmp_path / "policy")).load()
    with torch.no_grad():
        assert torch.allclose(again.model(input_ids=ids).logits, policy(input_ids=ids).logits, atol=1e-4)

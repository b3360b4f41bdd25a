"""Faults: a non-finite loss stops the run naming the step and keeps the last good checkpoint."""

from __future__ import annotations

import pytest
import torch

from alignlab.callbacks.nan_guard import NonFiniteLossError
from alignlab.modules.sft import SFTModule
from alignlab.utils.io import OutputError, write_text
from conftest import compose


class _PoisonAfter(SFTModule):
    poison_step = 12

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step >= self.poison_step else loss


def test_nan_loss_stops_with_step_and_keeps_checkpoint(tmp_path, monkeypatch):
    import alignlab.modules.sft as sft

    monkeypatch.setattr(sft, "SFTModule", _PoisonAfter)
    cfg = compose(
        [
            "experiment=sft_tiny",
            f"paths.output_dir={tmp_path}",
            "logger=none",
            "trainer.enable_progress_bar=false",
            "callbacks.checkpoint.every_n_train_steps=10",
            "~callbacks.samples",
            "trainer.val_check_interval=100",
        ]
    )
    from alignlab.train import train

    with pytest.raises(NonFiniteLossError, match=r"at step 12; .*last good checkpoint is .*last.ckpt"):
        train(cfg)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 10
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_permission_error_is_one_clear_line(tmp_path, monkeypatch):
    import tempfile

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(OutputError, match=r"cannot write .*x.json: permission denied"):
        write_text(tmp_path / "x.json", "{}")


def test_disk_full_is_one_clear_line(tmp_path, monkeypatch):
    import errno
    import os

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError, match="the disk is full"):
        write_text(tmp_path / "x.json", "{}")
    assert not list(tmp_path.iterdir())  # no half-written file, no temp file left

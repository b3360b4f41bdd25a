"""The training data position survives a restart: a run restored from a checkpoint taken inside an epoch
trains on exactly the batches the uninterrupted run trained on after that point, in the same order."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from alignlab.data.datamodules import ResumableLoader, SFTDataModule
from alignlab.models.tiny import tiny_tokenizer


class Recorder(L.LightningModule):
    """Trains one parameter and records the rows of every training batch."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        ids = batch["input_ids"]
        self.seen.append([int(x) for x in ids[:, :6].sum(-1)])  # a row's identity: its first bytes
        return (self.w - ids.float().mean()) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _data(path: Path, n: int) -> SFTDataModule:
    # n training rows: one more is written, the validation split takes it
    rows = [{"prompt": f"{i:02d} prompt", "completion": f" answer {i}"} for i in range(n + 1)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return SFTDataModule(
        train_path=str(path), val_fraction=0.0, batch_size=2, seed=3, shuffle=True, tokenizer=tiny_tokenizer()
    )


def _trainer(root: Path, max_steps: int, callbacks=()) -> L.Trainer:
    return L.Trainer(
        default_root_dir=root,
        max_steps=max_steps,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
        accelerator="cpu",
    )


@pytest.mark.parametrize("resume_step", [3, 7])  # inside epoch 1, and inside epoch 2 (5 batches each)
def test_resume_mid_epoch_continues_the_same_batches(tmp_path, resume_step):
    data = tmp_path / "rows.jsonl"
    straight = Recorder()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1)
    _trainer(tmp_path, 12, [ckpt]).fit(straight, datamodule=_data(data, 10))
    assert len(straight.seen) == 12
    assert straight.seen[:5] != straight.seen[5:10]  # shuffled anew each epoch

    path = next((tmp_path / "ckpt").glob(f"*step={resume_step}.ckpt"))
    state = torch.load(path, weights_only=True)["loops"]["fit_loop"]["state_dict"]
    assert state["combined_loader"][0]["size"] == 10  # the loader is checkpointed as resumable

    resumed = Recorder()
    _trainer(tmp_path / "resumed", 12).fit(resumed, datamodule=_data(data, 10), ckpt_path=path)
    assert resumed.seen == straight.seen[resume_step:]


def test_resume_at_epoch_boundary_starts_the_next_epoch(tmp_path):
    data = tmp_path / "rows.jsonl"
    straight = Recorder()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5, save_top_k=-1)
    _trainer(tmp_path, 10, [ckpt]).fit(straight, datamodule=_data(data, 10))
    path = next((tmp_path / "ckpt").glob("*step=5.ckpt"))
    resumed = Recorder()
    _trainer(tmp_path / "resumed", 10).fit(resumed, datamodule=_data(data, 10), ckpt_path=path)
    assert resumed.seen == straight.seen[5:]


def test_changed_data_restarts_the_epoch_and_says_so(tmp_path, caplog):
    data = tmp_path / "rows.jsonl"
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    _trainer(tmp_path, 2, [ckpt]).fit(Recorder(), datamodule=_data(data, 10))
    path = next((tmp_path / "ckpt").glob("*step=2.ckpt"))
    resumed = Recorder()
    with caplog.at_level("WARNING"):
        _trainer(tmp_path / "resumed", 4).fit(
            resumed, datamodule=_data(tmp_path / "more.jsonl", 12), ckpt_path=path
        )
    assert "the training data changed since the checkpoint (10 rows" in caplog.text
    assert len(resumed.seen) == 2


def test_loader_without_shuffle_keeps_file_order(tmp_path):
    dm = SFTDataModule(
        train_path=str(tmp_path / "rows.jsonl"),
        val_fraction=0.0,
        batch_size=3,
        shuffle=False,
        tokenizer=tiny_tokenizer(),
    )
    _data(tmp_path / "rows.jsonl", 7)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, ResumableLoader) and len(loader) == 3
    assert list(loader.sampler) == list(range(7))

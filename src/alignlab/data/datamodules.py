"""Datamodules for SFT examples, preference pairs and prompts, from local files or the hub."""

from __future__ import annotations

import random

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from alignlab.data.collate import PreferenceCollator, PromptCollator, SFTCollator
from alignlab.data.rows import load_rows
from alignlab.data.tokenize import Formatter, encode_rows
from alignlab.utils.runtime import get_logger

log = get_logger(__name__)


class ListDataset(Dataset):
    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


class RowsDataModule(L.LightningDataModule):
    """Shared machinery: read + validate rows, split off validation, encode, batch."""

    kind = "sft"

    def __init__(
        self,
        train_path: str,
        val_path: str | None = None,
        val_fraction: float = 0.1,
        columns: dict | None = None,
        skip_invalid: bool = False,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        max_length: int = 256,
        max_prompt_length: int = 128,
        truncation: str = "truncate",
        use_chat_template: bool | str = "auto",
        system_prompt: str | None = None,
        limit: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
        num_workers: int = 0,
        tokenizer=None,
    ):
        """
        Args:
            train_path: JSONL/JSON/Parquet/CSV file, or ``hf://name[:config][@split]``.
            val_path: validation file; when None, ``val_fraction`` of the training rows (seeded).
            val_fraction: held-out share of ``train_path`` when no ``val_path`` is given.
            columns: canonical field -> column name in the file (e.g. ``{prompt: question}``).
            skip_invalid: drop invalid rows and report counts instead of failing on the first one.
            batch_size: training batch size (per device).
            eval_batch_size: validation batch size; defaults to ``batch_size``.
            max_length: cap on prompt + completion tokens.
            max_prompt_length: cap on prompt tokens (prompts keep their last tokens).
            truncation: ``truncate``, ``drop`` (counted) or ``error`` for over-length rows.
            use_chat_template: ``auto`` uses the tokenizer's chat template when it has one.
            system_prompt: optional system turn for chat templates.
            limit: read at most this many rows per file (quick runs).
            seed: seed of the train/validation split.
            shuffle: shuffle training batches.
            num_workers: DataLoader workers.
            tokenizer: set by the entry point after the model is loaded.
        """
        super().__init__()
        # plain containers only: checkpoints must load with torch.load(weights_only=True)
        columns = {str(k): str(v) for k, v in dict(columns or {}).items() if v is not None}
        self.save_hyperparameters(ignore=["tokenizer"])
        self.tokenizer = tokenizer
        self.train_set: ListDataset | None = None
        self.val_set: ListDataset | None = None
        self.reports: list = []

    def _formatter(self) -> Formatter:
        h = self.hparams
        return Formatter(
            self.tokenizer,
            h.use_chat_template,
            h.system_prompt,
            h.max_prompt_length,
            h.max_length,
            h.truncation,
        )

    def _load(self, path: str) -> list[dict]:
        h = self.hparams
        rows, report = load_rows(path, self.kind, dict(h.columns or {}), h.skip_invalid, h.limit)
        self.reports.append(report)
        if report.skipped:
            log.warning(report.summary())
        return rows

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.tokenizer is None:
            raise RuntimeError("the datamodule needs a tokenizer: pass tokenizer=... (the entry points do)")
        h = self.hparams
        train_rows = self._load(h.train_path)
        if h.val_path:
            val_rows = self._load(h.val_path)
        else:
            order = list(range(len(train_rows)))
            random.Random(h.seed).shuffle(order)
            n_val = max(1, round(len(train_rows) * h.val_fraction)) if len(train_rows) > 1 else 0
            val_rows = [train_rows[i] for i in sorted(order[:n_val])]
            train_rows = [train_rows[i] for i in sorted(order[n_val:])]
        fmt = self._formatter()
        self.train_set = ListDataset(encode_rows(train_rows, self.kind, fmt))
        self.val_set = ListDataset(encode_rows(val_rows, self.kind, fmt))
        self.truncation_counts = dict(fmt.counts)
        if fmt.counts:
            log.info("truncation: %s", dict(fmt.counts))

    def collator(self):
        return SFTCollator(self.tokenizer.pad_token_id)

    def train_dataloader(self) -> DataLoader:
        sampler = None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Our own DistributedSampler, so that data.shuffle is honoured under DDP (Lightning's
            # replacement sampler always shuffles the training set); Lightning keeps it and sets its epoch.
            sampler = DistributedSampler(self.train_set, shuffle=self.hparams.shuffle, seed=self.hparams.seed)
        return DataLoader(
            self.train_set,
            batch_size=self.hparams.batch_size,
            shuffle=self.hparams.shuffle if sampler is None else False,
            sampler=sampler,
            collate_fn=self.collator(),
            num_workers=self.hparams.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        bs = self.hparams.eval_batch_size or self.hparams.batch_size
        return DataLoader(
            self.val_set,
            batch_size=bs,
            shuffle=False,
            collate_fn=self.collator(),
            num_workers=self.hparams.num_workers,
        )


class SFTDataModule(RowsDataModule):
    """(prompt, completion) rows; the loss covers completion tokens only."""

    kind = "sft"


class PreferenceDataModule(RowsDataModule):
    """(prompt, chosen, rejected[, p_chosen]) rows; whole-conversation pairs are split automatically."""

    kind = "preference"

    def collator(self):
        return PreferenceCollator(self.tokenizer.pad_token_id)


class PromptDataModule(RowsDataModule):
    """Prompt-only rows for online RL and evaluation."""

    kind = "prompts"

    def collator(self):
        return PromptCollator()

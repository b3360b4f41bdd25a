"""Datamodules for SFT examples, preference pairs and prompts, from local files or the hub."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

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


class ResumableSampler(DistributedSampler):
    """The training order: a permutation seeded by ``seed + epoch`` (or the file order), sharded over the
    ranks like ``DistributedSampler`` (one rank when not distributed), which can start mid-epoch.

    A run restored from a checkpoint taken inside an epoch calls ``skip_batches(k)``: its next pass
    starts at batch ``k`` of the same order, so the resumed run sees exactly the batches the
    uninterrupted run would have seen. Being a ``DistributedSampler``, Lightning keeps it under DDP and
    calls ``set_epoch`` on it.
    """

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool = True, seed: int = 0):
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        kwargs = {} if distributed else {"num_replicas": 1, "rank": 0}
        super().__init__(dataset, shuffle=shuffle, seed=seed, **kwargs)
        self.batch_size = batch_size
        self._skip: tuple[int, int] | None = None  # (epoch, indices to skip)

    @property
    def num_batches(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def skip_batches(self, epoch: int, n_batches: int) -> None:
        """Start the pass over ``epoch`` after ``n_batches`` batches of this rank's share of it."""
        self._skip = (epoch, max(0, n_batches) * self.batch_size) if n_batches else None

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        if self._skip is not None and self._skip[0] == self.epoch:
            indices = indices[self._skip[1] :]
            self._skip = None
        return iter(indices)


class ResumableLoader(DataLoader):
    """A training ``DataLoader`` whose position Lightning checkpoints (it implements ``state_dict`` /
    ``load_state_dict``, so Lightning treats it as resumable).

    The position restored is the number of batches the fit loop finished in the interrupted epoch (read
    from the restored loop, not counted here: Lightning fetches batches ahead of the step that trains on
    them, so a count of batches handed out would overshoot). The state saved identifies the order (epoch,
    seed, size); a data set of another size cannot resume mid-epoch and says so.
    """

    def state_dict(self) -> dict:
        s = self.sampler
        return {
            "epoch": int(s.epoch),
            "seed": int(s.seed),
            "size": len(s.dataset),
            "shuffle": bool(s.shuffle),
        }

    def load_state_dict(self, state: dict) -> None:
        s = self.sampler
        if state.get("size") != len(s.dataset) or state.get("seed") != s.seed:
            log.warning(
                "the training data changed since the checkpoint (%s rows, seed %s; now %d rows, seed %d): "
                "the interrupted epoch restarts from its first batch",
                state.get("size"),
                state.get("seed"),
                len(s.dataset),
                s.seed,
            )
            s.skip_batches(s.epoch, 0)


def batches_done_in_epoch(trainer) -> int:
    """Batches of the current epoch the fit loop finished before the checkpoint it restarts from (0 for a
    fresh run). Read while the restored loop is set up, before Lightning resets its progress counters."""
    loop = getattr(trainer, "fit_loop", None) if trainer is not None else None
    if loop is None or not loop.restarting:
        return 0
    return int(loop.epoch_loop.batch_progress.current.processed)


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
        self._rows: tuple[list[dict], list[dict]] | None = None

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

    def read_rows(self) -> tuple[list[dict], list[dict]]:
        """Read and validate the rows and split off validation: (train rows, validation rows). Needs no
        tokenizer, so the entry points call it before loading the model (a bad row costs seconds, not a
        model load); ``setup`` encodes the same rows."""
        if self._rows is not None:
            return self._rows
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
            if not val_rows:
                log.warning(
                    "%s has %d usable row: the validation split is empty, so no val/ metric will be logged; "
                    "add rows or give data.val_path",
                    h.train_path,
                    len(train_rows),
                )
        self._rows = (train_rows, val_rows)
        return self._rows

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.tokenizer is None:
            raise RuntimeError("the datamodule needs a tokenizer: pass tokenizer=... (the entry points do)")
        train_rows, val_rows = self.read_rows()
        fmt = self._formatter()
        self.train_set = ListDataset(encode_rows(train_rows, self.kind, fmt))
        self.val_set = ListDataset(encode_rows(val_rows, self.kind, fmt))
        self.truncation_counts = dict(fmt.counts)
        if fmt.counts:
            log.info("truncation: %s", dict(fmt.counts))

    def collator(self):
        return SFTCollator(self.tokenizer.pad_token_id)

    def train_dataloader(self) -> DataLoader:
        # Our own sampler (a DistributedSampler, so Lightning keeps it under DDP and data.shuffle is
        # honoured; Lightning's replacement always shuffles), which resumes mid-epoch at the batch where
        # the checkpointed run stopped.
        h = self.hparams
        sampler = ResumableSampler(self.train_set, h.batch_size, shuffle=h.shuffle, seed=h.seed)
        skip = batches_done_in_epoch(self.trainer)
        if 0 < skip < sampler.num_batches:
            sampler.set_epoch(self.trainer.current_epoch)
            sampler.skip_batches(self.trainer.current_epoch, skip)
            log.info(
                "resuming epoch %d at batch %d of %d", self.trainer.current_epoch, skip, sampler.num_batches
            )
        return ResumableLoader(
            self.train_set,
            batch_size=h.batch_size,
            sampler=sampler,
            collate_fn=self.collator(),
            num_workers=h.num_workers,
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

    def ordered_dataloaders(self) -> dict[str, DataLoader]:
        """Each non-empty split in file order at the evaluation batch size, for passes over all the data
        outside training (DPO's precomputed reference log-probs); a private generator, so iterating them
        does not move the global RNG."""
        bs = self.hparams.eval_batch_size or self.hparams.batch_size
        splits = {"train": self.train_set, "val": self.val_set}
        return {
            name: DataLoader(
                ds, batch_size=bs, collate_fn=self.collator(), generator=torch.Generator().manual_seed(0)
            )
            for name, ds in splits.items()
            if ds is not None and len(ds)
        }


class SFTDataModule(RowsDataModule):
    """(prompt, completion) rows; the loss covers completion tokens only."""

    kind = "sft"


class PreferenceDataModule(RowsDataModule):
    """(prompt, chosen, rejected[, p_chosen]) rows; whole-conversation pairs are split automatically.

    A tie (``p_chosen`` = 0.5: no preference, e.g. a labeller's tie kept with ``keep_ties=true``) is not a
    training preference: such rows are dropped and counted unless ``keep_ties`` (for losses that read the
    soft label, which then pulls the two rewards together; a hard loss would read chosen ≻ rejected).
    """

    kind = "preference"

    def __init__(self, *args, keep_ties: bool = False, **kwargs):
        """
        Args:
            keep_ties: keep rows with ``p_chosen`` = 0.5 (only for losses that read soft labels).
            *args, **kwargs: the ``RowsDataModule`` arguments.
        """
        if kwargs.get("columns") is not None:  # save_hyperparameters reads this frame too: plain containers
            kwargs["columns"] = {str(k): str(v) for k, v in dict(kwargs["columns"]).items() if v is not None}
        super().__init__(*args, **kwargs)
        self.keep_ties = bool(keep_ties)

    def _load(self, path: str) -> list[dict]:
        rows = super()._load(path)
        if self.keep_ties:
            return rows
        kept = [r for r in rows if r.get("p_chosen") != 0.5]
        if len(kept) < len(rows):
            log.info("%s: %d tied pairs (p_chosen 0.5) dropped; data.keep_ties=true keeps them for a soft-label "
                     "loss", path, len(rows) - len(kept))  # fmt: skip
        return kept

    def collator(self):
        return PreferenceCollator(self.tokenizer.pad_token_id)


class PromptDataModule(RowsDataModule):
    """Prompt-only rows for online RL and evaluation."""

    kind = "prompts"

    def collator(self):
        return PromptCollator()

"""Process-wide defaults that keep runs quiet, reproducible and offline-safe."""

from __future__ import annotations

import logging
import os
import warnings


def configure_runtime() -> None:
    """Set environment defaults before heavy imports: no tokenizer thread storms, no hub telemetry."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("WANDB_SILENT", "true")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`isinstance\\(treespec, LeafSpec\\)`.*")
    logging.getLogger("transformers").setLevel(logging.ERROR)


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)

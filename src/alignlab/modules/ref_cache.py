"""Reference log-probs of preference pairs, precomputed once and cached on disk.

The cache key is a hash of (the encoded data: every token id and loss mask of every pair, in order; a
fingerprint of the reference weights; the tokenizer), so a rerun on the same data, model and tokenisation
reads the file and does no reference forward at all, while any change computes a fresh table.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from alignlab.utils.io import atomic_open
from alignlab.utils.runtime import get_logger

log = get_logger(__name__)

CACHE_VERSION = 2


def data_fingerprint(batches: Iterable[dict]) -> tuple[str, int]:
    """Hash of the encoded pairs in the loader's order (each pair's index and its chosen and rejected
    token ids and loss masks, padding dropped), and the size of a table indexed by ``index``."""
    h = hashlib.sha256()
    size = 0
    for batch in batches:
        for i, index in enumerate(batch["index"].tolist()):
            h.update(str(index).encode())
            size = max(size, int(index) + 1)
            for side in ("chosen", "rejected"):
                keep = batch[f"{side}_attention_mask"][i].bool()
                for name in ("input_ids", "loss_mask"):
                    h.update(f"{side}_{name}".encode())
                    h.update(batch[f"{side}_{name}"][i][keep].cpu().numpy().astype(np.int64).tobytes())
    return h.hexdigest()[:16], size


def model_fingerprint(model, samples_per_tensor: int = 256) -> str:
    """Hash of the reference weights: names, shapes, dtype and a strided sample of every base tensor.

    LoRA parameters are skipped (the reference is the model with the adapter disabled), and peft's name
    prefixes are stripped, so a wrapped and an unwrapped copy of one base model agree.
    """
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        if "lora_" in name:
            continue
        name = name.replace("base_model.model.", "").replace(".base_layer", "")
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // samples_per_tensor)
        sample = flat[::step][:samples_per_tensor].float().cpu().numpy()
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
        h.update(sample.tobytes())
    return h.hexdigest()[:16]


def cache_key(data: str, model: str, tokenizer: str) -> str:
    payload = json.dumps(
        {"v": CACHE_VERSION, "data": data, "model": model, "tok": tokenizer}, sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


class RefLogpsCache:
    """A directory of ``<key>.pt`` files, each holding a (N,) table of reference chosen / rejected logps."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory).expanduser()

    def path(self, key: str) -> Path:
        return self.directory / f"ref_logps_{key}.pt"

    def load(self, key: str) -> dict[str, torch.Tensor] | None:
        p = self.path(key)
        if not p.exists():
            return None
        try:
            data = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # a corrupt file is recomputed, not fatal
            log.warning("ignoring unreadable reference cache %s (%s); recomputing", p, e)
            return None
        if not {"ref_chosen_logps", "ref_rejected_logps"} <= set(data):
            return None
        return data

    def save(self, key: str, table: dict[str, torch.Tensor]) -> Path:
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in table.items()}, buf)
        with atomic_open(self.path(key), "wb", encoding=None) as f:
            f.write(buf.getvalue())
        return self.path(key)


@torch.no_grad()
def compute_ref_table(
    ref_logps_fn: Callable[[dict], tuple[torch.Tensor, torch.Tensor]],
    batches: Iterable[dict],
    size: int,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Run ``ref_logps_fn(batch) -> (summed logps (2B,), token counts (2B,))`` over ``batches`` and scatter
    the results by ``batch["index"]`` into (size,) tables; rows never seen stay NaN."""
    chosen = torch.full((size,), float("nan"), dtype=torch.float32)
    rejected = torch.full((size,), float("nan"), dtype=torch.float32)
    from tqdm import tqdm

    for batch in tqdm(batches, desc="reference log-probs", unit="batch", disable=None):  # bar on a terminal
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        logps, _ = ref_logps_fn(batch)
        n = batch["chosen_input_ids"].shape[0]
        idx = batch["index"].cpu()
        chosen[idx] = logps[:n].float().cpu()
        rejected[idx] = logps[n:].float().cpu()
    return {"ref_chosen_logps": chosen, "ref_rejected_logps": rejected}


def lookup(
    table: dict[str, torch.Tensor], index: torch.Tensor, split: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference (chosen, rejected) logps of the pairs ``index`` (B,); a clear error for unknown rows."""
    size = table["ref_chosen_logps"].shape[0]
    if int(index.max()) >= size:
        raise KeyError(
            f"{split} pair index {int(index.max())} is outside the precomputed reference table "
            f"({size} rows); the data changed after precomputation"
        )
    c = table["ref_chosen_logps"][index]
    r = table["ref_rejected_logps"][index]
    if torch.isnan(c).any() or torch.isnan(r).any():
        raise KeyError(
            f"{split} pairs {index[torch.isnan(c) | torch.isnan(r)].tolist()} have no precomputed "
            "reference log-probs"
        )
    return c, r

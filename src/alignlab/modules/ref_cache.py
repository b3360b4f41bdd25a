"""Pieces of pairwise training that more than one module can use: the concatenated chosen+rejected
forward, and reference log-probs precomputed once and cached on disk.

The cache key is a hash of (the encoded data: every token id of every pair, in order; a fingerprint of
the reference weights; the tokenisation settings), so a rerun on the same data, model and tokenisation
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

from alignlab.models.logprobs import token_logprobs
from alignlab.utils.io import atomic_open
from alignlab.utils.runtime import get_logger

log = get_logger(__name__)

CACHE_VERSION = 1


def concatenated_inputs(batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack chosen over rejected: input_ids, attention_mask, loss_mask, each (2B, T).

    The preference collator pads both halves to one width (the longest sequence in the batch).
    """

    def cat(name: str) -> torch.Tensor:
        c, r = batch[f"chosen_{name}"], batch[f"rejected_{name}"]
        if c.shape[1] != r.shape[1]:
            raise ValueError(
                f"chosen_{name} and rejected_{name} differ in width ({c.shape[1]} vs {r.shape[1]}); "
                "use PreferenceCollator, which pads both to one width"
            )
        return torch.cat([c, r], dim=0)  # (2B, T)

    return cat("input_ids"), cat("attention_mask"), cat("loss_mask")


def concatenated_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward over chosen and rejected together. Returns the summed completion log-probs (2B,) and
    the completion token counts (2B,): rows [:B] are chosen, rows [B:] rejected."""
    input_ids, attention_mask, loss_mask = concatenated_inputs(batch)
    logps, mask = token_logprobs(model, input_ids, attention_mask, loss_mask)  # (2B, T-1)
    return logps.sum(-1), mask.sum(-1)


def data_fingerprint(items: Iterable[dict]) -> str:
    """Hash of the encoded pairs in order (index, prompt, chosen and rejected token ids)."""
    h = hashlib.sha256()
    for ex in items:
        h.update(str(ex["index"]).encode())
        for key in ("prompt_ids", "chosen_ids", "rejected_ids"):
            h.update(key.encode())
            h.update(np.asarray(ex[key], dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


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


def cache_key(data: str, model: str, tokenisation: dict) -> str:
    payload = json.dumps(
        {"v": CACHE_VERSION, "data": data, "model": model, "tok": tokenisation}, sort_keys=True, default=str
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
    for batch in batches:
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

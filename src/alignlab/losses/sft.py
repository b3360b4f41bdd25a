"""Supervised losses."""

from __future__ import annotations

import torch


def masked_nll(logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over the masked tokens. logps, mask: (B, T) -> scalar."""
    return -(logps * mask).sum() / mask.sum().clamp(min=1)

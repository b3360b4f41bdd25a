"""Batch collation: pad to the longest sequence in the batch (never to a global maximum)."""

from __future__ import annotations

import torch


def join(prompts: list[list[int]], completions: list[list[int]], pad_id: int, width: int | None = None):
    """Prompt+completion, right-padded: input_ids, attention_mask, loss_mask (1 on completion tokens)."""
    seqs = [p + c for p, c in zip(prompts, completions)]
    width = width or max(len(s) for s in seqs)
    n = len(seqs)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    loss_mask = torch.zeros((n, width), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        s = p + c
        input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        attention_mask[i, : len(s)] = 1
        loss_mask[i, len(p) : len(s)] = 1
    return input_ids, attention_mask, loss_mask


class SFTCollator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[dict]) -> dict:
        ids, attn, loss = join(
            [b["prompt_ids"] for b in batch], [b["completion_ids"] for b in batch], self.pad_id
        )
        return {
            "input_ids": ids,
            "attention_mask": attn,
            "loss_mask": loss,
            "index": torch.tensor([b["index"] for b in batch]),
        }


class PreferenceCollator:
    """Chosen and rejected padded to one common width, so a module can concatenate them: (2B, T)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[dict]) -> dict:
        prompts = [b["prompt_ids"] for b in batch]
        width = max(len(b["prompt_ids"]) + max(len(b["chosen_ids"]), len(b["rejected_ids"])) for b in batch)
        c = join(prompts, [b["chosen_ids"] for b in batch], self.pad_id, width)
        r = join(prompts, [b["rejected_ids"] for b in batch], self.pad_id, width)
        return {
            "chosen_input_ids": c[0],
            "chosen_attention_mask": c[1],
            "chosen_loss_mask": c[2],
            "rejected_input_ids": r[0],
            "rejected_attention_mask": r[1],
            "rejected_loss_mask": r[2],
            "p_chosen": torch.tensor([b["p_chosen"] for b in batch], dtype=torch.float32),
            "index": torch.tensor([b["index"] for b in batch]),
        }


class PromptCollator:
    """Prompts stay lists of ids (generation left-pads them); texts ride along for reward functions."""

    def __call__(self, batch: list[dict]) -> dict:
        return {
            "prompt_ids": [b["prompt_ids"] for b in batch],
            "prompt": [b["prompt"] for b in batch],
            "index": torch.tensor([b["index"] for b in batch]),
        }

"""A tiny random GPT-2 with an offline byte-level tokenizer, for fast tests."""

from __future__ import annotations

import torch


def tiny_tokenizer():
    """ByT5's byte tokenizer needs no files: 256 bytes + specials, pad=0, eos=1."""
    from transformers import ByT5Tokenizer

    tok = ByT5Tokenizer()
    tok.padding_side = "right"
    return tok


def tiny_gpt2(n_layer: int = 2, n_embd: int = 64, n_head: int = 4, n_positions: int = 512, seed: int = 0):
    """A randomly initialised GPT-2 sized for the byte tokenizer; deterministic for a given seed."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tiny_tokenizer()
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = GPT2LMHeadModel(config)
    finally:
        torch.random.set_rng_state(state)
    return model, tok

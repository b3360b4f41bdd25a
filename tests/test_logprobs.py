"""token_logprobs runs the LM head only on loss positions; it must equal the full-logits computation
(values and LoRA gradients) on GPT-2 and Llama, with left and right padding, policy and reference."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from alignlab.models import LoraSpec, apply_peft
from alignlab.models.completion import concatenated_logps
from alignlab.models.logprobs import (
    gather_logprobs,
    shared_prompt_layout,
    shared_prompt_logps,
    split_head,
    token_logprobs,
)
from alignlab.models.reference import ReferenceModel

VOCAB = 97


def tiny_model(arch: str):
    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4)
        model = GPT2LMHeadModel(cfg)
    else:
        cfg = LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(cfg)
    return model.eval()


def padded_batch(side: str, seed: int = 0):
    """(B, T) ids, attention mask and a loss mask on each row's completion (the last real tokens)."""
    g = torch.Generator().manual_seed(seed)
    lengths = [(3, 5), (6, 2), (2, 9), (4, 4)]  # (prompt, completion) per row
    width = max(p + c for p, c in lengths) + 1
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    attn = torch.zeros_like(ids)
    loss = torch.zeros_like(ids)
    for i, (p, c) in enumerate(lengths):
        start = 0 if side == "right" else width - p - c
        ids[i, start : start + p + c] = torch.randint(1, VOCAB, (p + c,), generator=g)
        attn[i, start : start + p + c] = 1
        loss[i, start + p : start + p + c] = 1
    return ids, attn, loss


def reference(model, ids, attn, loss):
    """The full-logits computation: log_softmax over every position, then mask."""
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, :-1]
    logp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return logp * loss[:, 1:]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_head_on_loss_positions_equals_full_logits(arch, side):
    model = tiny_model(arch)
    ids, attn, loss = padded_batch(side)
    assert split_head(model) is not None  # the fast path is taken
    with torch.no_grad():
        fast, mask = token_logprobs(model, ids, attn, loss)
        want = reference(model, ids, attn, loss)
    assert fast.shape == want.shape == mask.shape == (ids.shape[0], ids.shape[1] - 1)
    torch.testing.assert_close(fast, want, rtol=0, atol=1e-5)
    assert torch.equal(mask, loss[:, 1:].float())
    assert fast[mask == 0].abs().max() == 0
    assert fast[mask == 1].max() < 0  # real log-probs, not left-over zeros


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_lora_policy_grads_and_reference_match_full_logits(arch, side):
    policy = apply_peft(tiny_model(arch), LoraSpec(r=4, alpha=8))
    torch.manual_seed(1)
    for n, p in policy.named_parameters():  # move the adapter away from zero so it matters
        if "lora_B" in n:
            p.data.normal_(0, 0.2)
    ids, attn, loss = padded_batch(side, seed=3)
    assert split_head(policy) is not None
    params = [p for p in policy.parameters() if p.requires_grad]

    fast, _ = token_logprobs(policy, ids, attn, loss)
    g_fast = torch.autograd.grad(fast.sum(), params)
    want = reference(policy, ids, attn, loss)
    g_want = torch.autograd.grad(want.sum(), params)
    torch.testing.assert_close(fast, want, rtol=0, atol=1e-5)
    for a, b in zip(g_fast, g_want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

    # the reference (adapter disabled) goes through the same function and differs from the policy
    with ReferenceModel(policy) as ref:
        ref_fast, _ = token_logprobs(ref, ids, attn, loss)
        ref_want = reference(ref, ids, attn, loss)
    torch.testing.assert_close(ref_fast, ref_want, rtol=0, atol=1e-5)
    assert not torch.allclose(ref_fast, fast.detach(), atol=1e-3)
    assert not ref_fast.requires_grad


def test_concatenated_logps_and_temperature_use_the_fast_path():
    model = tiny_model("llama")
    ids, attn, loss = padded_batch("right")
    batch = {
        "chosen_input_ids": ids[:2],
        "chosen_attention_mask": attn[:2],
        "chosen_loss_mask": loss[:2],
        "rejected_input_ids": ids[2:],
        "rejected_attention_mask": attn[2:],
        "rejected_loss_mask": loss[2:],
    }
    with torch.no_grad():
        logps, ntok = concatenated_logps(model, batch)  # the DPO policy / reference / cache path
        want = reference(model, ids, attn, loss)
        hot, _ = token_logprobs(model, ids, attn, loss, temperature=0.7)
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1] / 0.7
    torch.testing.assert_close(logps, want.sum(-1), rtol=0, atol=1e-5)
    assert ntok.tolist() == loss[:, 1:].sum(-1).float().tolist()
    torch.testing.assert_close(hot, gather_logprobs(logits, ids[:, 1:]) * loss[:, 1:], rtol=0, atol=1e-5)


def test_models_with_a_logit_transform_take_the_full_path():
    model = tiny_model("llama")
    model.config.final_logit_softcapping = 30.0  # as Gemma 2: logits are not head(hidden) alone
    assert split_head(model) is None
    ids, attn, loss = padded_batch("right")
    with torch.no_grad():
        logps, _ = token_logprobs(model, ids, attn, loss)
    torch.testing.assert_close(logps, reference(model, ids, attn, loss), rtol=0, atol=1e-5)
    # return_logits needs every position: the full path, logits of shape (B, T-1, V)
    out = token_logprobs(tiny_model("gpt2"), ids, attn, loss, return_logits=True)
    assert out[2].shape == (*ids[:, 1:].shape, VOCAB)


def pair_batch(side: str = "right", seed: int = 0) -> dict:
    """Preference pairs as PreferenceCollator lays them out: one prompt, two completions, one width."""
    g = torch.Generator().manual_seed(seed)
    lengths = [(3, 5, 2), (6, 2, 7), (1, 9, 4), (4, 4, 0)]  # (prompt, chosen, rejected)
    width = max(p + max(c, r) for p, c, r in lengths) + 1
    batch = {}
    prompts = [torch.randint(1, VOCAB, (p,), generator=g) for p, _, _ in lengths]
    for k, name in enumerate(("chosen", "rejected")):
        ids = torch.zeros(len(lengths), width, dtype=torch.long)
        attn, loss = torch.zeros_like(ids), torch.zeros_like(ids)
        for i, lens in enumerate(lengths):
            p, n = lens[0], lens[1 + k]
            start = 0 if side == "right" else width - p - n
            ids[i, start : start + p] = prompts[i]
            ids[i, start + p : start + p + n] = torch.randint(1, VOCAB, (n,), generator=g)
            attn[i, start : start + p + n] = 1
            loss[i, start + p : start + p + n] = 1
        batch |= {f"{name}_input_ids": ids, f"{name}_attention_mask": attn, f"{name}_loss_mask": loss}
    return batch


def concatenated(model, batch):
    """The full-logits concatenated (2B, T) forward: summed completion log-probs (2B,)."""
    ids, attn, loss = (torch.cat([batch[f"chosen_{k}"], batch[f"rejected_{k}"]]) for k in KEYS)
    return reference(model, ids, attn, loss).sum(-1)


KEYS = ("input_ids", "attention_mask", "loss_mask")


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_prompt_equals_concatenated_forward(arch, attn):
    policy = apply_peft(tiny_model(arch), LoraSpec(r=4, alpha=8))
    policy.get_base_model().config._attn_implementation = attn
    torch.manual_seed(2)
    for n, p in policy.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.2)
    batch = pair_batch()
    params = [p for p in policy.parameters() if p.requires_grad]

    out = shared_prompt_logps(policy, batch)
    assert out is not None  # the shared layout applies to collator batches
    logps, ntok = out
    want = concatenated(policy, batch)
    torch.testing.assert_close(logps, want, rtol=0, atol=1e-5)
    assert ntok.tolist() == [5, 2, 9, 4, 2, 7, 4, 0]
    g_fast = torch.autograd.grad(logps.sum(), params)
    g_want = torch.autograd.grad(want.sum(), params)
    for a, b in zip(g_fast, g_want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with ReferenceModel(policy) as ref:  # adapter disabled: same function, different numbers
        ref_logps, _ = shared_prompt_logps(ref, batch)
        torch.testing.assert_close(ref_logps, concatenated(ref, batch), rtol=0, atol=1e-5)
    assert not torch.allclose(ref_logps, logps.detach(), atol=1e-3)


def test_shared_prompt_declines_layouts_it_cannot_share():
    model = tiny_model("llama")
    assert shared_prompt_logps(model, pair_batch(side="left")) is None  # not the collator's layout
    other = pair_batch()
    other["rejected_input_ids"][0, 0] += 1  # prompts differ between chosen and rejected
    assert shared_prompt_logps(model, other) is None
    empty = pair_batch()
    for name in ("chosen", "rejected"):  # a completion at position 0: no token predicts it
        empty[f"{name}_loss_mask"][2, 0] = 1
    assert shared_prompt_logps(model, empty) is None


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_reward_scores_with_shared_prompt_equal_separate_rows(arch):
    from alignlab.modules.reward import RewardModule

    policy = apply_peft(tiny_model(arch), LoraSpec(r=4, alpha=8))
    module = RewardModule(policy, tokenizer=None)
    batch = pair_batch()
    assert shared_prompt_layout(batch) is not None
    chosen, rejected = module._pair_scores(batch)  # shared layout
    plain = {k: v for k, v in batch.items() if "loss_mask" not in k}  # no layout: (2B, T) rows
    assert shared_prompt_layout(plain) is None
    want_c, want_r = module._pair_scores(plain)
    torch.testing.assert_close(chosen, want_c, rtol=0, atol=1e-5)
    torch.testing.assert_close(rejected, want_r, rtol=0, atol=1e-5)
    params = [p for p in module.parameters() if p.requires_grad]
    g_fast = torch.autograd.grad((chosen - 2 * rejected).sum(), params)
    g_want = torch.autograd.grad((want_c - 2 * want_r).sum(), params)
    for a, b in zip(g_fast, g_want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# -- k completions of one prompt (RLOO rollouts) --------------------------------------------------------
def rollout_batch(k: int = 3, seed: int = 0):
    """Rollout layout: left-padded prompts (width P), right-padded completions (width L), groups of k."""
    from alignlab.models.generation import left_pad

    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in (4, 7)]
    lengths = [5, 1, 8, 3, 8, 6][: 2 * k]  # completion lengths, one per row
    ctx_ids, ctx_mask = left_pad([p for p in prompts for _ in range(k)], 0)
    width = max(lengths)
    resp = torch.zeros(len(lengths), width, dtype=torch.long)
    rmask = torch.zeros_like(resp)
    for i, c in enumerate(lengths):
        resp[i, :c] = torch.randint(1, VOCAB, (c,), generator=g)
        rmask[i, :c] = 1
    return torch.cat([ctx_ids, resp], 1), torch.cat([ctx_mask, rmask], 1), ctx_ids.shape[1], rmask


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_grouped_rollout_forward_equals_per_row_forward(arch, attn):
    """Each prompt once per group of k samples: the completion log-probs and LoRA gradients equal the
    per-row (B, P + L) forward; the reference (adapter off) too."""
    from alignlab.models.completion import forward_completion

    model = apply_peft(tiny_model(arch), LoraSpec(r=4, alpha=8))
    model.config._attn_implementation = attn
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    qr, att, ctx, rmask = rollout_batch()
    labels = qr[:, ctx:]

    def logps(group):
        logits, _ = forward_completion(model, qr, att, ctx, temperature=0.7, group=group)
        return gather_logprobs(logits, labels) * rmask

    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    want = logps(1)
    want.sum().backward()
    want_grads = [p.grad.clone() for p in lora]
    model.zero_grad()
    got = logps(3)
    got.sum().backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got != 0).sum() == rmask.sum()  # every completion token has a log-prob, nothing else
    for g, w in zip([p.grad for p in lora], want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    with ReferenceModel(model):
        torch.testing.assert_close(logps(3), logps(1), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(logps(3), got.detach())  # the adapter matters, so the check can fail


def test_grouped_rollout_layout_declines_what_it_cannot_share():
    from alignlab.models.logprobs import grouped_rollout_layout

    qr, att, ctx, _ = rollout_batch()
    layout = grouped_rollout_layout(qr, att, ctx, 3)
    assert layout.input_ids.shape[0] == 2  # one row per prompt
    # prompt 4 + completions 5 + 1 + 8 = 18; prompt 7 + 3 + 8 + 6 = 24: no padding between completions
    assert layout.input_ids.shape[1] == 24 and (layout.segments[0] == -1).sum() == 6
    assert grouped_rollout_layout(qr, att, ctx, 1) is None  # nothing to share
    assert grouped_rollout_layout(qr, att, ctx, 3, max_width=23) is None  # a row would be too wide
    assert grouped_rollout_layout(qr, att, ctx, 4) is None  # 6 rows are not groups of 4
    assert grouped_rollout_layout(qr, att, ctx, 2) is None  # rows 2 and 3 have different prompts
    holes = att.clone()
    holes[0, -1], holes[0, ctx + 4] = 1, 0  # a completion with a gap
    assert grouped_rollout_layout(qr, holes, ctx, 3) is None

"""val/kl of the online-RL modules is a KL of the distribution validation samples from (issue 20, item 7):
at val_temperature != 1 with top-p < 1 it is the exact per-token KL(pi_T || pi_ref_T) summed over each
completion, never negative, not the temperature-1 log-ratio of the sampled tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignlab.models import LoraSpec, apply_peft
from alignlab.rewards.base import CharFractionReward

PROMPTS = ["The movie was", "I think that", "abc def", "Overall"]


def _by_hand(policy, qr, attn, ctx, temperature):
    """sum_t KL(softmax(z_t / T) || softmax(z_ref_t / T)) over each completion, from full forwards."""
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        z = policy(input_ids=qr, attention_mask=attn, position_ids=pos).logits[:, ctx - 1 : -1]
        with policy.disable_adapter():
            z_ref = policy(input_ids=qr, attention_mask=attn, position_ids=pos).logits[:, ctx - 1 : -1]
    logp, ref = F.log_softmax(z / temperature, -1), F.log_softmax(z_ref / temperature, -1)
    return (logp.exp() * (logp - ref)).sum(-1)  # (B, L)


def test_val_kl_is_the_kl_of_the_sampling_distribution(tiny_lm, monkeypatch):
    from alignlab.modules import rollout
    from alignlab.modules.rloo import RLOOModule

    policy = apply_peft(tiny_lm.model, LoraSpec(r=4, alpha=8))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    tok = tiny_lm.tokenizer
    module = RLOOModule(
        policy, tok, reward=CharFractionReward(), k=2, val_temperature=0.5, top_p=0.9, max_new_tokens=8
    )
    seen = []
    inner = rollout.sample
    monkeypatch.setattr(rollout, "sample", lambda *a, **k: seen.append(inner(*a, **k)) or seen[-1])
    batch = {"prompt_ids": [tok.encode(p, add_special_tokens=False) for p in PROMPTS], "prompt": PROMPTS}
    module.on_validation_epoch_start()
    module.validation_step(batch, 0)
    got = module._val["kl"][0]  # (B,)

    g = seen[0]
    ids, mask = rollout.left_pad(batch["prompt_ids"], tok.pad_token_id)
    qr, attn = torch.cat([ids, g.completion_ids], 1), torch.cat([mask, g.completion_mask], 1)
    per_token = _by_hand(policy, qr, attn, ids.shape[1], 0.5) * g.completion_mask
    want = per_token.sum(-1)
    assert g.completion_mask.sum() > 0 and (want > 1e-3).all()  # the adapter moved the policy
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert (got >= 0).all()

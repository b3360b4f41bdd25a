"""Model loading, LoRA wrapping, the adapter-disabled reference, log-probs and batched generation."""

from __future__ import annotations

import pytest
import torch

from alignlab.models import LoraSpec, ModelSpec, ReferenceModel, apply_peft
from alignlab.models.generation import SamplingConfig, sample
from alignlab.models.logprobs import gather_logprobs, token_logprobs


def test_tiny_is_deterministic_and_padded(tiny_lm):
    again = ModelSpec(source="tiny").load()
    for (n, a), (_, b) in zip(tiny_lm.model.named_parameters(), again.model.named_parameters()):
        assert torch.equal(a, b), n
    assert tiny_lm.tokenizer.pad_token_id is not None and tiny_lm.tokenizer.padding_side == "right"


def test_lora_reference_equals_base(tiny_lm):
    ids = torch.tensor([tiny_lm.tokenizer.encode("hello world", add_special_tokens=False)])
    with torch.no_grad():
        base_logits = tiny_lm.model(ids).logits.clone()
    policy = apply_peft(tiny_lm.model, LoraSpec(r=4, alpha=8))
    # make the adapter do something, as after training
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.add_(0.5)
    assert not torch.allclose(policy(ids).logits, base_logits)
    with ReferenceModel(policy) as ref:
        assert torch.allclose(ref(ids).logits, base_logits, atol=1e-6)
    frozen = [n for n, p in policy.named_parameters() if not p.requires_grad]
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable) and frozen


def test_gather_logprobs_matches_log_softmax():
    logits = torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    want = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(gather_logprobs(logits, labels), want, atol=1e-5)


def test_token_logprobs_ignore_padding(tiny_lm):
    m, tok = tiny_lm.model, tiny_lm.tokenizer
    a = tok.encode("the film", add_special_tokens=False)
    b = tok.encode("the film was great", add_special_tokens=False)
    ids = torch.full((2, len(b)), tok.pad_token_id)
    attn = torch.zeros_like(ids)
    ids[0, : len(a)], attn[0, : len(a)] = torch.tensor(a), 1
    ids[1], attn[1] = torch.tensor(b), 1
    logps, mask = token_logprobs(m, ids, attn, attn)
    alone, _ = token_logprobs(m, ids[:1, : len(a)], attn[:1, : len(a)], attn[:1, : len(a)])
    assert torch.allclose(logps[0, : len(a) - 1], alone[0], atol=1e-5)
    assert mask[0, len(a) - 1 :].sum() == 0


def test_batched_greedy_generation_matches_unbatched(tiny_lm):
    m, tok = tiny_lm.model, tiny_lm.tokenizer
    prompts = [tok.encode(t, add_special_tokens=False) for t in ["a", "the movie was"]]
    cfg = SamplingConfig(max_new_tokens=8, temperature=0.0)
    both = sample(m, tok, prompts, cfg)
    for i, p in enumerate(prompts):
        one = sample(m, tok, [p], cfg)
        n = int(one.completion_mask[0].sum())
        assert one.completion_ids[0, :n].tolist() == both.completion_ids[i, :n].tolist()
    assert both.completion_mask.shape == both.completion_ids.shape


def test_missing_local_model_path_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ModelSpec(source="hf", name_or_path=str(tmp_path / "no-model")).load()
    with pytest.raises(ValueError, match="name_or_path"):
        ModelSpec(source="hf").load()
    with pytest.raises(ValueError, match="choose hf, smollm2_135m or tiny"):
        ModelSpec(source="nope").load()


def test_identity_changes_with_weights_source():
    assert ModelSpec(source="tiny").identity() != ModelSpec(source="smollm2_135m").identity()
    assert (
        ModelSpec(source="tiny").identity()
        == ModelSpec(source="tiny", gradient_checkpointing=True).identity()
    )


def test_load_policy_gives_each_kind_its_reference(tmp_path):
    """load_policy: the base model is its own reference (KL 0), a LoRA directory's reference is the
    adapter switched off, a full model's is the base weights, loaded on first use and frozen."""
    from alignlab.models import load_policy

    spec = ModelSpec(source="tiny", dtype="float32", cache_dir=str(tmp_path / "cache"))
    ids = torch.tensor([[5, 6, 7, 8]])
    base = load_policy(spec, None, "cpu")
    assert base.kind == "base" and base.ref_model.kind == "policy"
    with torch.no_grad():
        base_logits = base.model(ids).logits
    with base.ref_model as ref:
        assert ref is base.model

    lora = apply_peft(spec.load().model, LoraSpec(r=4, alpha=8))
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.add_(0.5)
    lora.save_pretrained(tmp_path / "adapter")
    adapter = load_policy(spec, tmp_path / "adapter", "cpu")
    assert adapter.kind == "adapter" and adapter.ref_model.kind == "adapter"
    with torch.no_grad():
        assert not torch.allclose(adapter.model(ids).logits, base_logits, atol=1e-4)
    with adapter.ref_model as ref:
        torch.testing.assert_close(ref(ids).logits, base_logits)

    full_model = spec.load().model
    with torch.no_grad():
        for p in full_model.parameters():
            p.add_(0.01)
    full_model.save_pretrained(tmp_path / "full")
    spec.load().tokenizer.save_pretrained(tmp_path / "full")
    full = load_policy(spec, tmp_path / "full", "cpu")
    assert full.kind == "full" and full.ref_model.kind == "frozen" and full.ref_model.model is None
    with full.ref_model as ref:
        torch.testing.assert_close(ref(ids).logits, base_logits)
        assert not any(p.requires_grad for p in ref.parameters())
    with torch.no_grad():
        assert not torch.allclose(full.model(ids).logits, base_logits, atol=1e-4)

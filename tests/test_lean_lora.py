"""lean_adapter samples a LoRA policy through minimal modules instead of peft's wrappers: inside, the
logits and greedy tokens are the adapter path's (GPT-2 Conv1D with fan_in_fan_out, Llama); on exit,
normal or by exception, the wrappers are back, the parameters the same bit-identical tensors with their
requires_grad flags; what it cannot handle runs unchanged."""

from __future__ import annotations

import contextlib

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer

from alignlab.models import LoraSpec, apply_peft
from alignlab.models.peft import _LeanLoraLinear, lean_adapter
from test_logprobs import VOCAB, tiny_model

ARCHS = ["gpt2", "llama"]


def lora_model(arch: str):
    """A tiny LoRA model whose B matrices are nonzero, so the adapter changes the function."""
    model = apply_peft(tiny_model(arch), LoraSpec(r=4, alpha=8))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def batch():
    return torch.randint(1, VOCAB, (2, 9), generator=torch.Generator().manual_seed(2))


def logits(model, ids):
    return model(input_ids=ids, use_cache=False).logits


def snapshot(model) -> dict:
    """Per parameter: the object, its storage, a copy of its values and its requires_grad flag."""
    return {n: (p, p.data_ptr(), p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}


def lora_layers(model) -> list:
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def assert_restored(model, before: dict, on: torch.Tensor, ids) -> None:
    now = dict(model.named_parameters())
    assert now.keys() == before.keys()
    for n, (p, ptr, value, flag) in before.items():
        assert now[n] is p and p.data_ptr() == ptr, n
        assert torch.equal(p, value), n
        assert p.requires_grad == flag == ("lora_" in n), n  # LoRA trains, the base is frozen
    assert not any(m.disable_adapters or m.merged for m in lora_layers(model))
    with torch.no_grad():
        assert torch.equal(logits(model, ids), on)  # the adapter path again


@pytest.mark.parametrize("arch", ARCHS)
def test_inside_equals_adapter_path_and_exit_restores(arch):
    model, ids = lora_model(arch), batch()
    before, wrappers = snapshot(model), lora_layers(model)
    with torch.no_grad():
        on = logits(model, ids)
        with model.disable_adapter():
            off = logits(model, ids)
        with lean_adapter(model) as m:
            assert m is model
            assert not lora_layers(model)  # every wrapper swapped out
            n_lean = sum(isinstance(x, _LeanLoraLinear) for x in model.modules())
            assert n_lean == len(wrappers)
            inside = logits(model, ids)
    torch.testing.assert_close(inside, on, rtol=0, atol=1e-6)
    assert (inside - off).abs().max() > 1e-2  # the adapter matters, so the comparison can fail
    assert_restored(model, before, on, ids)
    assert lora_layers(model) == wrappers  # the same wrapper objects, back in place


@pytest.mark.parametrize("arch", ARCHS)
def test_exception_inside_restores(arch):
    model, ids = lora_model(arch), batch()
    before = snapshot(model)
    with torch.no_grad():
        on = logits(model, ids)
    with pytest.raises(RuntimeError, match="boom"), torch.no_grad(), lean_adapter(model):
        assert not lora_layers(model)
        raise RuntimeError("boom")
    assert_restored(model, before, on, ids)


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generate_matches_adapter_path(arch):
    model, ids = lora_model(arch), batch()
    kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        want = model.generate(input_ids=ids, **kw)
        with lean_adapter(model):
            got = model.generate(input_ids=ids, **kw)
        with model.disable_adapter():
            base = model.generate(input_ids=ids, **kw)
    assert got.shape == want.shape == (2, ids.shape[1] + 12)
    assert torch.equal(got, want)
    assert not torch.equal(base[:, ids.shape[1] :], want[:, ids.shape[1] :])  # the adapter changes the tokens


def test_non_peft_model_is_unchanged():
    model, ids = tiny_model("llama"), batch()
    before = snapshot(model)
    with torch.no_grad():
        want = logits(model, ids)
        with lean_adapter(model) as m:
            assert m is model
            assert torch.equal(logits(model, ids), want)
    for n, p in model.named_parameters():
        assert p is before[n][0] and p.data_ptr() == before[n][1] and torch.equal(p, before[n][2])


def dora(arch):
    return get_peft_model(
        tiny_model(arch), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], use_dora=True)
    )


def modules_to_save(arch):
    cfg = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"])
    return get_peft_model(tiny_model(arch), cfg)


@pytest.mark.parametrize("case", ["grad_enabled", "adapter_disabled", "dora", "modules_to_save"])
def test_fallbacks_run_the_adapter_path_unchanged(case):
    model = {"dora": dora, "modules_to_save": modules_to_save}.get(case, lora_model)("llama")
    ids = batch()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.2)  # make the adapter matter
    before = snapshot(model)
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.set_grad_enabled(case == "grad_enabled"))
        if case == "adapter_disabled":
            stack.enter_context(model.disable_adapter())
        with torch.no_grad():
            want = logits(model, ids)
        disabled = [layer.disable_adapters for layer in lora_layers(model)]
        with lean_adapter(model) as m:
            assert m is model
            assert [layer.disable_adapters for layer in lora_layers(model)] == disabled
            assert not any(isinstance(x, _LeanLoraLinear) for x in model.modules())  # nothing swapped
            assert torch.equal(logits(model, ids).detach(), want)
    for n, p in model.named_parameters():
        assert p is before[n][0] and p.data_ptr() == before[n][1] and torch.equal(p, before[n][2])
        assert p.requires_grad == before[n][3]


@pytest.mark.parametrize("arch", ARCHS)
def test_shared_prompt_cache_samples_the_same_tokens(arch):
    """Runs of identical prompts: each prompt encoded once, its KV cache repeated for the run's rows; the
    same seeded samples as encoding every row (left padding, prompts of different lengths)."""
    from alignlab.models.generation import SamplingConfig, left_pad, sample, shared_prompt_cache

    class Tok:  # what sample() needs of a tokenizer
        pad_token_id, eos_token_id = 0, 5

        def decode(self, ids, skip_special_tokens=True):
            return " ".join(map(str, ids))

    model = lora_model(arch)
    prompts = [[7, 8, 9, 10, 11], [12, 13, 14]]
    rows = [p for p in prompts for _ in range(3)]
    cfg = SamplingConfig(max_new_tokens=10, temperature=1.0)
    want = sample(model, Tok(), rows, cfg, generator_seed=0)
    got = sample(model, Tok(), rows, cfg, generator_seed=0, group=3, lean_lora=True)
    assert torch.equal(got.completion_ids, want.completion_ids) and got.texts == want.texts
    assert len(set(map(tuple, want.completion_ids.tolist()))) > 2  # the samples differ within a prompt
    ids, mask = left_pad(rows, 0)
    cache = shared_prompt_cache(model, rows, ids, mask, 3)
    assert cache is not None and cache.get_seq_length() == ids.shape[1] - 1
    assert shared_prompt_cache(model, rows, ids, mask, 2) is None  # 6 rows, but runs of 2 differ
    assert shared_prompt_cache(model, rows[:4], ids[:4], mask[:4], 3) is None  # not whole runs


def test_active_lora_dropout_keeps_the_adapter_path():
    model = apply_peft(tiny_model("llama"), LoraSpec(r=4, alpha=8, dropout=0.5)).train()
    with torch.no_grad(), lean_adapter(model):
        assert lora_layers(model)  # nothing swapped: peft's wrapper applies the dropout
    model.eval()
    with torch.no_grad(), lean_adapter(model):
        assert not lora_layers(model)  # eval mode: dropout is the identity, the lean path applies

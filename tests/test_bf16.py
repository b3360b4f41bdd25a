"""bf16 mixed precision on CPU: trainer=cpu picks it where the CPU has native bf16; PPO/RLOO's pi_old
log-probs come from the trainer's precision, so the first update's ratio is 1; DPO and reward-model
losses in bf16-mixed stay close to fp32 (tiny model; SmolLM2's numbers are in docs/bench.md)."""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch

from alignlab.utils.precision import cpu_flags, cpu_has_bf16
from conftest import compose

# Tolerances, on the tiny random GPT-2 (its fp32-vs-bf16 log-prob gap is ~1.5e-3 per token):
RATIO_TOL = 1e-4  # max |log pi / pi_old| over the first update's tokens, pi_old recomputed in bf16
DPO_LOSS_TOL = 1e-3  # |DPO loss bf16-mixed - fp32| (measured 1.9e-4)
RM_LOSS_TOL = 2e-3  # |Bradley-Terry loss bf16-mixed - fp32| (measured 7e-4)


def test_cpu_flags_and_bf16_detection(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert cpu_flags(info) == {"fpu", "sse2", "avx2", "avx512f"}
    assert cpu_flags(tmp_path / "missing") == set()
    assert not cpu_has_bf16({"avx2", "avx512f"})  # AVX-512 without its BF16 extension is not enough


def test_trainer_cpu_precision_follows_the_detection(monkeypatch, tmp_path):
    from alignlab.utils import precision

    monkeypatch.delenv("ALIGNLAB_CPU_PRECISION")
    precision.cpu_precision.cache_clear()
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    try:
        cfg = compose(["experiment=dpo_tiny", f"paths.output_dir={tmp_path}"])
        assert cfg.trainer.precision == "bf16-mixed"
        precision.cpu_precision.cache_clear()
        monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
        assert cfg.trainer.precision == "32-true"  # the fallback
        over = compose(["experiment=dpo_tiny", f"paths.output_dir={tmp_path}", "trainer.precision=32-true"])
        assert over.trainer.precision == "32-true"
    finally:
        precision.cpu_precision.cache_clear()


def _first_update_logratio(tmp_path, monkeypatch, experiment: str, module_name: str, loss_name: str):
    """Train one rollout batch in bf16-mixed; return max |log pi - log pi_old| over the completion
    tokens of the first update and whether autocast was on for it."""
    import importlib

    from alignlab.train import train

    mod = importlib.import_module(module_name)
    inner = getattr(mod, loss_name)
    seen = []

    @functools.wraps(inner)
    def spy(logprobs, old_logprobs, advantages, mask, *args, **kwargs):
        if not seen:
            gap = ((logprobs.detach() - old_logprobs) * mask).abs().max().item()
            seen.append((gap, torch.is_autocast_enabled("cpu")))
        return inner(logprobs, old_logprobs, advantages, mask, *args, **kwargs)

    monkeypatch.setattr(mod, loss_name, spy)
    from alignlab.modules import rollout

    dtypes = []
    inner_sample = rollout.sample

    def sample_spy(*a, **k):
        dtypes.append(k.get("weights_dtype"))
        return inner_sample(*a, **k)

    monkeypatch.setattr(rollout, "sample", sample_spy)
    over = [
        f"experiment={experiment}",
        f"paths.output_dir={tmp_path}",
        "trainer.precision=bf16-mixed",
        "trainer.max_steps=1",
        "trainer.enable_progress_bar=false",
        "trainer.limit_val_batches=0",
        "logger=none",
        "callbacks=none",
    ]
    train(compose(over))
    assert dtypes and set(dtypes) == {torch.bfloat16}  # rollouts decode with bf16 weights
    return seen[0]


def test_ppo_first_update_ratio_is_one_under_bf16(tmp_path, monkeypatch):
    # minibatches (2) differ in shape from the no-grad pi_old forward (the whole batch)
    gap, autocast = _first_update_logratio(
        tmp_path, monkeypatch, "ppo_tiny", "alignlab.modules.ppo", "pg_loss"
    )
    assert autocast, "the update did not run under bf16 autocast"
    assert gap <= RATIO_TOL, gap


def test_rloo_first_update_matches_pi_old_under_bf16(tmp_path, monkeypatch):
    from alignlab.modules import rollout

    logratios = []
    inner = rollout.kl_estimate

    def spy(logprobs, ref_logprobs, kind="k1"):
        logratios.append((logprobs, torch.is_autocast_enabled("cpu")))
        return inner(logprobs, ref_logprobs, kind)

    monkeypatch.setattr(rollout, "kl_estimate", spy)
    import alignlab.modules.rloo as rloo

    grads = []
    inner_loss = rloo.reinforce_loss

    def loss_spy(logprobs, adv, mask):
        grads.append((logprobs.detach(), mask))
        return inner_loss(logprobs, adv, mask)

    monkeypatch.setattr(rloo, "reinforce_loss", loss_spy)
    from alignlab.train import train

    over = [
        "experiment=rloo_tiny",
        f"paths.output_dir={tmp_path}",
        "trainer.precision=bf16-mixed",
        "trainer.max_steps=1",
        "trainer.enable_progress_bar=false",
        "trainer.limit_val_batches=0",
        "logger=none",
        "callbacks=none",
    ]
    train(compose(over))
    (old, autocast), (new, mask) = logratios[0], grads[0]
    assert autocast
    assert ((new - old) * mask).abs().max().item() <= RATIO_TOL


def _perturbed_lora(tiny_lm):
    from alignlab.models import LoraSpec, apply_peft

    policy = apply_peft(tiny_lm.model, LoraSpec(r=4, alpha=8))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return policy


def _pref_batch(tokenizer):
    from alignlab.data.collate import PreferenceCollator
    from alignlab.data.datamodules import PreferenceDataModule
    from alignlab.resources import resource

    dm = PreferenceDataModule(
        tokenizer=tokenizer, train_path=resource("pref_toy.jsonl"), batch_size=8, max_length=64,
        max_prompt_length=32, val_fraction=0.0,
    )  # fmt: skip
    dm.setup("fit")
    return PreferenceCollator(tokenizer.pad_token_id)([dm.train_set[i] for i in range(8)])


def test_dpo_and_reward_losses_in_bf16_agree_with_fp32(tiny_lm):
    from alignlab.modules.dpo import DPOModule
    from alignlab.modules.reward import RewardModule

    batch = _pref_batch(tiny_lm.tokenizer)
    dpo = DPOModule(_perturbed_lora(tiny_lm), tiny_lm.tokenizer, beta=0.5).eval()
    dpo.log = dpo.log_dict = lambda *a, **k: None
    rm = RewardModule(tiny_lm.model, tiny_lm.tokenizer).eval()
    losses = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        cast = torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()
        with torch.no_grad(), cast:
            losses[name] = (dpo._step(batch, "val").item(), rm._loss(batch)[0].item())
    (dpo32, rm32), (dpo16, rm16) = losses["fp32"], losses["bf16"]
    assert dpo32 != pytest.approx(0.6931, abs=1e-3)  # policy != reference: the loss is not log 2 trivially
    assert abs(dpo16 - dpo32) <= DPO_LOSS_TOL, (dpo16, dpo32)
    assert abs(rm16 - rm32) <= RM_LOSS_TOL, (rm16, rm32)
    assert dpo16 != dpo32  # bf16 really ran (else the comparison is empty)


def test_cast_weights_decodes_in_bf16_and_restores_the_exact_tensors(tiny_lm):
    from alignlab.models.generation import SamplingConfig, cast_weights, sample

    model, tok = tiny_lm.model, tiny_lm.tokenizer
    before = {n: (p.data_ptr(), p.detach().clone()) for n, p in model.named_parameters()}
    with cast_weights(model, torch.bfloat16):
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    gen = sample(model, tok, [[5, 6, 7]] * 2, SamplingConfig(4, 1.0), weights_dtype=torch.bfloat16)
    assert gen.completion_ids.shape[0] == 2
    for n, p in model.named_parameters():
        assert p.dtype == torch.float32 and p.data_ptr() == before[n][0]
        assert torch.equal(p, before[n][1]), n

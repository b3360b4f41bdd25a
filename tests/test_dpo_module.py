"""DPOModule on the tiny model: it learns held-out preferences, LoRA leaves the base alone, the
reference cache removes reference forwards, and the concatenated forward equals two separate ones."""

from __future__ import annotations

import functools
import math

import lightning as L
import pytest
import torch

from alignlab.data.datamodules import PreferenceDataModule
from alignlab.models import LoraSpec, ModelSpec, apply_peft
from alignlab.models.completion import concatenated_logps
from alignlab.models.logprobs import token_logprobs
from alignlab.modules.dpo import DPOModule
from alignlab.resources import resource
from alignlab.utils.config import ConfigError
from conftest import compose


def datamodule(tok, batch_size=8):
    dm = PreferenceDataModule(
        train_path=resource("pref_toy.jsonl"),
        val_fraction=0.125,
        batch_size=batch_size,
        max_length=96,
        max_prompt_length=48,
        tokenizer=tok,
    )
    dm.setup("fit")
    return dm


def trainer(max_steps=-1, max_epochs=-1, callbacks=(), tmp_path=None):
    return L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=list(callbacks),
        default_root_dir=tmp_path,
    )


def adamw(lr):
    return functools.partial(torch.optim.AdamW, lr=lr)


def test_concatenated_forward_equals_separate_forwards(tiny_lm):
    dm = datamodule(tiny_lm.tokenizer, batch_size=4)
    batch = next(iter(dm.train_dataloader()))
    model = tiny_lm.model.eval()
    with torch.no_grad():
        logps, ntok = concatenated_logps(model, batch)  # (2B,)
        sep = [
            token_logprobs(
                model, batch[f"{s}_input_ids"], batch[f"{s}_attention_mask"], batch[f"{s}_loss_mask"]
            )[0].sum(-1)
            for s in ("chosen", "rejected")
        ]
    n = batch["chosen_input_ids"].shape[0]
    torch.testing.assert_close(logps[:n], sep[0], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(logps[n:], sep[1], rtol=1e-5, atol=1e-4)
    assert ntok[:n].tolist() == (batch["chosen_loss_mask"][:, 1:].sum(-1)).tolist()


def test_heldout_preference_accuracy_rises(tiny_lm, tmp_path):
    dm = datamodule(tiny_lm.tokenizer)
    module = DPOModule(tiny_lm.model, tiny_lm.tokenizer, optimizer=adamw(1e-3), beta=0.5)
    tr = trainer(max_steps=30, tmp_path=tmp_path)
    before = tr.validate(module, datamodule=dm, verbose=False)[0]
    tr.fit(module, datamodule=dm)
    after = tr.validate(module, datamodule=dm, verbose=False)[0]
    # before training policy == reference: every implicit reward is 0, the loss is log 2
    assert before["val/loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert before["val/rewards/accuracy"] == 0.0
    assert after["val/rewards/accuracy"] >= 0.75, after
    assert after["val/rewards/margin"] > 0.5
    assert after["val/loss"] < 0.5 * math.log(2)
    for name in ("chosen", "rejected"):
        assert f"val/logps/{name}" in after and f"val/rewards/{name}" in after
    # the full fine-tune's frozen reference copy never moved
    assert module.ref_model.kind == "frozen" and list(module.ref_model.parameters())
    assert not any(p.requires_grad for p in module.ref_model.parameters())


def test_lora_trains_adapter_and_keeps_base_weights(tiny_lm, tmp_path):
    policy = apply_peft(tiny_lm.model, LoraSpec(r=4, alpha=8))
    base = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_" not in n}
    lora = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_B" in n}
    module = DPOModule(policy, tiny_lm.tokenizer, optimizer=adamw(5e-3), beta=0.5)
    assert module.ref_model.kind == "adapter"  # the adapter-disabled policy, never a copy
    assert not list(module.ref_model.parameters())
    trainer(max_steps=8, tmp_path=tmp_path).fit(module, datamodule=datamodule(tiny_lm.tokenizer))
    for n, p in policy.named_parameters():
        if n in base:
            assert torch.equal(p.detach(), base[n]), f"base weight {n} changed"
    assert any(not torch.equal(p.detach(), lora[n]) for n, p in policy.named_parameters() if n in lora)
    assert module.ref_forward_calls > 0


class EpochCalls(L.Callback):
    """Records the module's reference forward counter at the end of every training epoch."""

    def __init__(self):
        self.calls: list[int] = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.calls.append(pl_module.ref_forward_calls)


def lora_tiny(seed: int = 0, model_seed: int = 0):
    torch.manual_seed(seed)
    model = ModelSpec(source="tiny", dtype="float32", tiny={"seed": model_seed}).load().model
    return apply_peft(model, LoraSpec(r=4, alpha=8))


def test_ref_cache_means_no_reference_forward_after_precompute(tiny_lm, tmp_path):
    cache = tmp_path / "ref"
    policy = lora_tiny()
    dm = datamodule(tiny_lm.tokenizer)
    n_batches = len(dm.train_dataloader()) + len(dm.val_dataloader())
    module = DPOModule(
        policy, tiny_lm.tokenizer, optimizer=adamw(1e-3), precompute_ref_logps=True, ref_cache_dir=str(cache)
    )
    rec = EpochCalls()
    torch.manual_seed(1)
    trainer(max_epochs=2, callbacks=[rec], tmp_path=tmp_path).fit(module, datamodule=dm)
    # one pass over train + val before training, then nothing: epoch 2 adds zero reference forwards
    assert rec.calls == [n_batches, n_batches]
    assert len(list(cache.glob("ref_logps_*.pt"))) == 2
    # the table equals what the reference computes now (adapter disabled), looked up by index
    batch = next(iter(dm.val_dataloader()))
    ref_now = module.reference_logps(batch)[0]
    table = module._ref_tables["val"]
    looked_up = torch.cat(
        [table["ref_chosen_logps"][batch["index"]], table["ref_rejected_logps"][batch["index"]]]
    )
    torch.testing.assert_close(looked_up, ref_now, rtol=1e-5, atol=1e-4)
    # a rerun on the same data, model and tokenisation reads the cache: zero reference forwards at all,
    # and it trains exactly like the run that computed the table
    rerun = DPOModule(
        lora_tiny(),
        tiny_lm.tokenizer,
        optimizer=adamw(1e-3),
        precompute_ref_logps=True,
        ref_cache_dir=str(cache),
    )
    torch.manual_seed(1)
    trainer(max_epochs=2, tmp_path=tmp_path).fit(rerun, datamodule=datamodule(tiny_lm.tokenizer))
    assert rerun.ref_forward_calls == 0
    for (n, a), (_, b) in zip(module.policy.named_parameters(), rerun.policy.named_parameters()):
        torch.testing.assert_close(a, b, msg=f"rerun differs at {n}")
    # a different model (other weights) gets its own table
    third = DPOModule(
        lora_tiny(model_seed=1), tiny_lm.tokenizer, precompute_ref_logps=True, ref_cache_dir=str(cache)
    )
    trainer(max_steps=1, tmp_path=tmp_path).fit(third, datamodule=datamodule(tiny_lm.tokenizer))
    assert third.ref_forward_calls == n_batches
    assert len(list(cache.glob("ref_logps_*.pt"))) == 4


def test_without_cache_the_reference_runs_every_step(tiny_lm, tmp_path):
    module = DPOModule(apply_peft(tiny_lm.model, LoraSpec(r=4, alpha=8)), tiny_lm.tokenizer)
    trainer(max_steps=3, tmp_path=tmp_path).fit(module, datamodule=datamodule(tiny_lm.tokenizer))
    assert module.ref_forward_calls == 3


def test_full_finetune_precompute_needs_no_copy_and_checkpoint_is_lean(tiny_lm, tmp_path):
    module = DPOModule(tiny_lm.model, tiny_lm.tokenizer, optimizer=adamw(1e-3), precompute_ref_logps=True)
    assert module.ref_model.kind == "policy"  # every reference log-prob from the untouched policy, once
    assert not list(module.ref_model.parameters())
    tr = trainer(max_steps=4, tmp_path=tmp_path)
    tr.fit(module, datamodule=datamodule(tiny_lm.tokenizer))
    assert module.ref_forward_calls == 8  # 7 train + 1 val batches, before the first update
    copy = DPOModule(ModelSpec(source="tiny", dtype="float32").load().model, tiny_lm.tokenizer)
    ckpt = {"state_dict": copy.state_dict()}
    copy.on_save_checkpoint(ckpt)
    assert not any(k.startswith("ref_model.") for k in ckpt["state_dict"])


@pytest.mark.parametrize("loss_type", ["cdpo", "robust", "ipo", "hinge", "soft", "simpo"])
def test_every_variant_trains_one_step(tiny_lm, tmp_path, loss_type):
    eps = 0.1 if loss_type in ("cdpo", "robust") else 0.0
    module = DPOModule(
        apply_peft(tiny_lm.model, LoraSpec(r=4, alpha=8)),
        tiny_lm.tokenizer,
        loss_type=loss_type,
        label_smoothing=eps,
        beta=2.0 if loss_type == "simpo" else 0.1,
    )
    tr = trainer(max_steps=2, tmp_path=tmp_path)
    tr.fit(module, datamodule=datamodule(tiny_lm.tokenizer))
    assert math.isfinite(float(tr.callback_metrics["train/loss"]))
    assert module.ref_forward_calls == (0 if loss_type == "simpo" else 2)
    assert module.length_normalize == (loss_type == "simpo")


def test_contradictory_config_fails_at_startup(tiny_lm):
    m, t = tiny_lm.model, tiny_lm.tokenizer
    with pytest.raises(ConfigError, match="algo.loss_type"):
        DPOModule(m, t, loss_type="dpo2")
    with pytest.raises(ConfigError, match="label_smoothing"):
        DPOModule(m, t, loss_type="cdpo")
    with pytest.raises(ConfigError, match="label_smoothing"):
        DPOModule(m, t, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ConfigError, match="length_normalize"):
        DPOModule(m, t, loss_type="simpo", length_normalize=False)
    # a reference-free loss skips the precompute (one info line) instead of failing
    simpo = DPOModule(m, t, loss_type="simpo", precompute_ref_logps=True)
    assert not simpo.precompute_ref_logps and simpo.ref_model is None


@pytest.mark.parametrize(
    "overrides",
    [
        ["experiment=dpo_tiny"],
        ["experiment=dpo_tiny", "algo.loss_type=robust", "algo.label_smoothing=0.1"],
        ["experiment=dpo_tiny", "algo.loss_type=simpo", "algo.beta=2.0", "algo.precompute_ref_logps=false"],
        ["experiment=dpo_sentiment", "data.train_path=/tmp/pairs.jsonl"],
    ],
)
def test_dpo_configs_compose_and_instantiate(overrides, tmp_path, tiny_lm):
    from hydra.utils import instantiate

    cfg = compose([*overrides, f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path}"])
    assert cfg.algo._target_ == "alignlab.modules.dpo.DPOModule"
    module = instantiate(cfg.algo, policy=tiny_lm.model, tokenizer=tiny_lm.tokenizer)
    assert isinstance(module, DPOModule)


@pytest.mark.slow
def test_smollm2_lora_dpo_few_steps(tmp_path):
    """The bundled SmolLM2-135M + LoRA: a few DPO steps on the toy pairs raise the held-out margin."""
    lm = ModelSpec(source="smollm2_135m", dtype="float32").load()
    policy = apply_peft(lm.model, LoraSpec(r=8, alpha=16))
    probe = next(n for n, p in policy.named_parameters() if "q_proj.base_layer.weight" in n)
    base_before = dict(policy.named_parameters())[probe].detach().clone()
    dm = PreferenceDataModule(
        train_path=resource("pref_toy.jsonl"),
        val_fraction=0.2,
        batch_size=4,
        limit=20,
        max_length=48,
        max_prompt_length=24,
        tokenizer=lm.tokenizer,
    )
    module = DPOModule(
        policy,
        lm.tokenizer,
        optimizer=adamw(5e-4),
        beta=0.1,
        precompute_ref_logps=True,
        ref_cache_dir=str(tmp_path / "ref"),
    )
    rec = EpochCalls()
    tr = trainer(max_epochs=2, callbacks=[rec], tmp_path=tmp_path)
    before = tr.validate(module, datamodule=dm, verbose=False)[0]
    tr.fit(module, datamodule=dm)
    after = tr.validate(module, datamodule=dm, verbose=False)[0]
    print(
        f"\nSmolLM2 DPO: val margin {before['val/rewards/margin']:.4f} -> {after['val/rewards/margin']:.4f}, "
        f"accuracy {before['val/rewards/accuracy']:.3f} -> {after['val/rewards/accuracy']:.3f}, "
        f"loss {before['val/loss']:.4f} -> {after['val/loss']:.4f}; ref forwards per epoch end {rec.calls}"
    )
    assert after["val/rewards/margin"] > before["val/rewards/margin"] + 0.05
    assert after["val/loss"] < before["val/loss"]
    assert after["val/rewards/accuracy"] >= 0.75
    assert rec.calls[0] == rec.calls[1]  # no reference forward in epoch 2
    assert torch.equal(dict(policy.named_parameters())[probe].detach(), base_before)

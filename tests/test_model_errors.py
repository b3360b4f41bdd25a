"""A model that cannot be had and a chat template that is not there: one line, a user error, in seconds
(the app-level lines are in tests/test_user_errors.py and docs/errors.md)."""

from __future__ import annotations

import time

import pytest

from alignlab.data.tokenize import Formatter
from alignlab.models import loader
from alignlab.models.loader import ModelLoadError, ModelSpec, check_hub_reachable, hub_offline
from alignlab.models.tiny import tiny_tokenizer
from alignlab.utils.config import ConfigError
from alignlab.utils.errors import UserError


def _online_env(monkeypatch, endpoint: str) -> None:
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)


def test_an_unreachable_hub_is_detected_in_seconds(monkeypatch):
    _online_env(monkeypatch, "http://127.0.0.1:9")  # the discard port: nothing listens there
    start = time.monotonic()
    why = hub_offline(timeout_s=1.0)
    assert time.monotonic() - start < 3.0
    assert why is not None and why.startswith("127.0.0.1 is unreachable")
    with pytest.raises(ModelLoadError, match="use a local directory or model=smollm2_135m") as e:
        check_hub_reachable("alignlab-test/not-cached")
    assert isinstance(e.value, UserError) and isinstance(e.value, OSError)
    assert "\n" not in str(e.value)


def test_offline_flag_needs_no_probe(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read at import: the variable set after counts
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("socket.create_connection", lambda *a, **k: pytest.fail("probed the network"))
    assert hub_offline() == "HF_HUB_OFFLINE is set"


def test_a_cached_hub_id_loads_offline(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(
        huggingface_hub, "try_to_load_from_cache", lambda *a, **k: str(tmp_path / "config.json")
    )
    check_hub_reachable("Org/cached-model")  # no error: transformers reads the cache


def test_a_hub_failure_is_one_line(monkeypatch):
    import transformers

    def missing(*a, **k):
        raise OSError("Org/nope is not a local folder and is not a valid model identifier\nlong detail")

    monkeypatch.setattr(loader, "check_hub_reachable", lambda *a, **k: None)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", missing)
    with pytest.raises(ModelLoadError) as e:
        ModelSpec(source="hf", name_or_path="Org/nope").load()
    assert str(e.value) == (
        "model.name_or_path='Org/nope' could not be loaded (Org/nope is not a local folder and is not a valid "
        "model identifier); use a local directory or model=smollm2_135m"
    )


def test_chat_template_required_but_absent():
    tok = tiny_tokenizer()
    with pytest.raises(
        ConfigError,
        match=r"^use_chat_template=true \(data.use_chat_template or task.use_chat_template\) but the tokenizer of .ByT5Tokenizer. has no",
    ):
        Formatter(tok, use_chat_template=True)
    assert not Formatter(tok, use_chat_template="auto").chat  # auto falls back to plain text


def test_chat_template_check_reads_only_the_tokenizer(monkeypatch):
    from omegaconf import OmegaConf

    monkeypatch.setattr(ModelSpec, "load", lambda self: pytest.fail("loaded the model"))
    cfg = OmegaConf.create(
        {
            "model": {"_target_": "alignlab.models.ModelSpec", "source": "tiny"},
            "task": {"use_chat_template": True},
        }
    )
    with pytest.raises(ConfigError, match="^task.use_chat_template=true but the tokenizer of 'model=tiny'"):
        loader.check_chat_template(cfg)
    cfg.task.use_chat_template = "auto"
    loader.check_chat_template(cfg)

"""An exported reward model scores like alignlab under the standard call
``model(**tokenizer(texts, padding=True, return_tensors="pt")).logits``, on two tokenizer conventions
(Gemma-like: BOS from the post-processor; SmolLM2-like: no special tokens), plain and chat formats; where
the tokenizer cannot be set up for that, the model card's explicit call does it (and is run here)."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from alignlab import export
from alignlab.export import export_reward_model
from alignlab.models.heads import ScalarHead, save_reward_head
from alignlab.rewards.reward_model import RewardModelReward
from offline_tokenizers import BOS, EOS, PAD, gemma_like, smol_like

PAIRS = [
    ("Movie review:", " The film was a delight."),
    ("Movie review:", " Terrible, dull and far too long."),
    ("", "ok"),
]
MAKERS = {"gemma": gemma_like, "smol": smol_like}


def _reward_dir(path, tok, config: dict) -> None:
    """A tiny Llama reward model (head bias 0) saved with ``tok``, whose backend was left padding left
    (as a generation call leaves it)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=PAD,
        eos_token_id=EOS,
        bos_token_id=BOS,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.backend_tokenizer.enable_padding(direction="left", pad_id=PAD, pad_token="<pad>")
    tok.save_pretrained(path)
    head = ScalarHead(cfg.hidden_size)
    with torch.no_grad():
        head.summary.weight.normal_()
        head.summary.bias.zero_()
    save_reward_head(path, head, config)


def _texts(tok, chat: bool) -> list[str]:
    if not chat:
        return [p + c for p, c in PAIRS]
    msgs = [[{"role": "user", "content": p}] for p, _ in PAIRS]
    return [
        tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) + c
        for m, (_, c) in zip(msgs, PAIRS)
    ]


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat"])
@pytest.mark.parametrize("convention", list(MAKERS))
def test_standard_call_gives_alignlabs_scores(tmp_path, convention, chat):
    _reward_dir(tmp_path / "rm", MAKERS[convention](), {"use_chat_template": chat})
    export_reward_model(tmp_path / "rm", tmp_path / "hf")
    ours = RewardModelReward(str(tmp_path / "rm"))([p for p, _ in PAIRS], [c for _, c in PAIRS])

    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    assert tok.padding_side == "right"
    texts = _texts(tok, chat)
    ids = tok(texts)["input_ids"]
    bos = 1 if convention == "gemma" else 0  # the tokenizer's own convention, once, chat or not
    assert all(row[-1] == EOS and row.count(BOS) == bos and row.count(EOS) == 1 for row in ids), ids
    assert all(row[0] == BOS for row in ids) if bos else True
    with torch.no_grad():
        theirs = model(**tok(texts, padding=True, return_tensors="pt")).logits[:, 0]
    assert torch.allclose(theirs, ours, atol=1e-4), (theirs, ours)
    assert ours.std() > 1e-3  # distinct texts, distinct scores
    card = (tmp_path / "hf" / "README.md").read_text()
    assert 'model(**tok(texts, padding=True, return_tensors="pt")).logits[:, 0]' in card
    assert ("apply_chat_template" in card) == chat


def test_card_gives_the_explicit_call_when_the_tokenizer_cannot_be_set(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "_score_on_call", lambda *a: False)
    _reward_dir(tmp_path / "rm", gemma_like(), {"use_chat_template": False})
    export_reward_model(tmp_path / "rm", tmp_path / "hf")
    ours = RewardModelReward(str(tmp_path / "rm"))([p for p, _ in PAIRS], [c for _, c in PAIRS])
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "cannot be set to add alignlab's special tokens" in card
    (code,) = re.findall(r"```python\n(.*?)```", card, re.S)
    scope = {"out_dir": str(tmp_path / "hf"), "pairs": PAIRS}
    with torch.no_grad():
        exec(code, scope)  # the card's code, as a user would paste it
    assert torch.allclose(scope["scores"], ours, atol=1e-4), (scope["scores"], ours)


def test_saved_tokenizer_pads_right_after_left_padded_use(tmp_path):
    import json

    left = gemma_like()
    left.padding_side = "left"  # a tokenizer whose config pads left (generation-ready)
    left.init_kwargs["padding_side"] = "left"  # (saved only when it is an init argument)
    left.save_pretrained(tmp_path / "left")
    tok = AutoTokenizer.from_pretrained(tmp_path / "left")
    assert tok.padding_side == "left"
    tok.backend_tokenizer.enable_padding(
        direction="left", pad_id=PAD, pad_token="<pad>"
    )  # as generation left it
    export._save_tokenizer(tok, tmp_path / "out")
    assert AutoTokenizer.from_pretrained(tmp_path / "out").padding_side == "right"
    assert (
        json.loads((tmp_path / "out" / "tokenizer.json").read_text())["padding"] is None
    )  # raw tokenizers too


def test_saved_tokenizer_pads_right_where_its_class_pads_left(tmp_path):
    """Gemma's tokenizer class pads left by default and its saved config names no side: the export must
    write the side it was trained and checked with, or a user's reload pads left."""
    import json

    gemma_like().save_pretrained(tmp_path / "src")
    config_file = tmp_path / "src" / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.pop("padding_side", None)
    config_file.write_text(json.dumps({**config, "tokenizer_class": "GemmaTokenizer"}))
    tok = AutoTokenizer.from_pretrained(tmp_path / "src")
    assert type(tok).__name__ == "GemmaTokenizer" and tok.padding_side == "left"  # the class default
    tok.padding_side = "right"  # as alignlab prepares it (models.loader.prepare_tokenizer)
    export._save_tokenizer(tok, tmp_path / "out")
    assert AutoTokenizer.from_pretrained(tmp_path / "out").padding_side == "right"

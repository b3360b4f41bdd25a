"""Prompts are encoded the way the model's own tokenizer encodes a text: its BOS (or nothing) read from
what ``tokenizer(text)`` produces, never from ``add_bos_token``; once, with or without a chat template.

Three conventions, all offline: Gemma-like (a post-processor adds ``<bos>`` while ``add_bos_token`` is
False), SmolLM2-like (adds nothing) and the tiny model's ByT5 (appends ``</s>``)."""

from __future__ import annotations

import pytest

from alignlab.data.tokenize import Formatter, encode_prompt, encode_scored, special_affixes, with_prefix
from alignlab.models.tiny import tiny_tokenizer
from offline_tokenizers import BOS, CHATML_TEMPLATE, EOS, gemma_like, smol_like

TEXT = "Hello world. The film was"


@pytest.fixture(scope="module")
def gemma():
    return gemma_like()


@pytest.fixture(scope="module")
def smol():
    return smol_like()


def test_affixes_come_from_the_tokenizers_output_not_its_flags(gemma, smol):
    assert gemma.add_bos_token is False  # the flag says no BOS ...
    assert gemma("Hello")["input_ids"][0] == BOS  # ... the tokenizer adds one
    assert special_affixes(gemma) == ([BOS], [])
    assert special_affixes(smol) == ([], [])
    assert special_affixes(tiny_tokenizer()) == ([], [1])  # ByT5 appends </s> (id 1)


def test_plain_prompt_ids_are_the_tokenizers_own_encoding(gemma, smol):
    plain = gemma.encode(TEXT, add_special_tokens=False)
    assert plain == smol.encode(TEXT, add_special_tokens=False)  # same vocabulary, different convention
    g = Formatter(gemma, use_chat_template=False).prompt_ids(TEXT)
    s = Formatter(smol, use_chat_template=False).prompt_ids(TEXT)
    assert g == [BOS, *plain] == gemma(TEXT)["input_ids"]
    assert s == plain == smol(TEXT)["input_ids"]
    # ByT5: bytes + 3, and the prompt goes on, so no </s> after it: "Hi" -> 72+3, 105+3
    assert Formatter(tiny_tokenizer(), use_chat_template=False).prompt_ids("Hi") == [75, 108]


def test_chat_prompt_has_exactly_one_bos(gemma, smol):
    msgs = [{"role": "user", "content": TEXT}]
    g = Formatter(gemma, use_chat_template=True).prompt_ids(TEXT)
    template = gemma.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert g == list(template) and g[0] == BOS and g.count(BOS) == 1
    s = Formatter(smol, use_chat_template=True).prompt_ids(TEXT)
    assert BOS not in s and s[0] == smol.convert_tokens_to_ids("<|im_start|>")


def test_a_template_without_bos_gets_the_tokenizers_bos():
    tok = gemma_like()
    tok.chat_template = CHATML_TEMPLATE  # the template forgets <bos>; the model was trained with it
    ids = Formatter(tok, use_chat_template=True).prompt_ids(TEXT)
    assert ids[:2] == [BOS, tok.convert_tokens_to_ids("<|im_start|>")] and ids.count(BOS) == 1


def test_a_doubled_bos_is_collapsed(gemma):
    # a rendered chat template already holds "<bos>"; encoding it with special tokens would double it
    rendered = gemma.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    assert gemma(rendered)["input_ids"][:2] == [BOS, BOS]  # the usual mistake
    ids = encode_prompt(gemma, rendered)
    assert ids[0] == BOS and ids.count(BOS) == 1
    assert with_prefix(gemma, [BOS, BOS, 7]) == [BOS, 7]
    assert with_prefix(gemma, [7]) == [BOS, 7]


def test_completion_ends_with_eos_and_has_no_bos(gemma):
    fmt = Formatter(gemma, use_chat_template=False)
    assert fmt.completion_ids(" delight", 3) == [*gemma.encode(" delight", add_special_tokens=False), EOS]
    assert encode_scored(gemma, TEXT) == [BOS, *gemma.encode(TEXT, add_special_tokens=False), EOS]


def test_truncated_prompt_keeps_its_bos(gemma):
    plain = gemma.encode(TEXT, add_special_tokens=False)
    assert len(plain) > 3
    fmt = Formatter(gemma, use_chat_template=False, max_prompt_length=3, max_length=8)
    assert fmt.prompt_ids(TEXT) == [BOS, *plain[-2:]]


def test_affixes_follow_a_change_of_the_tokenizer():
    tok = smol_like()
    assert special_affixes(tok) == ([], [])
    tok.add_bos_token = True  # rewrites the post-processor: the cached answer must not stick
    assert special_affixes(tok) == ([BOS], [])


def test_local_judge_feeds_the_model_its_bos(gemma):
    from transformers import GPT2Config, GPT2LMHeadModel

    from alignlab.judges.local import LocalJudge
    from alignlab.models.loader import LoadedLM, ModelSpec

    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(gemma), n_embd=16, n_layer=1, n_head=2)).eval()
    seen = []
    model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].tolist()), with_kwargs=True)
    judge = LocalJudge(ModelSpec(source="tiny"), use_chat_template=False, device="cpu")
    judge._lm = LoadedLM(model, gemma, judge.spec)
    judge.next_token_logprobs([TEXT])
    assert seen == [[gemma(TEXT)["input_ids"]]]
    assert seen[0][0][0] == BOS

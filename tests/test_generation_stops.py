"""Sampling stops at every end token: the generation config's EOS list and the chat template's end of
turn, not only the tokenizer's EOS."""

from __future__ import annotations

from alignlab.models.generation import SamplingConfig, end_of_turn_id, sample, stop_token_ids


def test_generation_config_eos_list_stops_and_cuts(tiny_lm):
    model, tok = tiny_lm.model, tiny_lm.tokenizer
    prompts = [tok.encode("hello there", add_special_tokens=False)]
    greedy = SamplingConfig(max_new_tokens=8, temperature=0.0)
    free = sample(model, tok, prompts, greedy).completion_ids[0].tolist()
    # a token greedy decoding produces at step k (and not before): make it a stop token
    k = next(i for i in range(1, len(free)) if free[i] not in free[:i] and free[i] != tok.eos_token_id)
    model.generation_config.eos_token_id = [tok.eos_token_id, free[k]]
    assert stop_token_ids(model, tok) == [tok.eos_token_id, free[k]]
    out = sample(model, tok, prompts, greedy)
    assert out.completion_mask[0].sum().item() == k + 1 and bool(out.stopped[0])
    assert out.completion_ids[0, : k + 1].tolist() == free[: k + 1]
    assert (out.completion_ids[0, k + 1 :] == tok.pad_token_id).all()


def test_end_of_turn_of_the_chat_template():
    from alignlab.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    assert end_of_turn_id(tok) == tok.eos_token_id  # no chat template: EOS
    tok.add_special_tokens({"additional_special_tokens": ["<end_of_turn>"]})
    tok.chat_template = "{% for m in messages %}<start_of_turn>{{ m['content'] }}<end_of_turn>{% endfor %}"
    eot = tok.convert_tokens_to_ids("<end_of_turn>")
    assert eot != tok.eos_token_id and end_of_turn_id(tok) == eot

    class Model:  # only the generation config matters here
        class generation_config:
            eos_token_id = 5

    assert stop_token_ids(Model(), tok) == [5, tok.eos_token_id, eot]

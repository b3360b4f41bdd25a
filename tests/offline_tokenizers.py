"""Two tokenizer conventions built offline (no hub), for tests of how prompts are encoded.

``gemma_like()``: a byte-level BPE whose post-processor puts ``<bos>`` before every text while the
tokenizer reports ``add_bos_token=False``, and whose chat template writes ``<bos>`` itself (Gemma 3).
``smol_like()``: the same vocabulary with no post-processor and a ChatML template without BOS (SmolLM2).
Special ids are fixed: ``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2.
"""

from __future__ import annotations

PAD, EOS, BOS = 0, 1, 2
CORPUS = [
    "Hello world. The film was a delight from start to finish.",
    "Movie review: the plot was dull and far too long, terrible acting.",
    "An ordinary, middling day. Great fun, I loved it. ok",
]
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else "
    "m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _backend(bos_post_processor: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator(CORPUS, trainer)
    if bos_post_processor:
        tk.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", BOS)]
        )
    return tk


def _wrap(backend, template: str):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    tok.chat_template = template
    tok.padding_side = "right"
    return tok


def gemma_like():
    """BOS from the post-processor, ``add_bos_token`` False, a chat template that writes BOS."""
    return _wrap(_backend(True), GEMMA_TEMPLATE)


def smol_like():
    """No special tokens added to a text; a ChatML template without BOS."""
    return _wrap(_backend(False), CHATML_TEMPLATE)

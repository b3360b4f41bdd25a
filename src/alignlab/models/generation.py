"""Batched sampling with the KV cache (left padding), stopping early once every sequence has ended."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


@dataclass
class SamplingConfig:
    """How completions are sampled."""

    max_new_tokens: int = 32
    """Upper bound on completion length."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 disables."""


@dataclass
class Generation:
    """Sampled completions: token ids (B, L) right-padded, their lengths and whether each stopped."""

    prompt_ids: list[list[int]]
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    stopped: torch.Tensor
    texts: list[str]
    completion_logps: torch.Tensor | None = None
    """With ``sample(return_logps=True)``: log pi(y_t | x, y_<t) of each completion token (B, L), fp32,
    from the model's raw logits at temperature 1 (whatever the sampling temperature, top-k or top-p); 0
    past the completion."""


# End-of-turn markers of common chat templates: ChatML (SmolLM2, Qwen), Gemma, Llama 3, Phi-3.
END_OF_TURN_TOKENS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>")


def end_of_turn_id(tokenizer) -> int | None:
    """The token that closes an assistant turn in the tokenizer's chat template (Gemma's
    ``<end_of_turn>``, ChatML's ``<|im_end|>``), else the tokenizer's EOS."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):
        template = " ".join(template.values())
    for token in END_OF_TURN_TOKENS:
        if token in template:
            tid = tokenizer.convert_tokens_to_ids(token)
            if isinstance(tid, int) and tid != tokenizer.unk_token_id:
                return tid
    return tokenizer.eos_token_id


def stop_token_ids(model, tokenizer) -> list[int]:
    """Every token that ends a completion: the model's generation-config EOS list, the tokenizer's EOS
    and the chat template's end of turn."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [
        *(eos if isinstance(eos, (list, tuple)) else [eos]),
        tokenizer.eos_token_id,
        end_of_turn_id(tokenizer),
    ]
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


def left_pad(seqs: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists for generation: ids (B, T), attention mask (B, T)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


def shared_prompt_cache(model, prompt_ids: list[list[int]], ids, mask, group: int):
    """A KV cache of the left-padded prompts ``ids`` (B, P) without their last column, computed on one row
    per run of ``group`` identical prompts and repeated for the run's rows, for ``generate`` to continue
    from (it then feeds only the last prompt token and samples). None where that does not apply: no
    runs of identical prompts, or one-token prompts."""
    from transformers import DynamicCache

    b = len(prompt_ids)
    if group < 2 or b % group or ids.shape[1] < 2:
        return None
    if any(prompt_ids[i] != prompt_ids[i - i % group] for i in range(b)):
        return None
    head_ids, head_mask = ids[::group, :-1], mask[::group, :-1]
    cache = DynamicCache()
    model(
        input_ids=head_ids,
        attention_mask=head_mask,
        position_ids=(head_mask.cumsum(-1) - 1).clamp(min=0),
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    cache.batch_repeat_interleave(group)
    return cache


@contextlib.contextmanager
def cast_weights(model, dtype: torch.dtype | None):
    """Run ``model`` with its floating-point parameters cast to ``dtype`` (e.g. bf16 weights for
    decoding: under autocast every decoding step would cast the fp32 weights again) and autocast off; on
    exit every parameter gets its original tensor back (the same storage, bit for bit). None: unchanged."""
    if dtype is None:
        yield model
        return
    saved = [(p, p.data) for p in model.parameters() if p.is_floating_point() and p.dtype != dtype]
    try:
        for p, data in saved:
            p.data = data.to(dtype)
        with torch.autocast(next(model.parameters()).device.type, enabled=False):
            yield model
    finally:
        for p, data in saved:
            p.data = data


@torch.no_grad()
def sample(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    cfg: SamplingConfig,
    generator_seed: int | None = None,
    lean_lora: bool = False,
    group: int = 1,
    weights_dtype: torch.dtype | None = None,
    return_logps: bool = False,
) -> Generation:
    """Sample one completion per prompt. Completion ids are cut at (and include) the first stop token
    (``stop_token_ids``: the generation config's EOS list, EOS, the chat template's end of turn).

    ``lean_lora``: decode a LoRA policy with peft's wrappers swapped for minimal modules computing the
    same function (``alignlab.models.peft.lean_adapter``; faster decoding, no extra memory).
    ``group``: the prompts come in runs of this many identical ones (RLOO's k samples per prompt); each
    run's prompt is then encoded once and its KV cache repeated for the run's rows
    (``shared_prompt_cache``), instead of encoding it ``group`` times.
    ``weights_dtype``: decode with the weights cast to this dtype (``cast_weights``; bf16 under a bf16
    trainer), restored exactly afterwards.
    ``return_logps``: also return each completion token's log-prob under the model
    (``Generation.completion_logps``), read from the decoding steps' raw logits: no second forward."""
    from alignlab.models.peft import lean_adapter

    device = next(model.parameters()).device
    ids, mask = left_pad(prompt_ids, tokenizer.pad_token_id, device)
    was_training = model.training
    model.eval()
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    greedy = cfg.temperature <= 0
    stops = stop_token_ids(model, tokenizer)
    kwargs = dict(
        max_new_tokens=cfg.max_new_tokens,
        do_sample=not greedy,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stops,
        use_cache=True,
    )
    if return_logps:  # the raw (unprocessed) logits of every decoding step: (B, V) per step
        kwargs.update(return_dict_in_generate=True, output_logits=True)
    if not greedy:
        kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k or None)
    with cast_weights(model, weights_dtype), lean_adapter(model) if lean_lora else contextlib.nullcontext():
        cache = shared_prompt_cache(model, prompt_ids, ids, mask, group)
        if cache is not None:
            kwargs["past_key_values"] = cache
        out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    if was_training:
        model.train()
    step_logits = out.logits if return_logps else None
    if return_logps:
        out = out.sequences
    completion = out[:, ids.shape[1] :]  # (B, L)
    is_eos = torch.isin(completion, torch.tensor(stops, device=completion.device))
    stopped = is_eos.any(-1)
    # keep tokens up to and including the first EOS
    first = torch.where(
        stopped, is_eos.float().argmax(-1), torch.full_like(stopped, completion.shape[1], dtype=torch.long)
    )
    pos = torch.arange(completion.shape[1], device=completion.device).unsqueeze(0)
    cmask = (pos <= first.unsqueeze(1)) & (pos < completion.shape[1])
    completion = torch.where(cmask, completion, torch.full_like(completion, tokenizer.pad_token_id))
    texts = [tokenizer.decode(c[m].tolist(), skip_special_tokens=True) for c, m in zip(completion, cmask)]
    logps = None if step_logits is None else step_logprobs(step_logits, completion, cmask)
    return Generation(prompt_ids, completion, cmask.long(), stopped, texts, logps)


def step_logprobs(step_logits, completion: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """log softmax(logits_t)[y_t] of each generated token (B, L) from the decoding steps' raw logits (a
    (B, V) tensor per step), in fp32; 0 where ``completion_mask`` is not set."""
    from alignlab.models.logprobs import gather_logprobs

    logps = torch.zeros(completion.shape, dtype=torch.float32, device=completion.device)  # (B, L)
    for t, logits in enumerate(step_logits):
        logps[:, t] = gather_logprobs(logits, completion[:, t])
    return logps * completion_mask

"""Log-probs of completions: rollouts (left-padded prompt, right-padded completion, as sampled) and
preference pairs (chosen and rejected in one forward).

A rollout is laid out as the generator produced it: left-padded prompt (width P) then right-padded
completion (width L), so every per-token tensor is (B, L) and aligned with the completion tokens.
"""

from __future__ import annotations

import torch

from alignlab.models.logprobs import gather_logprobs, grouped_completion_logits, token_logprobs


def forward_completion(
    model,
    query_responses: torch.Tensor,
    attention_mask: torch.Tensor,
    context_length: int,
    temperature: float = 1.0,
    with_hidden: bool = False,
    group: int = 1,
):
    """Logits (B, L, V) predicting each completion token, and optionally the hidden states (B, L, H)
    of the positions that predict them. Position ids follow the left padding, as in generation.

    With ``group`` = k >= 2 (rows in groups of k samples of one prompt) and no hidden states, each prompt
    runs once per group (``grouped_completion_logits``; logits past a completion's end are zeros) where
    the model and layout allow it, else the plain forward below."""
    if group > 1 and not with_hidden:
        logits = grouped_completion_logits(
            model, query_responses, attention_mask, context_length, group, temperature
        )
        if logits is not None:
            return logits, None
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    length = query_responses.shape[1] - context_length
    out = model(
        input_ids=query_responses,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
        output_hidden_states=with_hidden,
        logits_to_keep=length + 1,
    )
    logits = out.logits[:, -length - 1 : -1]  # (B, L, V)
    if temperature != 1.0:
        logits = logits / temperature
    hidden = out.hidden_states[-1][:, context_length - 1 : -1] if with_hidden else None  # (B, L, H)
    return logits, hidden


def completion_logprobs(
    model,
    query_responses: torch.Tensor,
    attention_mask: torch.Tensor,
    context_length: int,
    temperature: float = 1.0,
    chunk: int | None = None,
    group: int = 1,
) -> torch.Tensor:
    """log pi(completion token) (B, L), in chunks of ``chunk`` sequences to bound the logits' memory;
    ``group``: see ``forward_completion`` (a chunk that does not hold whole groups takes the plain path)."""
    chunk = chunk or query_responses.shape[0]
    out = []
    for i in range(0, query_responses.shape[0], chunk):
        logits, _ = forward_completion(
            model,
            query_responses[i : i + chunk],
            attention_mask[i : i + chunk],
            context_length,
            temperature,
            group=group,
        )
        out.append(gather_logprobs(logits, query_responses[i : i + chunk, context_length:]))
        del logits
    return torch.cat(out)


def completion_kl(
    model,
    ref_model,
    query_responses: torch.Tensor,
    attention_mask: torch.Tensor,
    context_length: int,
    temperature: float = 1.0,
    chunk: int | None = None,
) -> torch.Tensor:
    """Exact per-token KL(pi_T || pi_ref_T) (B, L) of the next-token distributions at temperature ``T``,
    summed over the whole vocabulary, at every completion position: summed over a completion sampled
    from pi_T it estimates the sequence-level KL without bias (chain rule), and each term is a KL (never
    negative). ``ref_model``: the policy's ``ReferenceModel``; ``chunk``: sequences per forward."""
    import torch.nn.functional as F

    chunk = chunk or query_responses.shape[0]
    out = []
    for i in range(0, query_responses.shape[0], chunk):
        rows = (query_responses[i : i + chunk], attention_mask[i : i + chunk], context_length, temperature)
        logp = F.log_softmax(forward_completion(model, *rows)[0].float(), -1)  # (b, L, V)
        with ref_model as ref:
            ref_logp = F.log_softmax(forward_completion(ref, *rows)[0].float(), -1)
        out.append((logp.exp() * (logp - ref_logp)).sum(-1))  # (b, L)
        del logp, ref_logp
    return torch.cat(out)


def concatenated_inputs(batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack chosen over rejected: input_ids, attention_mask, loss_mask, each (2B, T).

    The preference collator pads both halves to one width (the longest sequence in the batch).
    """

    def cat(name: str) -> torch.Tensor:
        c, r = batch[f"chosen_{name}"], batch[f"rejected_{name}"]
        if c.shape[1] != r.shape[1]:
            raise ValueError(
                f"chosen_{name} and rejected_{name} differ in width ({c.shape[1]} vs {r.shape[1]}); "
                "use PreferenceCollator, which pads both to one width"
            )
        return torch.cat([c, r], dim=0)  # (2B, T)

    return cat("input_ids"), cat("attention_mask"), cat("loss_mask")


def concatenated_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward over chosen and rejected together. Returns the summed completion log-probs (2B,) and
    the completion token counts (2B,): rows [:B] are chosen, rows [B:] rejected."""
    input_ids, attention_mask, loss_mask = concatenated_inputs(batch)
    logps, mask = token_logprobs(model, input_ids, attention_mask, loss_mask)  # (2B, T-1)
    return logps.sum(-1), mask.sum(-1)


def pair_logps(model, batch: dict, share_prompt: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs (2B,) and token counts (2B,), chosen rows then rejected: with
    ``share_prompt`` each pair's prompt runs once (``shared_prompt_logps``) where the layout allows,
    else the concatenated (2B, T) forward."""
    from alignlab.models.logprobs import shared_prompt_logps

    out = shared_prompt_logps(model, batch) if share_prompt else None
    return out if out is not None else concatenated_logps(model, batch)

"""Token and sequence log-probabilities: the one forward machinery every algorithm shares.

``token_logprobs`` runs the transformer over every position but the vocabulary head only over the
positions that carry loss (completion tokens): prompt and padding positions never get (V,)-wide logits.
For SmolLM2-135M the head (576 x 49152) is about a fifth of the forward FLOPs per position, and the
log-softmax over the vocabulary is the largest activation, so skipping those rows saves both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# config attributes of HF causal LMs whose forward transforms the head's output (soft-capping, scaling):
# such models take the plain path (full forward), which is always exact
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def gather_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) for each position without materialising a full log-softmax copy.

    logits (..., V), labels (...) -> (...). Uses ``logit[label] - logsumexp(logits)``.
    """
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)  # (...)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy of the categorical given by ``logits`` (B, T, V) -> (B, T)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def split_head(model) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(backbone, LM head) of a HF causal LM (LoRA-wrapped or not), or None when the logits are not
    ``head(backbone(...).last_hidden_state)`` (no separate backbone, or a post-head transform)."""
    from alignlab.models.peft import is_peft

    inner = model.get_base_model() if is_peft(model) else model
    get_head = getattr(inner, "get_output_embeddings", None)
    head = get_head() if get_head is not None else None
    body = getattr(inner, "base_model", inner)
    if head is None or body is inner:
        return None
    cfg = getattr(inner, "config", None)
    if any(getattr(cfg, name, None) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS):
        return None
    return body, head


def _full_token_logprobs(model, input_ids, attention_mask, mask, temperature):
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    logits = out.logits[:, :-1]  # (B, T-1, V)
    if temperature != 1.0:
        logits = logits / temperature
    return gather_logprobs(logits, input_ids[:, 1:]) * mask, logits


def token_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    loss_mask: torch.Tensor,
    temperature: float = 1.0,
    return_logits: bool = False,
):
    """Log-probs of each next token under ``model``, computed only where ``loss_mask`` is set.

    input_ids, attention_mask, loss_mask: (B, T). Returns (B, T-1) log-probs of tokens 1..T-1 (0 where
    the shifted mask is 0) and the shifted mask (B, T-1); with ``return_logits`` also the full
    (B, T-1, V) logits (that path runs the head everywhere).
    """
    mask = loss_mask[:, 1:].to(torch.float32)  # (B, T-1)
    parts = None if return_logits else split_head(model)
    if parts is None:
        logps, logits = _full_token_logprobs(model, input_ids, attention_mask, mask, temperature)
        return (logps, mask, logits) if return_logits else (logps, mask)
    body, head = parts
    # 1. transformer over every position (the same call the causal LM makes before its head)
    hidden = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    # 2. the head only on positions whose next token carries loss: (N, H) -> (N, V)
    keep = mask.bool()  # (B, T-1)
    logits = head(hidden[:, :-1][keep])  # (N, V)
    if temperature != 1.0:
        logits = logits / temperature
    picked = gather_logprobs(logits, input_ids[:, 1:][keep])  # (N,)
    # 3. back to (B, T-1), zeros elsewhere
    logps = torch.zeros(mask.shape, dtype=picked.dtype, device=picked.device).masked_scatter(keep, picked)
    return logps, mask


def attention_kind(model) -> str | None:
    """The model's attention implementation (``sdpa``, ``eager``, ``flash_attention_2``, ...)."""
    cfg = getattr(model, "config", None)
    return getattr(cfg, "_attn_implementation", None) or getattr(cfg, "attn_implementation", None)


def segment_attention_mask(segments: torch.Tensor, kind: str) -> torch.Tensor:
    """Attention of rows laid out as ``prompt | completion 1 | completion 2 | ... | padding``.

    ``segments`` (B, W): 0 prompt, j >= 1 completion j, -1 padding. Returns (B, 1, W, W): query q sees
    key k iff k <= q and k is prompt or in q's own completion; padding sees itself. Boolean for sdpa,
    additive float for eager attention.
    """
    width = segments.shape[1]
    q_seg, k_seg = segments[:, :, None], segments[:, None, :]  # (B, W, 1), (B, 1, W)
    causal = torch.ones(width, width, dtype=torch.bool, device=segments.device).tril()
    allowed = causal & (k_seg >= 0) & ((k_seg == 0) | (k_seg == q_seg))
    allowed |= torch.eye(width, dtype=torch.bool, device=allowed.device)
    allowed = allowed[:, None]  # (B, 1, W, W)
    if kind == "sdpa":
        return allowed
    mask = torch.zeros(allowed.shape, dtype=torch.float32, device=allowed.device)
    return mask.masked_fill(~allowed, torch.finfo(torch.float32).min)


@dataclass
class SharedPromptLayout:
    """Preference pairs as one row each, ``prompt | chosen | rejected | padding``: (B, W) tensors."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segments: torch.Tensor  # 0 prompt, 1 chosen, 2 rejected, -1 padding
    prompt_lens: list[int]
    chosen_lens: list[int]
    rejected_lens: list[int]

    def attention_mask(self, kind: str) -> torch.Tensor:
        """(B, 1, W, W), see ``segment_attention_mask``."""
        return segment_attention_mask(self.segments, kind)

    def last_positions(self) -> torch.Tensor:
        """(2B,) column of each sequence's last real token, chosen rows then rejected rows."""
        chosen = [p + c - 1 for p, c in zip(self.prompt_lens, self.chosen_lens)]
        rejected = [
            p + c + r - 1 if r else p - 1
            for p, c, r in zip(self.prompt_lens, self.chosen_lens, self.rejected_lens)
        ]
        return torch.tensor(chosen + rejected, dtype=torch.long, device=self.input_ids.device)


def shared_prompt_layout(batch: dict) -> SharedPromptLayout | None:
    """Lay a PreferenceCollator batch out as one row per pair, or None where it does not apply: an
    empty prompt, or rows that are not ``prompt + completion`` right-padded with the same prompt."""
    if "chosen_loss_mask" not in batch or "rejected_loss_mask" not in batch:
        return None
    c_ids, r_ids = batch["chosen_input_ids"], batch["rejected_input_ids"]
    c_att, r_att = batch["chosen_attention_mask"], batch["rejected_attention_mask"]
    c_loss, r_loss = batch["chosen_loss_mask"], batch["rejected_loss_mask"]
    n_c, n_r = c_loss.sum(-1).tolist(), r_loss.sum(-1).tolist()
    plen = (c_att.sum(-1) - c_loss.sum(-1)).tolist()
    if (r_att.sum(-1) - r_loss.sum(-1)).tolist() != plen or min(plen) < 1:
        return None
    for i, p in enumerate(plen):  # prompt shared, then one contiguous completion in each row
        c, r = n_c[i], n_r[i]
        if not torch.equal(c_ids[i, :p], r_ids[i, :p]):
            return None
        if int(c_att[i, : p + c].sum()) != p + c or int(c_loss[i, p : p + c].sum()) != c:
            return None
        if int(r_att[i, : p + r].sum()) != p + r or int(r_loss[i, p : p + r].sum()) != r:
            return None
    b, width = len(plen), max(p + c + r for p, c, r in zip(plen, n_c, n_r))
    ids = torch.zeros(b, width, dtype=torch.long, device=c_ids.device)
    pos = torch.zeros(b, width, dtype=torch.long)
    seg = torch.full((b, width), -1, dtype=torch.long)
    for i, (p, c, r) in enumerate(zip(plen, n_c, n_r)):
        ids[i, : p + c] = c_ids[i, : p + c]
        ids[i, p + c : p + c + r] = r_ids[i, p : p + r]
        pos[i, : p + c] = torch.arange(p + c)
        pos[i, p + c : p + c + r] = torch.arange(p, p + r)  # the rejected completion follows the prompt
        seg[i, :p], seg[i, p : p + c], seg[i, p + c : p + c + r] = 0, 1, 2
    return SharedPromptLayout(ids, pos.to(ids.device), seg.to(ids.device), plen, n_c, n_r)


def shared_prompt_hidden(body, layout: SharedPromptLayout, kind: str) -> torch.Tensor:
    """(B, W, H) final hidden states of the pair rows: one transformer pass, each prompt once."""
    out = body(
        input_ids=layout.input_ids,
        attention_mask=layout.attention_mask(kind),
        position_ids=layout.position_ids,
        use_cache=False,
    )
    return out.last_hidden_state


def shared_prompt_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Chosen and rejected log-probs with the prompt run once per pair: (2B,) sums and (2B,) counts,
    rows [:B] chosen and [B:] rejected, equal to the concatenated (2B, T) forward.

    Each pair becomes one row ``prompt | chosen | rejected`` with a custom 4D mask (the rejected tokens
    see the prompt and themselves, never the chosen ones) and position ids that restart the rejected
    completion right after the prompt; the head runs on completion positions only. Returns None where
    this does not apply (no separate head, attention other than sdpa/eager, or a batch layout
    ``shared_prompt_layout`` declines), so the caller takes the concatenated path.
    """
    parts, kind = split_head(model), attention_kind(model)
    layout = shared_prompt_layout(batch) if parts is not None and kind in ("sdpa", "eager") else None
    if layout is None:
        return None
    body, head = parts
    b = len(layout.prompt_lens)
    rows, src, lab, seq = [], [], [], []  # (row, column) of the head input, label column, output sequence
    for i, (p, c, r) in enumerate(zip(layout.prompt_lens, layout.chosen_lens, layout.rejected_lens)):
        # token t of a completion is predicted at the previous token; the first at the last prompt token
        rows += [i] * (c + r)
        src += [p - 1, *range(p, p + c - 1)][:c] + [p - 1, *range(p + c, p + c + r - 1)][:r]
        lab += [*range(p, p + c + r)]
        seq += [i] * c + [b + i] * r
    device = layout.input_ids.device
    rows_t, src_t, lab_t, seq_t = (
        torch.tensor(x, dtype=torch.long, device=device) for x in (rows, src, lab, seq)
    )
    # 1. one transformer pass over the B pair rows
    hidden = shared_prompt_hidden(body, layout, kind)  # (B, W, H)
    # 2. the head on completion positions only: (N, H) -> (N, V)
    logits = head(hidden[rows_t, src_t])
    picked = gather_logprobs(logits, layout.input_ids[rows_t, lab_t])  # (N,)
    # 3. per-sequence sums, chosen rows then rejected rows
    logps = torch.zeros(2 * b, dtype=picked.dtype, device=device).index_add(0, seq_t, picked)
    ntok = torch.tensor(layout.chosen_lens + layout.rejected_lens, dtype=torch.float32, device=device)
    return logps, ntok


# -- k completions of one prompt (RLOO / GRPO rollouts) ----------------------------------------------------
@dataclass
class GroupedRolloutLayout:
    """A rollout batch whose rows come in groups of ``k`` with the same prompt, as one row per group:
    ``prompt | completion 1 | ... | completion k | padding`` (G, W), and where each completion token's
    logits come from (``src``) and go to in the rollout's (B, L) layout (``dst``)."""

    input_ids: torch.Tensor  # (G, W)
    position_ids: torch.Tensor  # (G, W)
    segments: torch.Tensor  # (G, W): 0 prompt, j completion j, -1 padding
    src: tuple[torch.Tensor, torch.Tensor]  # (N,) row and column of the position predicting each token
    dst: tuple[torch.Tensor, torch.Tensor]  # (N,) rollout row and completion column of that token


# widest group row: attention over a row costs O(width^2) with the custom mask (no flash kernel), so
# long completions times k cost more attention than the shared prompt saves in the linear layers
MAX_GROUP_WIDTH = 1024


def grouped_rollout_layout(
    query_responses: torch.Tensor,
    attention_mask: torch.Tensor,
    context_length: int,
    k: int,
    max_width: int = MAX_GROUP_WIDTH,
) -> GroupedRolloutLayout | None:
    """Lay a rollout batch (left-padded prompt of width ``context_length``, right-padded completion) out
    with each prompt once per group of ``k`` consecutive rows, or None where that does not apply: k < 2,
    rows not in groups of k with the same prompt, an empty prompt, masks that are not one contiguous
    prompt and one contiguous completion, or a group row wider than ``max_width`` tokens."""
    b = query_responses.shape[0]
    if k < 2 or b % k or b == 0:
        return None
    qr, att = query_responses.cpu(), attention_mask.cpu().bool()
    ctx_mask, resp_mask = att[:, :context_length], att[:, context_length:]
    plen, clen = ctx_mask.sum(-1).tolist(), resp_mask.sum(-1).tolist()
    for i in range(b):  # prompt = suffix of the context block, completion = prefix of the rest
        if (
            plen[i] < 1
            or not ctx_mask[i, context_length - plen[i] :].all()
            or not resp_mask[i, : clen[i]].all()
        ):
            return None
    prompts = [qr[i, context_length - plen[i] : context_length] for i in range(b)]
    groups = b // k
    for g in range(groups):
        if any(not torch.equal(prompts[g * k], prompts[g * k + j]) for j in range(1, k)):
            return None
    width = max(plen[g * k] + sum(clen[g * k : (g + 1) * k]) for g in range(groups))
    if width > max_width:
        return None
    ids = torch.zeros(groups, width, dtype=torch.long)
    pos = torch.zeros(groups, width, dtype=torch.long)
    seg = torch.full((groups, width), -1, dtype=torch.long)
    src_r, src_c, dst_r, dst_c = [], [], [], []
    for g in range(groups):
        p = plen[g * k]
        ids[g, :p], pos[g, :p], seg[g, :p] = prompts[g * k], torch.arange(p), 0
        col = p
        for j in range(k):
            i, c = g * k + j, clen[g * k + j]
            ids[g, col : col + c] = qr[i, context_length : context_length + c]
            pos[g, col : col + c] = torch.arange(p, p + c)  # each completion follows the prompt
            seg[g, col : col + c] = j + 1
            # token t is predicted at the previous token; the first at the prompt's last token
            src_r += [g] * c
            src_c += [p - 1, *range(col, col + c - 1)][:c]
            dst_r += [i] * c
            dst_c += range(c)
            col += c
    device = query_responses.device

    def t(x):
        return torch.as_tensor(x, dtype=torch.long, device=device)

    return GroupedRolloutLayout(
        ids.to(device), pos.to(device), seg.to(device), (t(src_r), t(src_c)), (t(dst_r), t(dst_c))
    )


def grouped_completion_logits(
    model,
    query_responses: torch.Tensor,
    attention_mask: torch.Tensor,
    context_length: int,
    k: int,
    temperature: float = 1.0,
) -> torch.Tensor | None:
    """Logits (B, L, V) predicting each completion token of a rollout batch, with each prompt run once
    per group of ``k`` rows (the k samples of one prompt) instead of k times, and no padding between
    completions. Positions past a completion's end hold zeros (the callers mask them). The same numbers as
    the (B, P + L) forward up to float rounding; None where it does not apply (no separate head,
    attention other than sdpa/eager, or a layout ``grouped_rollout_layout`` declines)."""
    parts, kind = split_head(model), attention_kind(model)
    if parts is None or kind not in ("sdpa", "eager"):
        return None
    layout = grouped_rollout_layout(query_responses, attention_mask, context_length, k)
    if layout is None:
        return None
    body, head = parts
    hidden = body(
        input_ids=layout.input_ids,
        attention_mask=segment_attention_mask(layout.segments, kind),
        position_ids=layout.position_ids,
        use_cache=False,
    ).last_hidden_state  # (G, W, H)
    logits = head(hidden[layout.src])  # (N, V): completion positions only
    if temperature != 1.0:
        logits = logits / temperature
    b, length = query_responses.shape[0], query_responses.shape[1] - context_length
    out = logits.new_zeros(b, length, logits.shape[-1])
    return out.index_put(layout.dst, logits)

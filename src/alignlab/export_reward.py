"""The reward-model side of ``alignlab-export``: a Bradley-Terry reward model (causal LM + scalar head)
as an ``AutoModelForSequenceClassification`` (``num_labels=1``, the score read at the last non-pad
token), checked to give alignlab's scores on probe texts, and its tokenizer set up so that the standard
``model(**tokenizer(texts)).logits`` call reproduces alignlab's input format (or the model card's explicit
call, where it cannot). ``alignlab.export.export_reward_model`` writes it with the model card.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_FINAL_NORMS = ("ln_f", "norm", "final_layer_norm", "norm_f", "final_layernorm")


def _fold_bias(seq_model, weight, bias: float) -> bool:
    """Add the head's bias b to every score by shifting the final norm's bias by b·w/|w|² (the norm's
    output feeds only the score head). False when the final norm has no bias (RMSNorm)."""
    import torch

    backbone = seq_model.base_model
    norm = next((getattr(backbone, n) for n in _FINAL_NORMS if hasattr(backbone, n)), None)
    if norm is None or getattr(norm, "bias", None) is None:
        return False
    w = weight.reshape(-1).to(norm.bias.dtype)
    with torch.no_grad():
        norm.bias.add_(bias * w / w.dot(w))
    return True


# prompt/completion boundaries that split the same whether encoded apart (alignlab) or joined (a user)
PROBE_PAIRS = [
    ("Review:", " It was a delight from start to finish."),
    ("", "Terrible."),
    ("Rate this:\n", "An ordinary, middling day."),
]


def _messages(prompt: str, system_prompt: str | None) -> list[dict]:
    head = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*head, {"role": "user", "content": prompt}]


def standard_texts(tok, fmt, pairs) -> list[str]:
    """The texts a transformers user passes to ``tokenizer(texts)``: the prompt as the reward model saw it
    (rendered by the chat template when it was trained with one), then the completion."""
    if not fmt.chat:
        return [p + c for p, c in pairs]
    render = tok.apply_chat_template
    return [
        render(_messages(p, fmt.system_prompt), add_generation_prompt=True, tokenize=False) + c
        for p, c in pairs
    ]


def _alignlab_ids(fmt, pairs) -> list[list[int]]:
    """How alignlab encodes each (prompt, completion) it scores: prompt (BOS as the tokenizer adds it),
    completion, EOS."""
    out = []
    for p, c in pairs:
        ids = fmt.prompt_ids(p)
        out.append(ids + fmt.completion_ids(c, len(ids)))
    return out


def _score_on_call(tok, fmt, expected: list[list[int]]) -> bool:
    """Make ``tok(text)`` give alignlab's ids (``expected``, for ``PROBE_PAIRS``): the tokenizer's BOS
    where the text does not already start with it (a chat template that writes it), and EOS at the end.
    False when the tokenizer has no post-processor to set (the card then gives the explicit call)."""
    from alignlab.data.tokenize import special_affixes

    def matches() -> bool:
        return [list(x) for x in tok(standard_texts(tok, fmt, PROBE_PAIRS))["input_ids"]] == expected

    if matches():  # ByT5 appends EOS itself
        return True
    if getattr(tok, "backend_tokenizer", None) is None or not hasattr(tok, "update_post_processor"):
        return False
    prefix = special_affixes(tok)[0]
    if prefix and prefix != [tok.bos_token_id]:
        return False
    bos = bool(prefix)
    if bos and fmt.chat:  # a template that writes BOS itself: the call must not add a second one
        text = standard_texts(tok, fmt, [("x", "")])[0]
        bos = tok.encode(text, add_special_tokens=False)[:1] != prefix
    tok.add_bos_token, tok.add_eos_token = bos, True  # each setter rewrites the post-processor
    return matches()


def _save_tokenizer(tok, out_dir: Path) -> None:
    """Save with right padding (as trained and as checked); a padding direction left in the backend's
    own settings (from a generation call) would override the saved side on load."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        backend.no_padding()
    tok.padding_side = "right"
    # saved only as an init argument: else the class's own default comes back on load (Gemma's: left)
    tok.init_kwargs["padding_side"] = "right"
    tok.save_pretrained(out_dir)


def standard_scores(out_dir: str | Path, texts: list[str]) -> list[float]:
    """Scores by the standard call: ``model(**tokenizer(texts, padding=True, return_tensors="pt")).logits``,
    from the export directory alone."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out_dir)
    model = AutoModelForSequenceClassification.from_pretrained(out_dir).eval()
    with torch.no_grad():
        return model(**tok(texts, padding=True, return_tensors="pt")).logits[:, 0].tolist()


def _probe_scores(tok, fmt, score_fn) -> list[float]:
    import torch

    batch = _alignlab_ids(fmt, PROBE_PAIRS)
    width = max(map(len, batch))
    ids = torch.tensor([b + [tok.pad_token_id] * (width - len(b)) for b in batch])
    mask = torch.tensor([[1] * len(b) + [0] * (width - len(b)) for b in batch])
    with torch.no_grad():
        return [float(x) for x in score_fn(ids, mask)]


def _usage(fmt, standard: bool) -> str:
    """The model card's section on the exact call that reproduces alignlab's scores."""
    load = [
        "```python",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        "# out_dir: this directory; pairs: [(prompt, completion), ...]",
        "tok = AutoTokenizer.from_pretrained(out_dir)",
        "model = AutoModelForSequenceClassification.from_pretrained(out_dir)",
    ]
    if fmt.chat:
        sys_msg = f"{{'role': 'system', 'content': {fmt.system_prompt!r}}}, " if fmt.system_prompt else ""
        load.append(
            f"texts = [tok.apply_chat_template([{sys_msg}{{'role': 'user', 'content': p}}], "
            "add_generation_prompt=True, tokenize=False) + c for p, c in pairs]"
        )
    else:
        load.append("texts = [p + c for p, c in pairs]  # prompt, then completion, as plain text")
    if standard:
        load += ['scores = model(**tok(texts, padding=True, return_tensors="pt")).logits[:, 0]', "```"]
        how = (
            "The standard call gives alignlab's scores (the tokenizer adds BOS where alignlab does, and EOS):"
        )
    else:
        load += [
            "import torch",
            "from alignlab.data.tokenize import with_prefix  # or put the BOS your tokenizer adds in front",
            "rows = [with_prefix(tok, tok.encode(t, add_special_tokens=False)) + [tok.eos_token_id] for t in texts]",
            "inputs = tok.pad({'input_ids': rows}, return_tensors='pt')",
            "scores = model(**inputs).logits[:, 0]",
            "```",
        ]
        how = "This tokenizer cannot be set to add alignlab's special tokens itself; encode explicitly:"
    tail = (
        "alignlab encodes a prompt and its completion apart, so text joined at a space (a prompt ending in "
        "one) can split differently; end prompts before the space, as the completion starts with it."
    )
    return "\n".join(["## How to score", "", how, "", *load, "", tail])


@dataclass
class RewardClassifier:
    """A reward model converted to a sequence classifier, with what the export writes beside it."""

    seq: Any
    """The ``AutoModelForSequenceClassification`` (eval mode), input format recorded in its config."""
    tok: Any
    """The reward model's tokenizer (with its own pad token where pad was EOS)."""
    fmt: Any
    """The ``Formatter`` alignlab scored with (chat template or plain, system prompt)."""
    rcfg: dict
    """The reward model's ``reward_config.json``."""
    ours: list[float]
    """alignlab's scores of ``PROBE_PAIRS``."""
    offset: float
    """The constant alignlab's scores exceed the classifier's by (the head's bias where it cannot fold)."""
    note: str
    """The model card's note on that offset ("" when there is none)."""
    causal_name: str | None
    """The backbone's ``_name_or_path`` (where the base model came from)."""


def reward_classifier(reward_dir: Path, atol: float = 1e-4) -> RewardClassifier:
    """Load the reward model in ``reward_dir`` and build its sequence classifier; raises when the
    classifier's scores of ``PROBE_PAIRS`` differ from alignlab's by more than ``atol``."""
    from transformers import AutoModelForSequenceClassification

    from alignlab.data.tokenize import Formatter
    from alignlab.models.heads import load_reward_model, sequence_scores
    from alignlab.models.peft import is_peft

    model, head, tok, rcfg = load_reward_model(reward_dir, dtype="float32")
    fmt = Formatter(tok, rcfg.get("use_chat_template", "auto"), rcfg.get("system_prompt"), 4096, 8192)
    ours = _probe_scores(tok, fmt, lambda i, m: sequence_scores(model, head, i, m))
    causal = model.merge_and_unload() if is_peft(model) else model
    causal_name = getattr(causal.config, "_name_or_path", None)
    if tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:
        # the classifier reads the last token that is not pad: a pad equal to EOS would skip the EOS
        tok.add_special_tokens({"pad_token": "<|pad|>"})
    config = type(causal.config).from_dict(causal.config.to_dict())
    config.num_labels, config.architectures = 1, None
    config.id2label, config.label2id = {0: "reward"}, {"reward": 0}
    seq = AutoModelForSequenceClassification.from_config(config)
    missing, _unexpected = seq.load_state_dict(causal.state_dict(), strict=False)
    if [k for k in missing if not k.startswith("score.")]:
        raise ValueError(f"{reward_dir}: backbone weights the classifier lacks: {missing[:5]}")
    if len(tok) > seq.get_input_embeddings().weight.shape[0]:
        seq.resize_token_embeddings(len(tok))
    seq.config.pad_token_id = tok.pad_token_id
    weight = head.summary.weight.detach()
    bias = float(head.summary.bias.detach()) if head.summary.bias is not None else 0.0
    seq.score.weight.data.copy_(weight.reshape(seq.score.weight.shape))
    folded = bias == 0.0 or _fold_bias(seq, weight, bias)
    seq.eval()
    theirs = _probe_scores(tok, fmt, lambda i, m: seq(input_ids=i, attention_mask=m).logits[:, 0])
    offset = 0.0 if folded else bias
    worst = max(abs(a - (b + offset)) for a, b in zip(ours, theirs))
    if worst > atol:
        raise ValueError(f"exported reward model differs from alignlab's scores by {worst:.3g} (> {atol})")
    note = ""
    if not folded:  # a final RMSNorm has no bias to carry the head's: shift-invariant for Bradley-Terry
        config_note = {"alignlab_score_offset": bias}
        seq.config.update(config_note)
        note = (
            f"Scores are alignlab's minus a constant {bias:.6g} (the head's bias; the architecture's "
            "classifier has none). Differences between scores, and so preferences, are identical."
        )
        print(f"alignlab-export: note: {note}", file=sys.stderr)
    seq.config.update(
        {"alignlab_input_format": {"chat_template": fmt.chat, "system_prompt": fmt.system_prompt}}
    )
    return RewardClassifier(seq, tok, fmt, rcfg, ours, offset, note, causal_name)


def check_standard_call(out_dir: Path, rc: RewardClassifier, atol: float = 1e-4) -> bool:
    """Whether the tokenizer saved in ``out_dir``, as a user loads it, gives alignlab's ids for
    ``PROBE_PAIRS`` under ``tokenizer(texts)``; raises when it does and the scores then differ."""
    from transformers import AutoTokenizer

    fmt, expected = rc.fmt, _alignlab_ids(rc.fmt, PROBE_PAIRS)
    saved = AutoTokenizer.from_pretrained(out_dir)
    texts = standard_texts(saved, fmt, PROBE_PAIRS)
    if [list(x) for x in saved(texts)["input_ids"]] != expected:
        return False
    got = standard_scores(out_dir, texts)
    worst = max(abs(a - (b + rc.offset)) for a, b in zip(rc.ours, got))
    if worst > atol:
        raise ValueError(f"the exported reward model's standard call differs from alignlab by {worst:.3g}")
    return True


def is_reward_model(path: str | Path) -> bool:
    from alignlab.models.heads import CONFIG_FILE

    return (Path(path) / CONFIG_FILE).exists()

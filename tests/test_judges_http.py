"""The OpenAI-compatible judge against a scripted HTTP server on 127.0.0.1 (bounded, stops by itself)."""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from alignlab.judges.http import JudgeHTTPError, OpenAICompatibleJudge, retry_after_seconds
from alignlab.judges.templates import JudgeTemplate, parse_answer

MAX_REQUESTS = 200  # the server refuses anything beyond this and shuts down: a test can never spin


def completion(content, top=None):
    """A chat-completions response; ``top`` = [(token, logprob), ...] for the first answer token."""
    choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
    if top is not None:
        first = {"token": top[0][0], "logprob": top[0][1]}
        first["top_logprobs"] = [{"token": t, "logprob": lp} for t, lp in top]
        choice["logprobs"] = {"content": [first]}
    return {"choices": [choice], "usage": {"prompt_tokens": 10, "completion_tokens": 1}}


class Script:
    """What the server does: ``respond(request_json, n) -> (status, headers, body_bytes, delay_s)``."""

    def __init__(self, respond):
        self.respond = respond
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.ports: list[int] = []  # the client's port of each request: one port = one reused connection
        self.lock = threading.Lock()


@pytest.fixture
def server():
    servers = []

    def start(respond, keep_alive=False):
        script = Script(respond)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with script.lock:
                    script.requests.append(body)
                    script.headers.append(dict(self.headers))
                    script.ports.append(self.client_address[1])
                    n = len(script.requests)
                if n > MAX_REQUESTS:
                    self.send_response(418)
                    self.end_headers()
                    return
                status, headers, payload, delay = script.respond(body, n)
                if delay:
                    time.sleep(delay)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}/v1", script

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def ok(obj):
    return 200, {"Content-Type": "application/json"}, json.dumps(obj).encode(), 0


def make_judge(url, **kw):
    kw.setdefault("backoff_s", 0.01)
    kw.setdefault("read_timeout_s", 5)
    return OpenAICompatibleJudge(base_url=url, model="m", api_key_env="ALIGNLAB_TEST_KEY", **kw)


def judge_one(judge):
    return judge.judge_pairs(["Say something"], ["good text"], ["bad text"])[0]


def test_logprobs_both_orders_averaged(server):
    # the server prefers whatever is shown as A with p=0.8 (pure position bias): averaged, P = 0.5
    url, script = server(lambda body, n: ok(completion("A", [("A", math.log(0.8)), ("B", math.log(0.2))])))
    r = judge_one(make_judge(url))
    assert r["p_forward"] == pytest.approx(0.8) and r["p_backward"] == pytest.approx(0.2)
    assert r["p_first"] == pytest.approx(0.5) and r["verdict"] == "tie"
    assert len(script.requests) == 2 and script.requests[0]["logprobs"] is True
    assert "good text" in script.requests[0]["messages"][-1]["content"]


def test_api_key_only_from_env_and_never_in_identity(server, monkeypatch):
    url, script = server(lambda body, n: ok(completion("A", [("A", -0.1)])))
    monkeypatch.setenv("ALIGNLAB_TEST_KEY", "sk-secret-123")
    judge = make_judge(url, both_orders=False)
    judge_one(judge)
    assert {k.lower(): v for k, v in script.headers[0].items()}["authorization"] == "Bearer sk-secret-123"
    assert "sk-secret" not in judge.identity() and "sk-secret" not in json.dumps(judge.report_stats())


def test_retry_after_is_honoured_then_succeeds(server):
    def respond(body, n):
        if n == 1:
            return 429, {"Retry-After": "1"}, b'{"error": "slow down"}', 0
        return ok(completion("B", [("B", math.log(0.9)), ("A", math.log(0.1))]))

    url, script = server(respond)
    judge = make_judge(url, both_orders=False, backoff_s=0.01)
    t0 = time.perf_counter()
    r = judge_one(judge)
    assert time.perf_counter() - t0 >= 0.95  # waited what the server asked, not the 0.01 s backoff
    assert r["verdict"] == "second" and r["p_first"] == pytest.approx(0.1)
    assert judge.stats.calls == 2 and judge.stats.retries == 1


def test_server_errors_retried_with_backoff_then_give_up(server):
    url, script = server(lambda body, n: (503, {}, b"overloaded", 0))
    judge = make_judge(url, both_orders=False, max_retries=3)
    with pytest.raises(JudgeHTTPError, match="failed 4 times.*503"):
        judge_one(judge)
    assert len(script.requests) == 4


def test_client_error_not_retried_and_auth_error_names_the_variable(server):
    url, script = server(lambda body, n: (401, {}, b'{"error": "bad key"}', 0))
    with pytest.raises(JudgeHTTPError, match="ALIGNLAB_TEST_KEY"):
        judge_one(make_judge(url, both_orders=False, max_retries=3))
    assert len(script.requests) == 1
    url2, script2 = server(lambda body, n: (400, {}, b'{"error": "bad request"}', 0))
    with pytest.raises(JudgeHTTPError, match="400"):
        judge_one(make_judge(url2, both_orders=False, max_retries=3))
    assert len(script2.requests) == 1


def test_timeout_is_retried(server):
    # first request hangs past the client timeout, the retry answers at once
    def respond(body, n):
        delay = 1.5 if n == 1 else 0
        status, headers, payload, _ = ok(completion("A", [("A", -0.01), ("B", -5.0)]))
        return status, headers, payload, delay

    url, script = server(respond)
    judge = make_judge(url, both_orders=False, read_timeout_s=0.5, max_retries=2)
    r = judge_one(judge)
    assert r["verdict"] == "first" and judge.stats.retries == 1 and len(script.requests) == 2


def test_no_logprobs_strict_parser(server):
    answers = {"good text": "A.", "bad text": "Both are fine, maybe A or B"}

    def respond(body, n):
        shown_first = body["messages"][-1]["content"].split("Response A: ")[1].split("\n")[0]
        return ok(completion(answers[shown_first]))  # no logprobs offered

    url, script = server(respond)
    r = judge_one(make_judge(url))
    # forward order parsed ("A." -> first); swapped order unparseable: the pair is invalid, never a verdict
    assert r["p_forward"] == 1.0 and r["p_backward"] is None
    assert r["verdict"] == "invalid" and r["p_first"] is None


def test_malformed_bodies(server):
    def respond(body, n):
        if n == 1:
            return 200, {}, b"<html>not json</html>", 0  # retried
        return ok({"unexpected": True})  # JSON without choices: an invalid answer

    url, script = server(respond)
    r = judge_one(make_judge(url, both_orders=False, max_retries=2))
    assert r["verdict"] == "invalid" and len(script.requests) == 2


def test_logprobs_without_options_is_invalid(server):
    url, _ = server(lambda body, n: ok(completion("The", [("The", -0.1), ("I", -2.0)])))
    assert judge_one(make_judge(url))["verdict"] == "invalid"


def test_cache_second_run_makes_no_request(server, tmp_path):
    url, script = server(lambda body, n: ok(completion("A", [("A", -0.2), ("B", -1.8)])))
    kw = dict(cache_path=str(tmp_path / "c.sqlite"), concurrency=3)
    prompts, a, b = ["p1", "p2", "p3"], ["x1", "x2", "x3"], ["y1", "y2", "y3"]
    first = make_judge(url, **kw).judge_pairs(prompts, a, b)
    n = len(script.requests)
    assert n == 6
    again = make_judge(url, **kw)
    assert again.judge_pairs(prompts, a, b) == first
    assert len(script.requests) == n and again.stats.calls == 0 and again.cache.hits == 6


def test_pointwise_mode(server):
    def respond(body, n):
        positive = "good" in body["messages"][-1]["content"]
        p = 0.9 if positive else 0.3
        return ok(completion("yes", [("yes", math.log(p)), ("no", math.log(1 - p))]))

    url, _ = server(respond)
    t = JudgeTemplate(question="Is this text positive?")
    r = judge_one(make_judge(url, mode="pointwise", template=t))
    # σ(logit 0.9 − logit 0.3)
    expected = 1 / (1 + math.exp(-(math.log(9) - math.log(3 / 7))))
    assert r["p_first"] == pytest.approx(expected) and r["verdict"] == "first"


@pytest.mark.parametrize(
    "text,cot,expected",
    [
        ("A", False, 0),
        (" b. ", False, 1),
        ("Answer: B", False, 1),
        ("(A)", False, 0),
        ("A or B", False, None),
        ("Response A", False, None),
        ("", False, None),
        (None, False, None),
        ("A is more positive because...\nAnswer: B", True, 1),
        ("I think A.", True, None),
    ],
)
def test_strict_parser(text, cot, expected):
    assert parse_answer(text, ("A", "B"), chain_of_thought=cot) == expected


def test_retry_after_header_forms():
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= retry_after_seconds(future) <= 31


# -- network faults: bounded time, each retry logged, the server checked before any work ------------------
def _refused_url():
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_check_server_fails_fast_naming_the_url():
    url = _refused_url()
    judge = make_judge(url, max_retries=4, backoff_s=1.0)
    t0 = time.perf_counter()
    with pytest.raises(JudgeHTTPError, match=rf"judge server {url} is unreachable .*judge.base_url="):
        judge.check_server()
    assert time.perf_counter() - t0 < 2.0  # one request, no retries


def test_check_server_accepts_any_answer_but_a_refused_key(server):
    url, script = server(lambda body, n: ok({}))  # answers POST only: GET /models gets 501, still up
    make_judge(url).check_server()
    assert script.requests == []  # the check sent no chat completion

    class Deny(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Deny)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with pytest.raises(JudgeHTTPError, match="ALIGNLAB_TEST_KEY"):
            make_judge(f"http://127.0.0.1:{httpd.server_address[1]}/v1").check_server()
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_server_that_never_answers_stops_at_the_deadline(server):
    def respond(body, n):
        status, headers, payload, _ = ok(completion("A", [("A", -0.1)]))
        return status, headers, payload, 3.0  # answers long after the client gave up

    url, script = server(respond)
    judge = make_judge(url, both_orders=False, read_timeout_s=0.3, deadline_s=1.0, max_retries=50)
    t0 = time.perf_counter()
    with pytest.raises(JudgeHTTPError, match=r"no answer within .*deadline_s=1"):
        judge_one(judge)
    assert time.perf_counter() - t0 < 2.0 and 2 <= len(script.requests) <= 4


def test_each_retry_is_logged_with_its_cause(server, caplog):
    url, _ = server(lambda body, n: (503, {}, b"overloaded", 0))
    with caplog.at_level("WARNING", logger="alignlab.judges.http"), pytest.raises(JudgeHTTPError):
        judge_one(make_judge(url, both_orders=False, max_retries=2))
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 2 and all("HTTP 503: overloaded" in m and url in m for m in retries), retries
    assert "retry 1 of 2" in retries[0] and "retry 2 of 2" in retries[1]


def test_separate_connect_and_read_timeouts():
    judge = make_judge("http://127.0.0.1:1/v1", connect_timeout_s=2, read_timeout_s=7)
    assert (judge.client.timeout.connect, judge.client.timeout.read) == (2, 7)


def test_one_connection_is_reused(server):
    url, script = server(lambda body, n: ok(completion("A", [("A", -0.1)])), keep_alive=True)
    judge = make_judge(url, concurrency=1)
    judge.judge_pairs(["p1", "p2"], ["a1", "a2"], ["b1", "b2"])
    assert len(script.ports) == 4 and len(set(script.ports)) == 1, script.ports


def test_max_completion_tokens_for_newer_models(server):
    def respond(body, n):
        if "max_tokens" in body:
            msg = b'{"error": {"message": "Unsupported parameter: max_tokens. Use max_completion_tokens."}}'
            return 400, {}, msg, 0
        return ok(completion("A", [("A", -0.1), ("B", -3.0)]))

    url, script = server(respond)
    r = judge_one(make_judge(url, both_orders=False))  # auto: switches once, for good
    assert r["verdict"] == "first" and [("max_tokens" in b) for b in script.requests] == [True, False]
    assert script.requests[1]["max_completion_tokens"] == 4
    url2, script2 = server(respond)
    judge_one(make_judge(url2, both_orders=False, token_param="max_completion_tokens"))
    assert len(script2.requests) == 1 and "max_tokens" not in script2.requests[0]

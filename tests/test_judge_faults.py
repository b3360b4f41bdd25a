"""A judge that does not answer, and a judge cache that is damaged: non-answers are never cached (a rerun
asks again), "nothing could be labelled" is one line with the counts and what to try (exit 2), and a
corrupt cache file is moved aside with a warning (or, damaged mid-run, named in one line with the fix)."""

from __future__ import annotations

import json
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from alignlab.judges.cache import JudgeCache, JudgeCacheError
from alignlab.judges.option import OptionJudge
from conftest import REPO

PROMPTS, FIRSTS, SECONDS = ["p0", "p1", "p2"], ["WIN 0", "WIN 1", "WIN 2"], ["LOSE 0", "LOSE 1", "LOSE 2"]
NON_ANSWER = "I cannot decide which response is better."


class FakeJudge(OptionJudge):
    """Prefers the response saying WIN; ``garbage`` makes it answer no option (as a confused server does)."""

    name = "fake"

    def __init__(self, cache_path, garbage: bool):
        super().__init__(cache_path=str(cache_path), batch_size=2)
        self.garbage = garbage

    def identity(self) -> str:
        return "fake:1"

    def _answer(self, queries):
        if self.garbage:
            return [{"probs": None, "raw": NON_ANSWER} for _ in queries]
        out = []
        for q in queries:  # the response that says WIN is preferred, in either order
            text = q.messages[-1]["content"]
            p = 0.8 if text.find("WIN") < text.find("LOSE") else 0.2
            out.append({"probs": [p, 1 - p], "raw": "A" if p > 0.5 else "B"})
        return out


def test_non_answers_are_not_cached_and_the_next_run_asks_again(tmp_path):
    cache = tmp_path / "judge.sqlite"
    bad = FakeJudge(cache, garbage=True).judge_pairs(PROMPTS, FIRSTS, SECONDS)
    assert {r["verdict"] for r in bad} == {"invalid"}
    assert len(JudgeCache(cache)) == 0
    fixed = FakeJudge(cache, garbage=False)
    good = fixed.judge_pairs(PROMPTS, FIRSTS, SECONDS)
    assert fixed.stats.queries == 6 and {r["verdict"] for r in good} == {"first"}  # asked again, all of them
    again = FakeJudge(cache, garbage=True)  # answers are cached: the garbage judge is not even asked
    assert again.judge_pairs(PROMPTS, FIRSTS, SECONDS) == good and again.stats.queries == 0


def test_a_non_answer_stored_by_an_older_version_is_asked_again(tmp_path):
    cache = tmp_path / "judge.sqlite"
    FakeJudge(cache, garbage=False).judge_pairs(PROMPTS, FIRSTS, SECONDS)
    old = JudgeCache(cache)
    rows = old._db.execute("SELECT key, judge, template, kind FROM judgements LIMIT 2").fetchall()
    old.delete([k for k, *_ in rows])
    old.put_many([(*row, {"probs": None, "raw": NON_ANSWER}) for row in rows])  # as the old code stored them
    old.close()
    judge = FakeJudge(cache, garbage=False)
    out = judge.judge_pairs(PROMPTS, FIRSTS, SECONDS)
    assert judge.stats.queries == 2 and judge.cache.hits == 4 and {r["verdict"] for r in out} == {"first"}
    assert all(v["probs"] is not None for v in JudgeCache(cache).get_many([k for k, *_ in rows]).values())


def _judge_server(state: dict):
    """An OpenAI-compatible server answering in text: a non-answer while ``state["garbage"]``, else the
    option whose response says "first"."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, body: dict) -> None:
            payload = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self):
            self._send({"data": [{"id": "m"}]})

        def do_POST(self):
            text = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["messages"][-1]["content"]
            state["calls"] += 1
            answer = (
                NON_ANSWER if state["garbage"] else "A" if text.find("first") < text.find("second") else "B"
            )
            self._send({"choices": [{"message": {"content": answer}}]})

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def test_a_judge_server_that_does_not_answer_is_one_line_and_a_fixed_one_is_asked_again(tmp_path):
    from test_user_errors import run_app

    samples = tmp_path / "samples.jsonl"
    rows = [{"prompt": f"p{i}", "first": f"first {i}", "second": f"second {i}"} for i in range(4)]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cache = tmp_path / "judge.sqlite"
    state = {"garbage": True, "calls": 0}
    httpd = _judge_server(state)
    port = httpd.server_address[1]
    args = ["task=sentiment_toy", "model=tiny", "judge=openai_compatible", f"judge.base_url=http://127.0.0.1:{port}/v1",
            "judge.model=m", "judge.api_key_env=null", "judge.concurrency=1", "judge.logprobs=false",
            f"judge.cache_path={cache}", f"pairs_path={samples}", "samples_path=null", "progress=false"]  # fmt: skip
    try:
        code, out, err = run_app("label", args, tmp_path / "run1")
        assert code == 2 and "Traceback" not in out + err, err[-3000:]
        lines = [x for x in err.splitlines() if x.startswith("alignlab-label:")]
        assert len(lines) == 1, err[-3000:]
        assert lines[0].startswith(
            "alignlab-label: error: no pair could be labelled: 4 pair(s) asked, 4 invalid answer(s), 0 tie(s), "
            "0 pair(s) not asked (identical 0, empty 0); try: read the judge's raw answers in "
        )
        assert "a rerun asks again" in lines[0]
        assert state["calls"] == 8 and len(JudgeCache(cache)) == 0  # both orders asked, nothing kept
        state["garbage"] = False  # the server is fixed
        code, out, err = run_app("label", args, tmp_path / "run2")
        assert code in (0, None), err[-3000:]
        assert state["calls"] == 16  # asked again, not read back from the cache
        written = (tmp_path / "run2" / "pairs.jsonl").read_text().splitlines()
        assert len(written) == 4 and all(json.loads(r)["chosen"].startswith("first") for r in written)
    finally:
        httpd.shutdown()
        httpd.server_close()


def _filled_cache(path, n: int) -> None:
    c = JudgeCache(path)
    c.put_many([(f"k{i}", "j", "t", "pair", {"probs": [0.6, 0.4], "raw": "A" * 300}) for i in range(n)])
    c.close()


@pytest.mark.parametrize("damage", ["random bytes", "truncated", "overwritten inside"])
def test_a_corrupt_cache_is_moved_aside_and_a_fresh_one_started(damage, tmp_path, caplog):
    path = tmp_path / "judge.sqlite"
    if damage == "random bytes":
        path.write_bytes(os.urandom(64 * 1024))
    else:
        _filled_cache(path, 3000)
        data = path.read_bytes()
        if damage == "truncated":
            path.write_bytes(data[: len(data) * 2 // 5])
        else:  # header and schema intact, the same size: only reading every page finds it
            path.write_bytes(data[:8192] + os.urandom(len(data) - 8192))
    original = path.read_bytes()
    with caplog.at_level(logging.WARNING, logger="alignlab.judges.cache"):
        judge = FakeJudge(path, garbage=False)
        out = judge.judge_pairs(PROMPTS, FIRSTS, SECONDS)
    aside = list(tmp_path.glob("judge.sqlite.corrupt-*"))
    assert len(aside) == 1 and aside[0].name[len("judge.sqlite.corrupt-") :].endswith("Z")  # a UTC time
    assert aside[0].read_bytes() == original  # kept, not deleted
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert f"judge cache {path} is not a readable SQLite database" in warning and str(aside[0]) in warning
    assert {r["verdict"] for r in out} == {"first"} and len(JudgeCache(path)) == 6  # the fresh cache works


def test_a_cache_damaged_during_the_run_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "judge.sqlite"
    _filled_cache(path, 20000)  # several MB: more pages than the connection keeps in memory
    cache = JudgeCache(path)
    size = path.stat().st_size
    with open(path, "r+b") as f:  # overwritten behind the open cache's back, its header kept
        f.seek(8192)
        f.write(os.urandom(size - 8192))
    with pytest.raises(JudgeCacheError) as e:
        cache.get_many([f"k{i}" for i in range(20000)])
    assert str(e.value).startswith(f"judge cache {path} is damaged (")
    assert f"move it aside (mv {path} {path}.corrupt) and rerun" in str(e.value)


def test_the_new_messages_are_in_docs_errors():
    doc = (REPO / "docs" / "errors.md").read_text()
    for fragment in ("no pair could be labelled: ", "is not a readable SQLite database", "is damaged ("):
        assert fragment in doc, fragment

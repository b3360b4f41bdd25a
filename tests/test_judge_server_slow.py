"""A real OpenAI-compatible server: llama-cpp-python's server with the bundled SmolLM2 GGUF on 127.0.0.1,
judged through the HTTP judge. Needs ``pip install "llama-cpp-python[server]"`` (``make test-slow``)."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytestmark = pytest.mark.slow

HAVE_SERVER = all(importlib.util.find_spec(m) is not None for m in ("llama_cpp", "uvicorn", "fastapi"))
SKIP_REASON = (
    'llama-cpp-python[server] is not installed (pip install "llama-cpp-python[server]"); '
    "the real-server judge test needs it"
)

PROMPTS = ["The movie", "This film", "The acting", "The story"]
POSITIVE = [
    "was wonderful, funny and moving. I loved it.",
    "is a brilliant, beautiful masterpiece.",
    "was superb and the cast is delightful.",
    "is charming and I enjoyed every minute.",
]
NEGATIVE = [
    "was boring, ugly and a waste of time.",
    "is an awful, stupid mess.",
    "was terrible and the cast is dreadful.",
    "is dull and I hated every minute.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    if not HAVE_SERVER:
        pytest.skip(SKIP_REASON)
    from alignlab.models.bundled import default_cache_dir, fetch_gguf

    gguf = fetch_gguf(default_cache_dir())
    port = free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
           "--port", str(port), "--model_alias", "smollm2", "--n_ctx", "2048", "--n_threads", "2"]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"llama_cpp.server did not start in 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(300)
def test_label_pairs_through_llama_cpp_server(llama_server, tmp_path):
    from alignlab.judges.http import OpenAICompatibleJudge
    from alignlab.judges.report import format_report, labelling_report
    from alignlab.judges.templates import JudgeTemplate

    def make(mode):
        t = JudgeTemplate(rubric="Which review is more positive?", question="Is this movie review positive?")
        return OpenAICompatibleJudge(
            base_url=llama_server, model="smollm2", api_key_env=None, template=t, mode=mode,
            cache_path=str(tmp_path / "cache.sqlite"), concurrency=2, read_timeout_s=60, max_retries=1,
        )  # fmt: skip

    firsts = POSITIVE[:2] + NEGATIVE[2:]
    seconds = NEGATIVE[:2] + POSITIVE[2:]
    gold_first = [1, 1, 0, 0]
    gold_second = [0, 0, 1, 1]
    for mode in ("pairwise", "pointwise"):
        judge = make(mode)
        res = judge.judge_pairs(PROMPTS, firsts, seconds)
        rep = labelling_report(res, gold_first, gold_second, judge.report_stats(), mode=mode)
        print(format_report(rep))
        print(
            json.dumps(
                [{k: r[k] for k in ("p_first", "verdict", "p_forward", "p_backward", "raw")} for r in res]
            )
        )
        assert judge.stats.calls == 8  # 4 pairs x 2 orders / 2 texts, no retry needed
        assert rep["pairs"] == 4 and rep["invalid"] < 4  # the server's answers were read
        for r in res:
            assert r["verdict"] in ("first", "second", "tie", "invalid")
            if r["verdict"] != "invalid":
                assert 0.0 <= r["p_first"] <= 1.0
        again = make(mode)
        assert again.judge_pairs(PROMPTS, firsts, seconds) == res and again.stats.calls == 0

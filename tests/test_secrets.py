"""Secrets: the HTTP judge's API key comes from the environment only and is written nowhere.

The label app runs as a real command against a scripted OpenAI-compatible server on 127.0.0.1 (bounded:
it refuses anything past MAX_REQUESTS), with the key in the environment. The server must have received
the key (so it was really used), and its bytes must appear in no file of the run directory (outputs,
report, saved configs, Hydra's .hydra/, the log), in the judge cache, or in what the command printed.
The wandb run directory is covered for training runs in tests/test_train.py (the label app logs no wandb).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import REPO

KEY = "sk-alignlab-test-4f1c9e77d2"
MAX_REQUESTS = 100


def _serve():
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(self.headers.get("Authorization", ""))
            if len(seen) > MAX_REQUESTS:
                self.send_response(418)
                self.end_headers()
                return
            text = body["messages"][-1]["content"]
            answer = "A" if text.find("great") < text.find("awful") else "B"  # the positive one wins
            other = "B" if answer == "A" else "A"
            top = [{"token": answer, "logprob": math.log(0.9)}, {"token": other, "logprob": math.log(0.1)}]
            first = {**top[0], "top_logprobs": top}
            choice = {"index": 0, "message": {"content": answer}, "logprobs": {"content": [first]}}
            payload = json.dumps({"choices": [choice], "usage": {"prompt_tokens": 5}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, seen


def test_http_judge_key_is_used_and_written_nowhere(tmp_path):
    samples = tmp_path / "samples.jsonl"
    rows = [
        {"prompt": f"Review {i}:", "first": f"a great film {i}", "second": f"an awful film {i}"}
        if i % 2
        else {"prompt": f"Review {i}:", "first": f"an awful film {i}", "second": f"a great film {i}"}
        for i in range(4)
    ]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    httpd, seen = _serve()
    try:
        env = {
            "OMP_NUM_THREADS": "1",
            "WANDB_MODE": "offline",
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "HF_HUB_OFFLINE": "1",
            "ALIGNLAB_CACHE": str(cache),
            "ALIGNLAB_SECRET_KEY": KEY,
        }
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "alignlab.label",
                "task=sentiment_toy",
                "model=tiny",
                "judge=openai_compatible",
                f"judge.base_url=http://127.0.0.1:{httpd.server_address[1]}/v1",
                "judge.model=served-model",
                "judge.api_key_env=ALIGNLAB_SECRET_KEY",
                "judge.backoff_s=0.01",
                "judge.read_timeout_s=10",
                f"pairs_path={samples}",
                "samples_path=null",
                "progress=false",
                f"hydra.run.dir={run_dir}",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            timeout=300,
        )
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert proc.returncode == 0, proc.stderr[-3000:].decode(errors="replace")
    assert seen and all(h == f"Bearer {KEY}" for h in seen), seen[:2]  # the key was used, both orders
    out = [json.loads(x) for x in (run_dir / "pairs.jsonl").read_text().splitlines()]
    assert len(out) == 4 and all("great" in r["chosen"] for r in out)

    secret = KEY.encode()
    assert secret not in proc.stdout and secret not in proc.stderr
    files = [f for d in (run_dir, cache) for f in d.rglob("*") if f.is_file()]
    names = {f.name for f in files}
    assert {"config_resolved.yaml", "config.yaml", "label.log", "judge_cache.sqlite"} <= names, names
    for f in files:
        assert secret not in f.read_bytes(), f
    assert "ALIGNLAB_SECRET_KEY" in (run_dir / "config_resolved.yaml").read_text()  # the name, not the value

"""The bad-input matrix, the parts not covered elsewhere, each asserting the message a user sees.

Covered elsewhere: malformed JSON, missing/misnamed columns, empty/non-string fields, identical pairs,
invalid UTF-8, bad soft labels at the row level and over-length rows (tests/test_data_rows.py); unknown
config keys (tests/test_configs.py); a model path that does not exist (tests/test_models.py); judge
answers that are not an option (tests/test_judges_*.py).

Here: wrong soft-label types through the datamodule and through the train command (the whole message a
user reads, not a library traceback), skip_invalid counting them, and a judge server that goes down
mid-run: bounded retries, one clear message, and the judgements already made are kept for the rerun.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from alignlab.data.datamodules import PreferenceDataModule
from alignlab.data.rows import DataError
from conftest import REPO, compose

GOOD = {"prompt": "The movie was", "chosen": " wonderful.", "rejected": " dull."}


def _pairs(path, bad: dict, n_good: int = 6):
    rows = [{**GOOD, "chosen": f" wonderful {i}."} for i in range(n_good)]
    rows.insert(2, {**GOOD, **bad})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    "p_chosen",
    [True, "0.7", [0.7], {"p": 0.7}, -0.1, 2],
    ids=["bool", "string", "list", "object", "negative", "above_one"],
)
def test_wrong_soft_label_types_through_the_datamodule(tmp_path, tiny_lm, p_chosen):
    path = _pairs(tmp_path / "pairs.jsonl", {"p_chosen": p_chosen})
    dm = PreferenceDataModule(train_path=str(path), val_path=str(path), tokenizer=tiny_lm.tokenizer)
    with pytest.raises(DataError) as e:
        dm.setup("fit")
    msg = str(e.value)
    # file and line (row 3 of the file), the field, what is expected, and what to do
    assert f"{path}:3" in msg and "'p_chosen'" in msg and "number in [0, 1]" in msg
    assert repr(p_chosen) in msg and "skip_invalid" in msg


def test_skip_invalid_counts_the_bad_soft_labels(tmp_path, tiny_lm):
    path = tmp_path / "pairs.jsonl"
    rows = [
        {**GOOD, "chosen": f" good {i}.", "p_chosen": p} for i, p in enumerate([0.9, "x", 0.8, True, 1.0])
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = PreferenceDataModule(
        train_path=str(path), val_path=str(path), skip_invalid=True, tokenizer=tiny_lm.tokenizer
    )
    dm.setup("fit")
    assert len(dm.train_set) == 3  # never a silent drop: the report counts both
    report = dm.reports[0]
    assert (
        report.skipped == {"bad soft label": 2}
        and "3/5 rows kept (skipped: 2 bad soft label)" in report.summary()
    )


def test_train_command_prints_the_data_error(tmp_path):
    path = _pairs(tmp_path / "pairs.jsonl", {"p_chosen": "high"})
    env = {"OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "alignlab.train",
            "experiment=dpo_tiny",
            f"data.train_path={path}",
            "logger=none",
            f"hydra.run.dir={tmp_path}/run",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # a user error: exit 2, our one sentence last, no traceback (tests/test_user_errors.py has the matrix)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    last = [x for x in proc.stderr.strip().splitlines() if x.strip()][-1]
    assert last.startswith("alignlab-train: error: ") and f"{path}:3" in last, last
    assert "field 'p_chosen' must be a number in [0, 1]" in last and "'high'" in last


# -- a judge server that goes down ------------------------------------------------------------------------
def _flaky_server(healthy_for: int, limit: int = 60):
    """Answers the first ``healthy_for`` requests, then 503 (bounded: 418 past ``limit``)."""
    count = [0]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            text = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["messages"][-1]["content"]
            count[0] += 1
            if count[0] > limit:
                self.send_response(418)
                self.end_headers()
                return
            if count[0] > healthy_for:
                self.send_response(503)
                self.send_header("Content-Length", "11")
                self.end_headers()
                self.wfile.write(b"overloaded!")
                return
            win, lose = ("A", "B") if text.find("first") < text.find("second") else ("B", "A")  # "first" wins
            top = [{"token": win, "logprob": -0.2}, {"token": lose, "logprob": -1.7}]
            choice = {"message": {"content": win}, "logprobs": {"content": [{**top[0], "top_logprobs": top}]}}
            body = {"choices": [choice]}
            payload = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, count


def test_judge_server_down_fails_after_bounded_retries_and_keeps_labels(tmp_path):
    from alignlab.judges.cache import JudgeCache
    from alignlab.judges.http import JudgeHTTPError
    from alignlab.label import label

    samples = tmp_path / "samples.jsonl"
    rows = [{"prompt": f"p{i}", "first": f"first {i}", "second": f"second {i}"} for i in range(8)]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cache = tmp_path / "judge.sqlite"

    def cfg(port):
        return compose(
            [
                "task=sentiment_toy",
                "model=tiny",
                "judge=openai_compatible",
                f"judge.base_url=http://127.0.0.1:{port}/v1",
                "judge.model=m",
                "judge.api_key_env=null",
                "judge.batch_size=4",  # 4 judgements per cache commit
                "judge.concurrency=1",
                "judge.max_retries=2",
                "judge.backoff_s=0.01",
                f"judge.cache_path={cache}",
                f"pairs_path={samples}",
                "samples_path=null",
                "progress=false",
                f"paths.output_dir={tmp_path}/run",
            ],
            config_name="label",
        )

    httpd, count = _flaky_server(healthy_for=8)  # two batches of 4, then down
    try:
        with pytest.raises(JudgeHTTPError) as e:
            label(cfg(httpd.server_address[1]))
        requests = count[0]
    finally:
        httpd.shutdown()
        httpd.server_close()
    msg = str(e.value)
    assert "failed 3 times" in msg and "HTTP 503" in msg and "rerun the same command to resume" in msg
    # bounded: each query of the failing batch (4) gives up after 1 + max_retries = 3 attempts
    assert 8 + 3 <= requests <= 8 + 4 * 3, requests
    assert len(JudgeCache(cache)) == 8  # what was labelled is kept
    assert not (tmp_path / "run" / "pairs.jsonl").exists()  # no partial data set

    httpd, count = _flaky_server(healthy_for=100)
    try:
        report = label(cfg(httpd.server_address[1]))
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert count[0] == 16 - 8 and report["pairs_sampled"] == 8  # only the missing judgements were asked
    assert len((tmp_path / "run" / "pairs.jsonl").read_text().splitlines()) == report["rows_written"]

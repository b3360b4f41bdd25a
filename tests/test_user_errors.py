"""The user-error matrix: each mistake a new user makes gives one sentence on stderr, exit code 2, no
traceback, and it comes before any model is loaded. docs/errors.md is generated from it:

    OMP_NUM_THREADS=1 .venv/bin/python tests/test_user_errors.py     # rewrites docs/errors.md

The apps run in this process through their real entry points (``main()`` reading ``sys.argv``), so the
exit code and everything printed are what a user sees, at a fraction of a subprocess's start-up cost.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO

DOC = REPO / "docs" / "errors.md"
REFUSED = "http://127.0.0.1:9/v1"  # the discard port: nothing listens there
GOOD = {"prompt": "The movie was", "chosen": " wonderful.", "rejected": " dull."}


@dataclass
class Case:
    id: str
    mistake: str
    app: str  # train | label
    args: str  # the command's overrides; {dir} is a scratch directory with the files below
    expect: str  # a fragment of the one line the user reads
    guard: str = "load"  # what must not run before the error: "load" (any model) or "weights"
    env: str = ""  # NAME=value set for the command (shown in front of it)


MATRIX = [
    Case("bad-row", "a preference row whose p_chosen is not a number", "train",
         "experiment=dpo_tiny data.train_path={dir}/pairs.jsonl",
         "pairs.jsonl:3: field 'p_chosen' must be a number in [0, 1]"),
    Case("missing-file", "a data file that does not exist", "train",
         "experiment=sft_tiny data.train_path={dir}/nope.jsonl", "nope.jsonl: file not found"),
    Case("missing-column", "a data file whose columns have other names", "train",
         "experiment=sft_tiny data.train_path={dir}/qa.jsonl",
         "missing field 'prompt' (row has: answer, question); map it with data.columns.prompt=<column>"),
    Case("typo-key", "a misspelt config key", "train", "experiment=sft_tiny trainer.max_stepz=2",
         "Could not override 'trainer.max_stepz'"),
    Case("unknown-option", "a config group option that does not exist", "train", "algo=dpoo",
         "Could not find 'algo/dpoo'"),
    Case("contradicting-keys", "settings that contradict each other", "train",
         "experiment=sft_tiny trainer.precision=16-mixed",
         "trainer.precision=16-mixed is not supported with trainer.accelerator=cpu"),
    Case("missing-model", "a model directory that does not exist", "train",
         "experiment=sft_tiny model=hf model.name_or_path={dir}/no-model",
         "no-model' does not exist. Give a local directory with config.json", guard="weights"),
    Case("judge-down-train", "a judge server, giving the reward, that is not running", "train",
         "experiment=ppo_tiny reward@algo.reward=judge_pairwise judge@algo.reward.judge=openai_compatible "
         f"algo.reward.judge.model=m algo.reward.judge.base_url={REFUSED}",
         f"judge server {REFUSED} is unreachable"),
    Case("output-suffix", "an output file of a type the label app cannot write", "label",
         "task=sentiment_toy model=tiny judge=gold output_path={dir}/pairs.txt",
         "must end in .jsonl or .parquet"),
    Case("missing-policy", "a policy directory that does not exist", "label",
         "task=sentiment_toy model=tiny judge=gold policy_path={dir}/no-policy",
         "no-policy' does not exist; give a run's policy/ directory"),
    Case("judge-down", "a judge server that is not running", "label",
         f"task=sentiment_toy model=tiny judge=openai_compatible judge.model=m judge.base_url={REFUSED}",
         f"judge server {REFUSED} is unreachable"),
    Case("offline-hub-id", "a hub id that is not cached, offline", "train",
         "experiment=sft_tiny model=hf model.name_or_path=alignlab-test/not-cached",
         "is not in the local Hugging Face cache and the hub cannot be reached (HF_HUB_OFFLINE is set): "
         "use a local directory or model=smollm2_135m", guard="weights", env="HF_HUB_OFFLINE=1"),
    Case("no-chat-template", "use_chat_template=true with a model that has no chat template", "train",
         "experiment=sft_tiny data.use_chat_template=true",
         "data.use_chat_template=true but the tokenizer of 'model=tiny' has no chat template"),
    Case("secret-override", "an API key given on the command line", "label",
         "task=sentiment_toy model=tiny judge=openai_compatible judge.model=m +judge.api_key=sk-...",
         "judge.api_key=... on the command line would be written in plain text to .hydra/"),
]  # fmt: skip


def _files(d: Path) -> None:
    rows = [{**GOOD, "chosen": f" wonderful {i}."} for i in range(6)]
    rows.insert(2, {**GOOD, "p_chosen": "high"})
    (d / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "qa.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")


def run_app(app: str, args: list[str], run_dir: Path) -> tuple[object, str, str]:
    """Run ``python -m alignlab.<app> *args`` in this process: (exit code or return value, stdout, stderr)."""
    import importlib
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from hydra.core.global_hydra import GlobalHydra

    main = importlib.import_module(f"alignlab.{app}").main
    argv, out, err = sys.argv, io.StringIO(), io.StringIO()
    sys.argv = [f"alignlab-{app}", *args, f"hydra.run.dir={run_dir}", "logger=none" if app == "train" else ""]
    sys.argv = [a for a in sys.argv if a]
    GlobalHydra.instance().clear()
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                result = main()
            except SystemExit as e:
                result = e.code
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
    return result, out.getvalue(), err.getvalue()


def _guard(monkeypatch, what: str) -> None:
    """Make loading a model (or, for ``weights``, reading model weights) fail loudly, as a bug would."""

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the user error was reported")

    if what == "load":
        from alignlab.models.loader import ModelSpec

        monkeypatch.setattr(ModelSpec, "load", boom)
    else:
        import transformers

        monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
        monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", boom)


def user_line(case: Case, tmp_path: Path, monkeypatch) -> str:
    """Run one case; assert exit 2, no traceback, one line; return that line with the scratch dir as <dir>."""
    _files(tmp_path)
    _guard(monkeypatch, case.guard)
    if case.env:
        monkeypatch.setenv(*case.env.split("=", 1))
    args = case.args.format(dir=tmp_path).split()
    code, out, err = run_app(case.app, args, tmp_path / "run")
    text = out + err
    assert "Traceback" not in text and "AssertionError" not in text, text[-2000:]
    assert code == 2, (code, text[-2000:])
    logs = ("[INFO]", "[WARNING]", "INFO:", "WARNING:")  # progress lines of Hydra's and Lightning's loggers
    lines = [x for x in err.splitlines() if x.strip() and not any(m in x for m in logs)]
    assert case.expect in " ".join(lines), lines
    if case.id not in ("typo-key", "unknown-option"):  # Hydra's own two-line wording for these
        assert len(lines) == 1 and lines[0].startswith(f"alignlab-{case.app}: error: "), lines
    line = " ".join(x.strip() for x in lines).replace(str(tmp_path), "<dir>")
    return line.split(" Config search path")[0].split(" Set the environment variable HYDRA_FULL_ERROR")[0]


@pytest.mark.parametrize("case", MATRIX, ids=[c.id for c in MATRIX])
def test_user_error_is_one_line_exit_2_before_any_model(case, tmp_path, monkeypatch):
    line = user_line(case, tmp_path, monkeypatch)
    assert f"`{line}`" in DOC.read_text(), f"docs/errors.md is stale: run python {Path(__file__).name}"


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    """Only user errors are shortened: anything else is a bug and shows where it happened."""
    from alignlab.models.loader import ModelSpec

    def bug(*a, **k):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(ModelSpec, "load", bug)
    code, out, err = run_app("train", ["experiment=sft_tiny"], tmp_path / "run")
    assert code == 1 and "Traceback" in err and "ZeroDivisionError: a bug" in err


def test_hydra_full_error_shows_the_traceback_of_a_user_error(tmp_path, monkeypatch):
    from alignlab.data.rows import DataError

    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(DataError, match="file not found"):
        run_app("train", ["experiment=sft_tiny", f"data.train_path={tmp_path}/nope.jsonl"], tmp_path / "run")


def render(lines: dict[str, str]) -> str:
    out = [
        "# What a mistake looks like",
        "",
        "Each mistake below stops the app before any model is loaded, with the one line shown, exit code 2,",
        "and no traceback (set `HYDRA_FULL_ERROR=1` to see one). Any other failure is a bug: it keeps its",
        "traceback and exits 1. Generated from `tests/test_user_errors.py`, which checks every line",
        "(`python tests/test_user_errors.py` rewrites this file).",
        "",
        "| mistake | command | what you read |",
        "|---|---|---|",
    ]
    for c in MATRIX:
        cmd = f"{c.env} python -m alignlab.{c.app} {c.args.format(dir='<dir>')}".strip()
        out.append(f"| {c.mistake} | `{cmd}` | `{lines[c.id]}` |")
    kept = DOC.read_text().partition(DURING)  # the hand-written section below the table is kept
    return "\n".join(out) + "\n" + (f"\n{DURING}{kept[2]}" if kept[1] else "")


DURING = "## Found during a run"  # heading of docs/errors.md's hand-written section (tested in its own tests)


if __name__ == "__main__":  # regenerate docs/errors.md
    import tempfile

    import alignlab.utils.hydra  # noqa: F401

    lines = {}
    for case in MATRIX:
        with tempfile.TemporaryDirectory() as d, pytest.MonkeyPatch.context() as mp:
            lines[case.id] = user_line(case, Path(d), mp)
    DOC.write_text(render(lines))
    print(f"wrote {DOC}")


def test_cache_dir_resolver_agrees_with_the_model_cache(monkeypatch, tmp_path):
    from alignlab.models.bundled import default_cache_dir
    from alignlab.utils.hydra import _cache_dir

    for value in (str(tmp_path / "c"), "~/somewhere"):
        monkeypatch.setenv("ALIGNLAB_CACHE", value)
        assert _cache_dir() == str(default_cache_dir())
    monkeypatch.delenv("ALIGNLAB_CACHE")
    assert _cache_dir() == str(default_cache_dir())


def test_dead_judge_server_fails_before_torch_is_imported(tmp_path):
    """With SmolLM2 and 64 prompts the label app would load a model and sample for minutes; a judge
    server that is not running stops it first, before even torch is imported (seconds)."""
    import subprocess

    from conftest import app_env

    code = (
        "import sys\n"
        "from alignlab.label import main\n"
        f"sys.argv = ['alignlab-label', 'task=sentiment', 'model=smollm2_135m', 'n_prompts=64',\n"
        f"            'judge=openai_compatible', 'judge.model=m', 'judge.base_url={REFUSED}',\n"
        f"            'hydra.run.dir={tmp_path}/run']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    print('exit', e.code, 'torch' in sys.modules)\n"
    )
    extra = {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=app_env(tmp_path, **extra),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.stdout.strip().splitlines()[-1] == "exit 2 False", (proc.stdout[-1000:], proc.stderr[-2000:])
    assert f"alignlab-label: error: judge server {REFUSED} is unreachable" in proc.stderr

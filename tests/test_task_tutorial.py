"""docs/tasks.md is run as written: its two files are built outside the package, in a temporary
directory, and its commands run every method on that task through the pipeline on the tiny model."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, app_env

DOC = REPO / "docs" / "tasks.md"
BIN = Path(sys.executable).parent


def blocks(lang: str) -> list[str]:
    """The fenced code blocks of docs/tasks.md in ``lang``, in order."""
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def user_task(root: Path) -> Path:
    """The tutorial's two files, written under ``root/mytasks`` (outside the package)."""
    home = root / "mytasks"
    (home / "task").mkdir(parents=True)
    (home / "brevity.py").write_text(blocks("python")[0], encoding="utf-8")
    (home / "task" / "brevity.yaml").write_text(blocks("yaml")[0], encoding="utf-8")
    return home


def run(cmd: list[str] | str, cwd: Path, home: Path, shell: bool = False) -> subprocess.CompletedProcess:
    env = app_env(cwd, PYTHONPATH=str(home), PATH=f"{BIN}:/usr/bin:/bin")
    env.pop("PROJECT_ROOT", None)
    return subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, shell=shell,
        executable="/bin/bash" if shell else None,
    )  # fmt: skip


def test_the_tutorial_has_the_two_files_and_the_commands():
    assert (
        "class BrevityTask(Task)" in blocks("python")[0]
        and "_target_: brevity.BrevityTask" in blocks("yaml")[0]
    )
    commands = blocks("bash")[0]
    for method in ("dpo", "rlhf", "rloo", "rlaif_dpo", "direct_rlaif_rloo"):
        assert re.search(rf"method=[\w,]*\b{method}\b", commands), method


def test_tutorial_commands_run_every_method_on_a_task_from_the_users_directory(tmp_path):
    home = user_task(tmp_path)
    script = "set -euo pipefail\n" + blocks("bash")[0]
    proc = run(script, tmp_path, home, shell=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    results = [json.loads(p.read_text()) for p in (tmp_path / "outputs").rglob("result.json")]
    assert sorted(r["method"] for r in results) == sorted(
        ["dpo", "rlhf", "rloo", "rlaif_dpo", "direct_rlaif_rloo"]
    )
    for r in results:
        assert r["task"] == "brevity" and r["eval"]["task"] == "brevity", r["method"]
        assert 0.0 <= r["eval"]["gold_reward"] <= 1.0  # the tutorial's gold: 1 - min(1, |words - 8| / 8)
    rlaif = next(r for r in results if r["method"] == "rlaif_dpo")
    assert rlaif["labeller"] == "tiny" and rlaif["labels_used"] > 0  # the task's labeller labelled its pairs
    assert "[alignlab] brevity train: 8 prompts" in proc.stdout  # alignlab-prepare, on a task of one's own
    assert "brevity" in (tmp_path / "outputs" / "report" / "report.md").read_text()


def test_training_a_user_task_on_another_tasks_demo_pairs_is_refused(tmp_path):
    home = user_task(tmp_path)
    args = [
        "-m",
        "alignlab.train",
        "experiment=dpo_tiny",
        f"hydra.searchpath=[file://{home}]",
        "task=brevity",
    ]
    proc = run([sys.executable, *args], tmp_path, home)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert "pref_toy.jsonl" in lines[0] and "'brevity'" in lines[0] and "Traceback" not in proc.stderr


def test_a_task_missing_a_method_fails_at_start_up_in_one_line(tmp_path):
    home = user_task(tmp_path)
    src = (home / "brevity.py").read_text().replace("def gold_scores", "def gold_score")
    (home / "brevity.py").write_text(src)
    args = ["-m", "alignlab.pipeline", f"hydra.searchpath=[file://{home}]", "task=brevity", "profile=tiny",
            "wandb.enabled=false"]  # fmt: skip
    proc = run([sys.executable, *args], tmp_path, home)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert "BrevityTask" in lines[0] and "gold_scores" in lines[0]
    assert not (tmp_path / "outputs" / "artifacts").exists() or not any(
        (tmp_path / "outputs").rglob("samples.jsonl")
    )


@pytest.mark.parametrize("task", ["brevity", "nowhere"])
def test_prepare_names_a_task_it_cannot_find_in_one_line(tmp_path, task):
    home = user_task(tmp_path)
    proc = run([str(BIN / "alignlab-prepare"), "--task", task], tmp_path, home)
    assert proc.returncode == 2 and "AttributeError" not in proc.stderr, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and "docs/tasks.md" in proc.stderr

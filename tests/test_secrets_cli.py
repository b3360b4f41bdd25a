"""A secret given on the command line is refused before Hydra writes anything (issue 30, item 2).

Hydra would copy the override into .hydra/config.yaml, hydra.yaml and overrides.yaml, and wandb records the
command line, so the apps stop at once with one line naming the environment variable to use instead. The
apps run as real commands; every file under their run (or sweep) directory is then searched for the secret.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from alignlab.utils.cli_secrets import check_argv
from alignlab.utils.errors import UserError
from conftest import REPO, app_env

SECRET = "sk-test123-cli-7f3a"


def _run(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=tmp_path,  # Hydra's default outputs/ would land here too
        env=app_env(tmp_path, PYTHONPATH=str(REPO / "src")),
        capture_output=True,
        timeout=600,
    )


CASES = {
    "label-api-key": (
        ["alignlab.label", "task=toy", "model=tiny", "judge=gold", "n_prompts=2",
         f"+judge.api_key={SECRET}", "progress=false"],
        "judge.api_key=... on the command line",
        "export OPENAI_API_KEY=<key> (or any name, given as judge.api_key_env=<NAME>)",
    ),
    "train-multirun-token": (
        ["alignlab.train", "-m", "experiment=sft_tiny", "logger=none", "trainer.max_steps=1",
         f"+extra.hf_token={SECRET},{SECRET}x"],
        "extra.hf_token=... on the command line",
        "HF_TOKEN for the Hugging Face hub",
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_secret_override_is_refused_and_written_nowhere(name, tmp_path):
    args, what, fix = CASES[name]
    run_dir = tmp_path / "run"
    proc = _run([*args, f"hydra.run.dir={run_dir}", f"hydra.sweep.dir={run_dir}"], tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err[-3000:]
    lines = [x for x in err.splitlines() if x.strip()]
    app = args[0].split(".")[1]
    assert len(lines) == 1 and lines[0].startswith(f"alignlab-{app}: error: "), lines
    assert what in lines[0] and fix in lines[0] and "Traceback" not in err
    assert SECRET.encode() not in proc.stdout + proc.stderr
    files = [f for f in tmp_path.rglob("*") if f.is_file()]  # the run dir, outputs/, HOME, caches
    for f in files:
        assert SECRET.encode() not in f.read_bytes(), f
    assert not run_dir.exists()  # refused before Hydra made the run directory


@pytest.mark.parametrize(
    "arg",
    ["+judge.api_key=sk-1", "judge.api_key=sk-1", "++algo.reward.judge.api_key='sk-1'", "+wandb.token=t",
     "+extra.password=p", "+db.client_secret=s", "hydra.job.env_set.OPENAI_API_KEY=sk-1",
    ],
)  # fmt: skip
def test_secret_looking_keys_are_refused(arg):
    with pytest.raises(UserError, match="secrets come from the environment only"):
        check_argv(["experiment=sft_tiny", arg])


@pytest.mark.parametrize(
    "arg",
    ["judge.api_key_env=MY_KEY", "+tokenizer.pad_token=<pad>", "+data.eos_token=</s>", "sampling.max_new_tokens=8",
     "+judge.api_key=null", "~judge.api_key", "--multirun", "hydra.job.env_set.OMP_NUM_THREADS=1",
     "task_name=token_study"],
)  # fmt: skip
def test_names_of_variables_and_tokenizer_settings_pass(arg):
    check_argv(["experiment=sft_tiny", arg])

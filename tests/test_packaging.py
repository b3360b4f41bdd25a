"""A plain (non-editable) `pip install .` ships the configs: the apps run from any directory, with Hydra
reading conf/ from inside the installed package (pkg://alignlab.conf)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO, app_env


def _copy_checkout(dest: Path) -> None:
    """The files a clone of the working tree has (tracked and new, not ignored)."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with alignlab installed from a wheel built from a copy of the checkout (as
    `pip install .` does). Its dependencies come from this environment's site-packages (a .pth line), so
    nothing is downloaded."""
    root = tmp_path_factory.mktemp("pkg")
    src = root / "src"
    _copy_checkout(src)
    wheels = root / "wheels"
    pip_wheel = ["-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", "-w"]
    subprocess.run([sys.executable, *pip_wheel, str(wheels), str(src)], check=True, cwd=root)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    (wheel,) = wheels.glob("alignlab-*.whl")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
        cwd=root,
    )
    # after the install, so pip never sees (nor touches) this environment's own alignlab
    site = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    shutil.rmtree(src)  # the installed package must not need the source tree
    return venv


@pytest.mark.slow
def test_installed_package_has_configs_and_trains_elsewhere(installed, tmp_path):
    bin_dir = installed / "bin"
    env = app_env(tmp_path)
    probe = subprocess.run(
        [
            bin_dir / "python",
            "-c",
            "import alignlab.utils.hydra as h; print(h.__file__, h.CONF_DIR, h.CONF_PATH)",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    ).stdout.split()
    module, conf_dir, conf_path = probe
    assert module.startswith(str(installed)), "alignlab must come from the new venv, not the checkout"
    assert conf_path == "pkg://alignlab.conf"
    assert Path(conf_dir, "train.yaml").is_file() and Path(conf_dir, "experiment", "sft_tiny.yaml").is_file()

    proc = subprocess.run(
        [
            bin_dir / "alignlab-train",
            "experiment=sft_tiny",
            "trainer.max_steps=4",
            "trainer.val_check_interval=2",
            "trainer.enable_progress_bar=false",
            "logger=csv",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [p.parent for p in (tmp_path / "outputs").rglob("metrics.json")]
    assert len(runs) == 1 and (runs[0] / "policy" / "config.json").is_file()
    assert (runs[0] / "config_resolved.yaml").is_file()


def test_source_tree_reads_its_own_conf(monkeypatch, tmp_path):
    from alignlab.utils import hydra as h

    assert (str(REPO / "conf"), str(REPO / "conf")) == (h.CONF_DIR, h.CONF_PATH)
    monkeypatch.setenv("ALIGNLAB_CONF", str(tmp_path))
    assert h._conf_dir() == (str(tmp_path), str(tmp_path))

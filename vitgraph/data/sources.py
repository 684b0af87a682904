"""Where datasets live and how they get there: the data root, downloads with MD5 verification,
archive extraction, and the cache directory for decoded arrays.

The data root is `--data-root`, else the VITGRAPH_DATA environment variable, else
`~/.cache/vitgraph/data`. Decoded image folders are cached as .npz files under
VITGRAPH_CACHE (default `~/.cache/vitgraph/arrays`), so each JPEG is decoded once.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..diagnostics import UserError

DOWNLOAD_TIMEOUT_S = 30


@dataclass(frozen=True)
class Remote:
    """One file of a dataset on the web, with the MD5 its publisher (and torchvision) records."""

    url: str
    md5: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def data_root(root: str | Path | None = None) -> Path:
    """The directory datasets are looked for in (see the module docstring)."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get("VITGRAPH_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "vitgraph" / "data"


def cache_dir() -> Path:
    """The directory decoded-array caches are written to (VITGRAPH_CACHE or ~/.cache/vitgraph/arrays)."""
    env = os.environ.get("VITGRAPH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vitgraph" / "arrays"


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(remote: Remote, directory: Path) -> Path:
    """Download `remote` into `directory` (via a .part file), check its MD5, return its path.

    A file already there with the right checksum is reused. Raises UserError when the
    network is unreachable or the checksum does not match (the bad file is removed)."""
    directory.mkdir(parents=True, exist_ok=True)
    dest = directory / remote.filename
    if dest.is_file() and md5sum(dest) == remote.md5:
        return dest
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(remote.url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(part, "wb") as out:
            shutil.copyfileobj(response, out, length=1 << 20)
    except (urllib.error.URLError, OSError) as e:
        part.unlink(missing_ok=True)
        raise UserError(f"could not download {remote.url}: {getattr(e, 'reason', e)}") from e
    found = md5sum(part)
    if found != remote.md5:
        part.unlink()
        raise UserError(f"download of {remote.url} is corrupt: MD5 {found}, expected {remote.md5}",
                        hint="try again; if it persists, the mirror has changed")
    os.replace(part, dest)
    return dest


def extract(archive: Path, directory: Path) -> None:
    """Unpack a .tar.gz/.tgz or .zip archive into `directory`, refusing paths that escape it."""
    target = directory.resolve()
    if archive.name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                if not (target / member.name).resolve().is_relative_to(target):
                    raise UserError(f"{archive} contains an unsafe path: {member.name}")
            tar.extractall(target)
    elif archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if not (target / name).resolve().is_relative_to(target):
                    raise UserError(f"{archive} contains an unsafe path: {name}")
            zf.extractall(target)
    else:
        raise UserError(f"do not know how to unpack {archive}")

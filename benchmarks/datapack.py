"""One file for an image-folder dataset: its image files' bytes concatenated behind an index.

It carries CIFAR-10 (../shared/data/cifar10: 60,000 JPEGs, 53 MiB) to a GPU machine that
receives only the working tree (at most 64 MiB, and ../shared stays behind), for the GPU
check (benchmarks/gpu_check.py). Packed, the JPEGs keep their size; decoded they would be
184 MB, and 60,000 small files travel slowly.

    python -m vitgraph.benchmarks.datapack                  # ../shared/data/cifar10 -> .gpu-check/cifar10.pack
    python -m vitgraph.benchmarks.datapack SOURCE -o FILE   # any <SOURCE>/<split>/<class>/<image> tree

Layout: the 8 bytes MAGIC, the index's length (8 bytes, little-endian), the index (UTF-8 JSON:
{"format", "version", "name", "files": [[relative path, size], ...], "bytes", "sha256"}), then
every file's bytes in index order. `unpack` checks all of it (a truncated or altered pack is
refused with a message, never half-written out) and writes the tree back, or only the first
files of each folder for a quick look.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

from vitgraph.data.formats import IMAGE_SUFFIXES
from vitgraph.diagnostics import UserError
from vitgraph.fileio import write_atomic

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "cifar10"
CARRY_DIR = ROOT / ".gpu-check"  # ignored by git; the GPU check's data travel in it
DEFAULT_PACK = CARRY_DIR / "cifar10.pack"
MAGIC = b"VGPACK01"
_LENGTH = struct.Struct("<Q")
REBUILD = "rebuild it with `python -m vitgraph.benchmarks.datapack` (from ../shared/data/cifar10)"


@dataclass(frozen=True)
class Index:
    """What a pack holds: the dataset's name and its files (relative POSIX path, size)."""

    name: str
    files: list[tuple[str, int]]
    sha256: str
    payload_offset: int  # where the first file's bytes start in the pack

    @property
    def payload_bytes(self) -> int:
        return sum(size for _, size in self.files)


def image_files(source: Path) -> list[Path]:
    """The image files under `source`, sorted by relative path (hidden folders skipped)."""
    if not source.is_dir():
        raise UserError(f"{source}: no such folder", hint="give an image-folder tree such as ../shared/data/cifar10",
                        status=2)
    found = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(source).parts))
    if not found:
        raise UserError(f"{source}: no image files found", hint="expected <SOURCE>/<split>/<class>/<image>", status=2)
    return found


def pack(source: Path, dest: Path) -> Index:
    """Pack every image file under `source` into `dest` (written atomically)."""
    files = image_files(source)
    blobs = [p.read_bytes() for p in files]
    payload = b"".join(blobs)
    entries = [(p.relative_to(source).as_posix(), len(b)) for p, b in zip(files, blobs)]
    index = {"format": "vitgraph-pack", "version": 1, "name": source.resolve().name, "files": entries,
             "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    head = json.dumps(index, separators=(",", ":")).encode()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(MAGIC + _LENGTH.pack(len(head)) + head)
            f.write(payload)

    try:
        write_atomic(dest, write)
    except OSError as e:
        raise UserError(f"cannot write {dest}: {e.strerror or e}") from None
    return Index(index["name"], entries, index["sha256"], len(MAGIC) + _LENGTH.size + len(head))


def _corrupt(path: Path, why: str) -> UserError:
    return UserError(f"{path} is not a complete vitgraph pack ({why})", hint=REBUILD)


def read_index(path: Path) -> Index:
    """The index of a pack, after checking its magic, its index and its total size."""
    if not path.is_file():
        raise UserError(f"{path}: no such pack", hint=f"{REBUILD}; on a GPU machine, carry its folder")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(len(MAGIC) + _LENGTH.size)
        if len(head) < len(MAGIC) + _LENGTH.size or head[:len(MAGIC)] != MAGIC:
            raise _corrupt(path, "it does not start with the pack header")
        (length,) = _LENGTH.unpack(head[len(MAGIC):])
        if length > size:
            raise _corrupt(path, f"its index claims {length} bytes of a {size}-byte file")
        try:
            raw = json.loads(f.read(length))
            files = [(str(name), int(n)) for name, n in raw["files"]]
            index = Index(str(raw["name"]), files, str(raw["sha256"]), len(head) + length)
        except (ValueError, KeyError, TypeError) as e:
            raise _corrupt(path, f"unreadable index: {e}") from None
    if index.payload_offset + index.payload_bytes != size:
        raise _corrupt(path, f"{size} bytes, expected {index.payload_offset + index.payload_bytes}")
    return index


def unpack(path: Path, dest: Path, per_folder: int | None = None) -> Path:
    """Write the pack's tree under dest/<name>/ and return that folder; with `per_folder`, only
    the first files (in path order) of each folder. The whole payload's SHA-256 is checked first."""
    index = read_index(path)
    with open(path, "rb") as f:
        f.seek(index.payload_offset)
        payload = f.read(index.payload_bytes)
    if hashlib.sha256(payload).hexdigest() != index.sha256:
        raise _corrupt(path, "the images' checksum differs from the index")
    root = dest / index.name
    kept: dict[str, int] = {}
    offset = 0
    for name, size in index.files:
        folder = name.rpartition("/")[0]
        if per_folder is None or kept.get(folder, 0) < per_folder:
            kept[folder] = kept.get(folder, 0) + 1
            target = root / name
            if not target.resolve().is_relative_to(root.resolve()):
                raise _corrupt(path, f"unsafe path {name}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(payload[offset:offset + size])
        offset += size
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vitgraph.benchmarks.datapack", description=__doc__.split("\n\n")[0])
    p.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE,
                   help=f"image-folder tree (default {DEFAULT_SOURCE})")
    p.add_argument("-o", "--out", type=Path, default=DEFAULT_PACK, help=f"pack file (default {DEFAULT_PACK})")
    args = p.parse_args(argv)
    try:
        index = pack(args.source, args.out)
    except UserError as e:
        print(e.text(), file=sys.stderr)
        return e.status
    mib = args.out.stat().st_size / 2**20
    print(f"packed {len(index.files):,} files ({index.payload_bytes / 2**20:.1f} MiB of images) from {args.source} "
          f"into {args.out}: {mib:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

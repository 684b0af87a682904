"""Real faults for the tests: a place this process cannot write to, a folder it cannot read, a
disk that fills up (a file-size limit), and PNG files written chunk by chunk (16-bit colour,
which Pillow cannot write, and the header of a decompression bomb)."""
from __future__ import annotations

import os
import resource
import shutil
import signal
import struct
import subprocess
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest


@contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    """`folder` (made if missing) refuses new files: mode 0o555, or for root, whom modes do not
    stop, the immutable attribute (chattr +i); skips the test where neither is possible."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)],
                                                        capture_output=True).returncode != 0:
        pytest.skip("running as root on a file system without the immutable attribute")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


@contextmanager
def unreadable(folder: Path) -> Iterator[Path]:
    """`folder` with mode 0: its listing fails. Skips the test when this process still reads it
    (root does)."""
    folder.chmod(0)
    try:
        try:
            os.listdir(folder)
        except PermissionError:
            yield folder
            return
        pytest.skip("this process (root) reads folders whatever their mode")
    finally:
        folder.chmod(0o755)


@contextmanager
def file_size_limit(nbytes: int) -> Iterator[None]:
    """Writes past `nbytes` in any file fail with EFBIG ("File too large") as on a full disk
    (RLIMIT_FSIZE; SIGXFSZ is ignored so that the write fails instead of killing the process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


PNG_GREY, PNG_RGB, PNG_GREY_ALPHA, PNG_RGBA = 0, 2, 4, 6  # PNG colour types


def write_png(path: Path, pixels: np.ndarray, colour_type: int, bit_depth: int = 16) -> Path:
    """A PNG of `pixels` (H, W) or (H, W, C), written chunk by chunk (filter 0 on every row)."""
    h, w = pixels.shape[:2]
    dtype = ">u2" if bit_depth == 16 else "u1"
    rows = b"".join(b"\0" + np.ascontiguousarray(pixels[i]).astype(dtype).tobytes() for i in range(h))
    header = struct.pack(">IIBBBBB", w, h, bit_depth, colour_type, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows))
                     + _chunk(b"IEND", b""))
    return path


def write_bomb_png(path: Path, side: int = 30_000) -> Path:
    """A PNG that declares side x side pixels (900 million by default, five times Pillow's
    decompression-bomb limit): Pillow refuses it from its header."""
    header = struct.pack(">IIBBBBB", side, side, 8, PNG_RGB, 0, 0, 0)
    row = zlib.compress(b"\0" * (1 + 3 * side))  # the first row only: the header is what counts
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", row) + _chunk(b"IEND", b""))
    return path

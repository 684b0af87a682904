"""Atomic file writes: whatever a run, a build or a cache writes is either the old file or
the complete new one, never half of it (a crash, Ctrl-C or kill mid-write loses nothing)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it over `path`;
    the temporary file is removed if writing fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path

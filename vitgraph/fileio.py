"""Writing files so that faults lose nothing: atomic writes (whatever a run, a build, a report
or a cache writes is either the old file or the complete new one, never half of it: a crash,
Ctrl-C, kill or full disk mid-write keeps the previous file), output places checked before any
work is done, and folder locks that say who holds them.

Every failure to write becomes one UserError naming the file and the reason, never a traceback."""
from __future__ import annotations

import datetime
import errno
import fcntl
import os
import re
import socket
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .diagnostics import UserError

LOCK_FILE = ".lock"
_TEMP = re.compile(r"^\..+\.tmp(\d+)$")  # what write_atomic names its temporary files
_held: dict[Path, list[int]] = {}  # folder -> [lock file descriptor, depth] of the locks this process holds
# (POSIX locks belong to the process, and closing any descriptor of the file would drop them:
# each lock file is opened once)


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, flush it to disk, then rename it over
    `path`; the temporary file is removed if writing fails, and those of earlier writes of `path`
    killed mid-way are removed first. A failure to write (read-only place, full disk, ...) raises
    UserError naming `path`; the previous file is then unchanged."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path.parent, path.name)
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
        raise cannot_write(path, e) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def cannot_write(path: Path, error: BaseException) -> UserError:
    """The error for a file that could not be written, saying whether an older one was kept."""
    reason = error.strerror if isinstance(error, OSError) and error.strerror else \
        (str(error).strip().splitlines() or [type(error).__name__])[0]
    kept = f"; the previous {path.name} is unchanged" if path.is_file() else ""
    return UserError(f"cannot write {path}: {reason}{kept}",
                     hint=f"check that {path.parent} is writable and its disk has free space")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temps(folder: Path, name: str = "*") -> list[Path]:
    """Remove the temporary files that write_atomic left in `folder` (for the file `name`, or any)
    when its process was killed mid-write (`.last.pt.tmp<pid>`): those whose process no longer
    runs. Returns what was removed."""
    removed = []
    for path in Path(folder).glob(f".{name}.tmp*"):
        match = _TEMP.match(path.name)
        if match and not _running(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


# --- output places -------------------------------------------------------------------------------

def check_output_file(path: str | os.PathLike[str]) -> Path:
    """Check before any work that `path` can be written as a file: not a folder, below folders
    that exist or can be made, in a place that accepts new files. UserError (status 2) if not."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write '{path}': it is a folder; expected a file name", status=2)
    _probe(path.parent, path)
    return path


def check_output_folder(path: str | os.PathLike[str]) -> Path:
    """Check before any work that files can be written into folder `path` (made if missing)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"cannot write into '{path}': it is a file; expected a folder", status=2)
    _probe(path, path)
    return path


def _probe(folder: Path, target: Path) -> None:
    """Create and remove a file in `folder`, or in its nearest existing parent when it is still
    to be made: the one test that a place is writable (permissions, read-only or immutable
    file systems, root or not)."""
    existing = folder
    try:
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise UserError(f"cannot write '{target}': '{existing}' is a file, not a folder", status=2)
        fd, name = tempfile.mkstemp(prefix=".vitgraph-probe-", dir=existing)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise UserError(f"cannot write '{target}': {e.strerror or e} in '{existing}'",
                        hint="choose a writable place", status=2) from None


# --- folder locks --------------------------------------------------------------------------------

@contextmanager
def folder_lock(folder: str | os.PathLike[str], on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on `folder`: a POSIX lock on <folder>/.lock, released by the kernel
    when the process ends however it ends, not inherited by forked workers, and honoured over
    NFS. When another process holds it: with `on_wait`, say who (on_wait(message)) and wait for
    it; without, raise UserError saying who holds it. A lock this process already holds is
    taken again at once (nested use)."""
    key = Path(folder).resolve()
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    fd = _open_lock(key)
    try:
        _acquire(fd, key, on_wait)
        _held[key] = [fd, 1]
        try:
            yield
        finally:
            del _held[key]
            fcntl.lockf(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _open_lock(folder: Path) -> int:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise cannot_write(folder / LOCK_FILE, e) from None


def _acquire(fd: int, folder: Path, on_wait: Callable[[str], None] | None) -> None:
    """Take the lock on the open lock file `fd`, then write who holds it into the file."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EAGAIN):
            raise cannot_write(folder / LOCK_FILE, e) from None
        holder = _holder(folder)  # another process holds it (this one holds no lock on the file to lose)
        if on_wait is None:
            raise UserError(f"{folder} is in use by {holder}",
                            hint="wait until it has finished, or choose another folder") from None
        on_wait(f"waiting for {folder}: in use by {holder}")
        fcntl.lockf(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.pwrite(fd, _whoami().encode(), 0)


def _whoami() -> str:
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"
    since = datetime.datetime.now().isoformat(timespec="seconds")
    return f"process {os.getpid()} on {socket.gethostname()} (`{command}`, since {since})"


def _holder(folder: Path) -> str:
    try:
        text = (folder / LOCK_FILE).read_text().strip()
    except OSError:
        text = ""
    return text or "another process"

"""The result store of a suite: one JSON line per finished run in <results>/runs.jsonl.

Every line carries the run's figures and the conditions they were measured under (CPU and
GPU model, threads, library versions, git commit, spec hash, recipe, seed, overrides), so a
figure is never separated from what produced it. Several machines (shards) and processes may
append to the same file: each append holds a lock on it, and is a whole line or nothing. A
torn last line (an append cut short by a full disk, or by an older writer killed mid-line) is
set aside in runs.jsonl.torn before the next append, so no record is glued onto it; a last
line that is a whole record missing only its newline is completed instead. A failed append
is undone and raises a UserError; it never leaves part of a line behind.
"""
from __future__ import annotations

import fcntl
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

from vitgraph.diagnostics import UserError
from vitgraph.fileio import cannot_write

RUNS_FILE = "runs.jsonl"
TORN_SUFFIX = ".torn"
_LIBRARIES = ("vitgraph", "torch", "onnx", "onnxruntime", "numpy")


def cpu_info() -> dict[str, str]:
    """Model name, family/model/stepping and the vector extensions that matter to GEMMs,
    from /proc/cpuinfo (a VM may name its CPU only by brand)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return {"cpu": platform.processor() or platform.machine()}
    flags = set(fields.get("flags", "").split())
    return {"cpu": fields.get("model name", platform.machine()),
            "cpu_family_model_stepping": "/".join(fields.get(k, "?") for k in ("cpu family", "model", "stepping")),
            "cpu_vector_flags": " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile")
                                         if f in flags)}


def gpu_model() -> str | None:
    """The first CUDA device's name, when torch sees one."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def git_commit(repo: Path | None = None) -> str | None:
    """HEAD of the checkout this package runs from, with '+dirty' when it has local changes."""
    where = repo or Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def conditions(device: str) -> dict[str, Any]:
    """What the figures of a run depend on besides the run's own settings: the accuracies too
    depend on the CPU (its family/model and the kernels torch picks for it), the thread count
    and the library versions, so all are recorded."""
    import torch

    return {"device": device, **cpu_info(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "gpu": gpu_model() if device.startswith("cuda") else None,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_avg_1min": round(os.getloadavg()[0], 2),  # other work on the machine skews timings
            "platform": platform.platform(), "versions": library_versions(), "git_commit": git_commit()}


class ResultStore:
    """Reads and appends the run records of one results folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / RUNS_FILE

    def records(self) -> list[dict[str, Any]]:
        return list(read_records(self.path)) if self.path.exists() else []

    def completed(self) -> set[str]:
        """Digests of the runs that finished; a rerun of the suite skips them."""
        return {r["digest"] for r in self.records() if r.get("status") == "ok"}

    def append(self, record: dict[str, Any]) -> None:
        """Add one record as one line, flushed to disk (see the module docstring); UserError
        naming the file when it cannot be written, with the file as it was before."""
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise cannot_write(self.path, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            end = self._whole_lines(fd)
            try:
                _write_all(fd, line, end)
                os.fsync(fd)
            except OSError as e:
                os.ftruncate(fd, end)  # nothing of this record stays behind
                raise cannot_write(self.path, e) from None
        finally:
            os.close(fd)  # releases the lock

    def _whole_lines(self, fd: int) -> int:
        """The size of the file once its tail is a whole line: a last line that is a whole record
        gets its newline; a torn one is moved to runs.jsonl.torn. Returns where to append."""
        data = os.pread(fd, os.fstat(fd).st_size, 0)
        if not data or data.endswith(b"\n"):
            return len(data)
        start = data.rfind(b"\n") + 1
        tail = data[start:]
        try:
            whole = isinstance(json.loads(tail), dict)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            whole = False
        try:
            if whole:
                _write_all(fd, b"\n", len(data))
                return len(data) + 1
            torn = self.path.with_name(self.path.name + TORN_SUFFIX)
            with open(torn, "ab") as f:
                f.write(tail + b"\n")
                f.flush()
                os.fsync(f.fileno())
            os.ftruncate(fd, start)
        except OSError as e:
            raise UserError(f"{self.path} ends in a torn line ({len(tail)} bytes) that could not be repaired: "
                            f"{e.strerror or e}", hint="free some space, then run again") from None
        print(f"note: {self.path} ended in a torn line ({len(tail)} bytes, from a write cut short); "
              f"moved it to {torn}", file=sys.stderr)
        return start

    def run_folder(self, run_id: str, digest: str) -> Path:
        """Where a run trains: its checkpoints let an interrupted run resume."""
        return self.folder / "runs" / f"{run_id}-{digest}"


def _write_all(fd: int, data: bytes, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a runs.jsonl; a torn last line (a run killed mid-write) is ignored."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                return
            raise UserError(f"{path}:{number}: not a JSON record", hint="remove or repair that line") from None


def latest_ok(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last successful record of each configuration (the run's digest: spec text, dataset,
    overrides, recipe, budget, seed), in the order they first appear: what a report shows. A
    suite run again with other overrides adds configurations; it does not replace them."""
    last: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.get("status") == "ok":
            last[r.get("digest") or r["run"]] = r
    return list(last.values())

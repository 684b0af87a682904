"""Every command in README.md runs as written from a fresh checkout.

The commands are read from the README's indented code blocks. Each is either run here, in a
scratch folder laid out like a clone (specs/ and tests/ linked, ../shared beside it), or named in
NOT_RUN with the reason. The default run executes the quick ones as written, with the long
ones that they depend on shortened (a few steps instead of the whole budget); `pytest -m slow
tests/test_readme.py` runs the long ones exactly as written and prints how long each took (the
times beside them in the README come from such runs). .ci/run must be the README's test command.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from spec_helpers import ROOT

README = (ROOT / "README.md").read_text()

# needs what no CI machine here has: a GPU, ImageNet, CIFAR-100, or a downloaded checkpoint
NOT_RUN = {
    "vitgraph train specs/sl_vit.vg --dataset cifar10 --recipe small-datasets --data-root ../shared/data":
        "the paper's budget: 100 epochs of 150,000 images (a GPU job)",
    "vitgraph bench --suite spt-lsa-ablation --datasets cifar10 --epochs 20 --data-root ../shared/data":
        "20 epochs of 150,000 images for each of four models (a GPU job)",
    "vitgraph train specs/deit_tiny_distilled.vg --dataset imagenet --recipe deit --teacher specs/deit_base.vg "
    "--teacher-weights deit_base.pt --distill hard": "ImageNet and a DeiT-B checkpoint",
    "vitgraph train specs/deit_tiny.vg --dataset cifar100 --weights deit_tiny.pth --set image=224":
        "CIFAR-100 and a DeiT-Ti checkpoint",
    "torchrun --nproc-per-node 8 -m vitgraph.cli train specs/deit_small.vg --dataset imagenet --recipe deit":
        "ImageNet and 8 GPUs",
    "vitgraph bench --suite small-datasets --shard 1/4": "four datasets at the papers' budgets (GPU jobs)",
    "vitgraph bench --suite large --nproc 8": "ImageNet and 8 GPUs",
}
INSTALL = "python3 -m venv .venv"  # the install lines: .ci/run runs the test one; CI is the check
# long as written; the default run shortens them with these flags (the slow test runs them whole)
LONG = {
    "vitgraph bench": ["--max-steps", "1", "--quiet"],
    "vitgraph train specs/vit.vg --dataset digits --out runs/vit-digits": ["--max-steps", "3", "--quiet"],
    "vitgraph bench --suite cpu --data-root ../shared/data": ["--list"],
}
# minutes even when shortened (each tests on the 10,000 CIFAR-10 test images): the slow test only
SLOW_ONLY = {"vitgraph train specs/sl_vit.vg --dataset cifar10 --data-root ../shared/data --subset 5000 "
             "--max-steps 200 --set patch=8"}


def commands(text: str = README) -> list[str]:
    """The shell commands of the README's indented code blocks, continuation lines joined and
    trailing comments dropped, in order."""
    lines, out = text.splitlines(), []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("    ") and re.match(r"\s+(vitgraph|python3 -m venv|torchrun)( |$)", line):
            words = line.strip()
            while words.endswith("\\"):
                i += 1
                words = words[:-1].rstrip() + " " + lines[i].strip()
            out.append(re.sub(r"\s+#.*$", "", words).strip())
        i += 1
    return out


def _scratch(tmp: Path) -> Path:
    """A folder laid out like a fresh clone, with ../shared beside it."""
    clone = tmp / "clone"
    clone.mkdir()
    for name in ("specs", "tests"):
        (clone / name).symlink_to(ROOT / name)
    if (ROOT.parent / "shared").is_dir():
        (tmp / "shared").symlink_to(ROOT.parent / "shared")
    return clone


def _run(command: str, cwd: Path, extra: list[str]) -> float:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    line = command + "".join(f" {shlex.quote(a)}" for a in extra)
    started = time.perf_counter()
    done = subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, f"{line}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return time.perf_counter() - started


def test_every_command_is_run_or_said_why_not():
    found = commands()
    assert len(found) > 15
    for command in found:
        assert command.startswith(INSTALL) or command in NOT_RUN or command.startswith(("vitgraph", "python")), command
    assert set(NOT_RUN) <= set(found), "NOT_RUN names a command the README no longer has"


def test_ci_runs_exactly_the_readme_test_command():
    readme = next(c for c in commands() if c.startswith(INSTALL) and "pytest" in c)
    script = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
              if line.strip() and not line.lstrip().startswith(("#", "set ", "cd "))]
    quiet = re.compile(r" -q\b")  # .ci/run may quieten pip; nothing else may differ
    assert [quiet.sub("", s) for s in script] == [quiet.sub("", s) for s in readme.split(" && ")]


def _check_all(tmp_path: Path, shorten: bool) -> dict[str, float]:
    clone = _scratch(tmp_path)
    times = {}
    for command in commands():
        if command in NOT_RUN or command.startswith(INSTALL) or (shorten and command in SLOW_ONLY):
            continue
        if "../shared/data" in command and not (tmp_path / "shared" / "data" / "cifar10").is_dir():
            pytest.skip("needs ../shared/data/cifar10")
        times[command] = _run(command, clone, LONG.get(command, []) if shorten else [])
    return times


def test_readme_commands_run_as_written(tmp_path):
    """The quick commands as written, the long ones shortened (see LONG)."""
    _check_all(tmp_path, shorten=True)
    assert (tmp_path / "clone" / "vit-digits.onnx").is_file() and (tmp_path / "clone" / "report" / "report.md").is_file()


def test_python_snippet_runs(tmp_path):
    block = README.split("Python mirrors the CLI:", 1)[1].split("##", 1)[0]
    code = "\n".join(line[4:] for line in block.splitlines() if line.startswith("    "))
    subprocess.run([sys.executable, "-c", code], cwd=_scratch(tmp_path), check=True, timeout=300)


@pytest.mark.slow
def test_readme_commands_take_what_the_readme_says(tmp_path, capsys):
    """Every command exactly as written; prints the time each took."""
    times = _check_all(tmp_path, shorten=False)
    with capsys.disabled():
        for command, seconds in times.items():
            print(f"\n{seconds:8.1f} s  {command}")

"""The spec front end under fuzzing (tests/spec_fuzz.py): every mutant of the zoo's specs
is accepted or rejected with one located message, never a traceback, never over 10 s,
never a quoted line that is not the line named. The default run tries a few hundred
mutants; `pytest -m slow` tries 1,200 and prints the count of each outcome."""
from __future__ import annotations

from pathlib import Path

import pytest

from spec_fuzz import run


def _report(counts: dict[str, int], failures: list) -> str:
    lines = [f"outcomes: {counts}"]
    for kind, data, outcome in failures[:8]:
        lines.append(f"  {kind} mutant -> {outcome.kind} ({outcome.seconds:.1f} s): {outcome.detail}")
        lines.append(f"    {data[:300]!r}")
    return "\n".join(lines)


def test_fuzzed_specs_never_crash(tmp_path: Path) -> None:
    counts, failures = run(tmp_path, seed=2026, count=250)
    assert not failures, _report(counts, failures)
    assert counts.get("rejected", 0) > 50 and counts.get("accepted", 0) > 5, counts


@pytest.mark.slow
def test_fuzzed_specs_never_crash_many(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    total: dict[str, int] = {}
    failures: list = []
    for seed in range(4):
        counts, found = run(tmp_path / str(seed), seed=seed, count=300) if (tmp_path / str(seed)).mkdir() is None \
            else ({}, [])
        failures += found
        for k, v in counts.items():
            total[k] = total.get(k, 0) + v
    with capsys.disabled():
        print(f"\nfuzzer: {sum(total.values())} mutants: {total}")
    assert not failures, _report(total, failures)
    assert sum(total.values()) >= 1200

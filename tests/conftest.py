"""Shared pytest setup: the --update-golden flag regenerates golden files on purpose."""
from __future__ import annotations

from pathlib import Path

import pytest

from spec_helpers import ROOT, SPECS  # noqa: F401 - re-exported for the test modules


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="rewrite golden files from current output")


@pytest.fixture
def golden(request: pytest.FixtureRequest):
    """golden(path, text): compare text with the golden file (or write it with --update-golden)."""
    update = request.config.getoption("--update-golden")

    def check(path: Path, text: str) -> None:
        if update or not path.exists():
            if not update:
                pytest.fail(f"golden file {path} is missing; run pytest --update-golden to create it")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        assert text == path.read_text(), f"output differs from {path} (pytest --update-golden to accept)"

    return check

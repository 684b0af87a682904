"""The installed package holds every subpackage of the source tree: pyproject.toml lists
packages by hand (three source folders map onto vitgraph.*), so a new folder must be
listed there or a non-editable install would lack it."""
from __future__ import annotations

import tomllib

from spec_helpers import ROOT


def test_every_source_package_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for package, folder in config["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *rel.parts]))
    assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"

"""Packaging metadata: the license expression builds, the LICENSE file and py.typed ship."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_build_requires_setuptools_that_understands_license_expressions() -> None:
    """`license = "MIT"` (PEP 639) needs setuptools >= 77; build-system says so."""
    assert PYPROJECT["project"]["license"] == "MIT"
    requires = PYPROJECT["build-system"]["requires"]
    setuptools = next(r for r in requires if r.startswith("setuptools"))
    minimum = setuptools.split(">=")[1]
    assert tuple(int(part) for part in minimum.split(".")) >= (77,)


def test_license_file_is_mit_and_listed() -> None:
    """LICENSE exists, is the MIT text for "the pulse authors", and is a license file."""
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "the pulse authors" in text
    assert "LICENSE" in PYPROJECT["project"]["license-files"]


def test_py_typed_is_package_data() -> None:
    """pulse/py.typed exists and is listed in package data (PEP 561)."""
    assert (ROOT / "pulse" / "py.typed").exists()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["pulse"]

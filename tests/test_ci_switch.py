"""The CI switch: one definition, and in CI every skip fails the run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.ci import in_ci

ROOT = Path(__file__).resolve().parents[1]

SAMPLE = textwrap.dedent('''
    import pytest

    def test_runs():
        """Passes."""

    @pytest.mark.skip(reason="needs a unicorn")
    def test_marked():
        """Skipped by a marker."""

    def test_called():
        """Skips itself."""
        pytest.skip("no unicorn here")

    @pytest.mark.xfail(reason="known", strict=True)
    def test_expected_failure():
        """An expected failure stays one."""
        raise AssertionError
''')


@pytest.mark.parametrize(("value", "expected"), [
    ("true", True), ("TRUE", True), ("1", True), ("yes", True), (" True ", True),
    ("", False), ("0", False), ("false", False), ("no", False),
])
def test_ci_values(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    """CI=1/true/yes in any case means CI; anything else does not."""
    monkeypatch.setenv("CI", value)
    assert in_ci() is expected


def run_sample(tmp_path: Path, ci: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {**os.environ, "CI": ci, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "-q", "-rs", "--rootdir", str(tmp_path), str(tmp_path / "test_sample.py")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False)


def test_skips_fail_in_ci(tmp_path: Path) -> None:
    """Under CI=true a marker skip and a pytest.skip() both fail, with their reason."""
    result = run_sample(tmp_path, "true")
    assert result.returncode == 1, result.stdout
    assert "1 failed, 1 passed, 1 xfailed, 1 error" in result.stdout   # the marker fails at setup
    assert "skipped in CI, where every test must run" in result.stdout
    assert "needs a unicorn" in result.stdout and "no unicorn here" in result.stdout


def test_skips_stay_skips_outside_ci(tmp_path: Path) -> None:
    """Without CI the same tests skip and the run passes."""
    result = run_sample(tmp_path, "")
    assert result.returncode == 0, result.stdout
    assert "1 passed, 2 skipped, 1 xfailed" in result.stdout

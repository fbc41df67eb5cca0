"""Lint, format and strict typing are part of the one test command (tools pinned in [test])."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The second run of the test command (DURI_INTEGRITY_NO_EXTENSION=1) checks the same sources.
pytestmark = pytest.mark.skipif(
    os.environ.get("DURI_INTEGRITY_NO_EXTENSION", "") not in ("", "0"), reason="checked in the first run"
)


def _tool(module: str) -> None:
    """A pinned tool from the [test] extra: skipped locally if missing, a failure in CI."""
    try:
        __import__(module)
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is required in CI (pip install -e '.[test]')")
        pytest.skip(f"{module} not installed")


@pytest.mark.parametrize(
    "argv",
    [["ruff", "check", "."], ["ruff", "format", "--check", "."], ["mypy"]],
    ids=["ruff-check", "ruff-format", "mypy-strict"],
)
def test_sources_are_clean(argv: list[str]) -> None:
    """ruff (lint and format) and mypy --strict (package, tests, benchmarks) report nothing over the project."""
    _tool(argv[0])
    r = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_checks_the_tests_and_benchmarks_as_directories() -> None:
    """mypy's file list names tests/ and benchmarks/ whole, so a new test file is type-checked too."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert config["strict"] is True
    assert {"duri_integrity", "tests", "benchmarks"} <= set(config["files"])
    assert all((ROOT / name).is_dir() for name in ("duri_integrity", "tests", "benchmarks"))


def test_the_extension_is_built_in_ci() -> None:
    """In CI the C extension must have been compiled at install time (else only the fallback is tested)."""
    from duri_integrity import speedups

    if not speedups.available():
        if os.environ.get("CI"):
            pytest.fail("the C extension was not built (gcc and the Python headers are installed by .ci/run)")
        pytest.skip("the C extension is not built here")

"""The docs stay true: links resolve, the test command is extractable, exit codes agree."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    """Every relative Markdown link points at a file that exists."""
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (doc.parent / target).exists(), f"{doc.name}: broken link {target}"


def test_ci_finds_the_readme_test_command() -> None:
    """.ci/run's extraction of the README test command yields exactly one pytest command."""
    script = (ROOT / ".ci" / "run").read_text()
    extract = re.search(r'test_command="\$\((.*)\)"', script)
    assert extract is not None
    out = subprocess.run(["bash", "-c", extract.group(1)], cwd=ROOT, capture_output=True, text=True, check=True)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and "pytest" in lines[0]


def test_exit_codes_agree_everywhere() -> None:
    """README, docs/cli.md and the code give the same exit code for each status."""
    from duri_integrity.report import EXIT_CODES

    readme = (ROOT / "README.md").read_text()
    cli_doc = (ROOT / "docs" / "cli.md").read_text()
    for status, code in EXIT_CODES.items():
        assert re.search(rf"\| `{status}` \|.*\| {code} \|", readme), status
        assert re.search(rf"\| {code} \| `{status}` \|", cli_doc), status

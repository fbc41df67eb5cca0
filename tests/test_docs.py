"""The docs stay true: links resolve, the test command is extractable, exit codes agree."""

from __future__ import annotations

import re
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


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    """.ci/run's last command is, character for character, the README's one test command."""
    block = re.search(
        r"<!-- test-command -->\n```sh\n(.*?)\n```\n<!-- /test-command -->", (ROOT / "README.md").read_text(), re.DOTALL
    )
    assert block is not None
    [command] = block.group(1).splitlines()
    last = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.strip()][-1]
    assert last == command
    assert "pytest" in command


def test_exit_codes_agree_everywhere() -> None:
    """README, docs/cli.md and the code give the same exit code for each status."""
    from duri_integrity.report import EXIT_CODES

    readme = (ROOT / "README.md").read_text()
    cli_doc = (ROOT / "docs" / "cli.md").read_text()
    for status, code in EXIT_CODES.items():
        assert re.search(rf"\| `{status}` \|.*\| {code} \|", readme), status
        assert re.search(rf"\| {code} \| `{status}` \|", cli_doc), status

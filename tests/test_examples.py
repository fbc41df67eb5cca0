"""The examples shipped in docs/ work as documented."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from duri_integrity.metrics import render_textfile

from .conftest import Signed, require_tool

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"


@pytest.fixture
def jq() -> str:
    return require_tool("jq", "jq")


def _env() -> dict[str, str]:
    bindir = os.path.dirname(shutil.which("duri-integrity") or sys.executable)
    return {**os.environ, "PATH": bindir + os.pathsep + os.environ["PATH"], "DURI_INTEGRITY_STATE_DIR": "none"}


def test_shell_canary_gate(signed: Signed, jq: str) -> None:
    """canary-gate.sh proceeds (0) on a verified tree and rolls back (non-zero) on a tampered one."""
    script = str(EXAMPLES / "canary-gate.sh")
    args = [script, str(signed.root), str(signed.keys.public)]
    assert subprocess.run(args, env=_env(), check=False).returncode == 0
    (signed.root / "app" / "main.py").write_text("tampered\n")
    assert subprocess.run(args, env=_env(), check=False).returncode != 0
    signed.manifest.unlink()
    assert subprocess.run(args, env=_env(), check=False, capture_output=True).returncode != 0


SHELL_EXAMPLES = sorted(EXAMPLES.glob("*.sh"))

# Stand-ins for a broken installation, each on its own PATH: the failure modes a gate must not pass.
FAKE_TOOLS = {
    "exits non-zero": '#!/bin/sh\necho \'{"integrity_verified": true, "status": "VERIFIED"}\'\nexit 4\n',
    "prints nothing": "#!/bin/sh\nexit 0\n",
    "prints garbage": "#!/bin/sh\necho 'Traceback (most recent call last):'\nexit 0\n",
}


def _path_with(tmp_path: Path, jq: str, fake: str | None) -> str:
    """A PATH holding jq and, unless ``fake`` is None, a fake duri-integrity (no real one)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "jq").symlink_to(jq)
    if fake is not None:
        tool = bindir / "duri-integrity"
        tool.write_text(fake)
        tool.chmod(0o755)
    return str(bindir)


@pytest.mark.parametrize("mode", ["tool missing", *FAKE_TOOLS])
@pytest.mark.parametrize("script", SHELL_EXAMPLES, ids=lambda p: p.name)
def test_shell_examples_fail_closed(script: Path, mode: str, signed: Signed, jq: str, tmp_path: Path) -> None:
    """Every shell example exits non-zero when the tool is missing, fails, or prints nothing usable."""
    path = _path_with(tmp_path, jq, FAKE_TOOLS.get(mode))
    env = {"PATH": path, "HOME": str(tmp_path), "DURI_INTEGRITY_STATE_DIR": "none"}
    r = subprocess.run(
        [str(script), str(signed.root), str(signed.keys.public)], env=env, capture_output=True, check=False
    )
    assert r.returncode != 0, (mode, r.stdout, r.stderr)


def test_python_canary_gate_fails_closed_without_the_package(signed: Signed) -> None:
    """canary_gate.py exits non-zero when duri_integrity cannot be imported (no site-packages)."""
    args = [sys.executable, "-I", "-S", str(EXAMPLES / "canary_gate.py"), str(signed.root), str(signed.keys.public)]
    r = subprocess.run(args, capture_output=True, text=True, check=False)
    assert r.returncode != 0 and "duri_integrity" in r.stderr


def test_python_canary_gate(signed: Signed) -> None:
    """canary_gate.py says proceed (0) or roll back (1), with the recommendation on stderr."""
    args = [sys.executable, str(EXAMPLES / "canary_gate.py"), str(signed.root), str(signed.keys.public)]
    r = subprocess.run(args, env=_env(), capture_output=True, text=True, check=False)
    assert r.returncode == 0 and r.stderr.strip().endswith("-> proceed")
    (signed.root / "extra").write_text("x")
    r = subprocess.run(args, env=_env(), capture_output=True, text=True, check=False)
    assert r.returncode == 1 and r.stderr.strip().endswith("-> rollback_integrity")


def test_alerting_rules_parse_and_use_emitted_metrics(signed: Signed) -> None:
    """The shipped alerting rules are valid YAML, page on 'not verified', and name metrics we write."""
    rules = yaml.safe_load((EXAMPLES / "duri-integrity.rules.yml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert alerts["IntegrityNotVerified"]["labels"]["severity"] == "page"
    assert alerts["IntegrityCheckStale"]["labels"]["severity"] == "warning"
    emitted = set(re.findall(r"^(duri_integrity_\w+)\{", render_textfile(signed.verify()), re.MULTILINE))
    for rule in alerts.values():
        for name in re.findall(r"duri_integrity_\w+", rule["expr"]):
            assert name in emitted, f"{rule['alert']} uses {name}, which is never written"

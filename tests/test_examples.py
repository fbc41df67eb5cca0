"""The examples shipped in docs/ work as documented."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def _promtool_case(textfile: str, rules: dict[str, Any], eval_minutes: int, firing: list[str]) -> dict[str, Any]:
    """A promtool alert test: the textfile's samples held constant; which alerts fire at ``eval_minutes``."""
    from prometheus_client.parser import text_string_to_metric_families

    series = []
    for family in text_string_to_metric_families(textfile):
        for s in family.samples:
            selector = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            series.append({"series": f"{s.name}{{{selector}}}", "values": f"{s.value!r}x300"})
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    verified = next(s for s in series if s["series"].startswith("duri_integrity_verified{"))
    labels: dict[str, str] = dict(re.findall(r'(\w+)="([^"]*)"', verified["series"]))

    def expected(name: str) -> list[dict[str, Any]]:
        if name not in firing:
            return []
        rule = alerts[name]

        def fill(t: str) -> str:
            return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), t)

        return [
            {
                "exp_labels": {**labels, **rule["labels"]},
                "exp_annotations": {k: fill(v) for k, v in rule.get("annotations", {}).items()},
            }
        ]

    cases = [
        {"eval_time": f"{eval_minutes}m", "alertname": a, "exp_alerts": expected(a)}
        for a in ("IntegrityNotVerified", "IntegrityCheckStale")
    ]
    return {"interval": "1m", "input_series": series, "alert_rule_test": cases}


def test_alerting_rules_fire_on_the_written_metrics(signed: Signed, tmp_path: Path) -> None:
    """promtool: the rules fire on real textfile output — stale only after 2 h + 10 min, not-verified at once."""
    promtool = require_tool("promtool", "prometheus")
    rules_file = EXAMPLES / "duri-integrity.rules.yml"
    rules = yaml.safe_load(rules_file.read_text())
    ok = render_textfile(signed.verify(), now=60.0)  # last run one minute into promtool's clock
    (signed.root / "app" / "main.py").write_text("tampered\n")
    bad = render_textfile(signed.verify(state_dir="none"), now=60.0)
    tests = [
        _promtool_case(ok, rules, 5, []),
        _promtool_case(ok, rules, 125, []),  # 2 h 4 min after the run: pending, not yet firing
        _promtool_case(ok, rules, 140, ["IntegrityCheckStale"]),
        _promtool_case(bad, rules, 5, ["IntegrityNotVerified"]),
    ]
    spec = tmp_path / "rules-test.yml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(rules_file)], "evaluation_interval": "1m", "tests": tests}))
    r = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([promtool, "test", "rules", str(spec)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr

"""Metrics for node_exporter's textfile collector, and structured logs."""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from duri_integrity.metrics import render_textfile

from .conftest import Signed, build_and_sign, new_keys

Run = Callable[..., subprocess.CompletedProcess[str]]


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(samples: Samples, name: str, **labels: str) -> float:
    [value] = [
        v for (n, lab), v in samples.items() if n == name and all(dict(lab).get(k) == x for k, x in labels.items())
    ]
    return value


def test_textfile_parses_and_carries_the_result(signed: Signed, run_cli: Run, tmp_path: Path) -> None:
    """--prometheus-textfile writes metrics the reference parser reads, for success and failure."""
    out = tmp_path / "textfile" / "duri_integrity.prom"
    out.parent.mkdir()
    args = ["verify", str(signed.root), "-p", str(signed.keys.public), "-q", "--prometheus-textfile", str(out)]
    assert run_cli(*args).returncode == 0
    s = _samples(out.read_text())
    assert _value(s, "duri_integrity_verified", release="v1.0.0") == 1
    assert _value(s, "duri_integrity_status", status="VERIFIED") == 1
    assert _value(s, "duri_integrity_status", status="FAILED") == 0
    assert _value(s, "duri_integrity_files_checked") > 20
    assert _value(s, "duri_integrity_manifest_serial") > 0
    assert _value(s, "duri_integrity_last_run_timestamp_seconds") > 1.7e9
    (signed.root / "app" / "main.py").write_text("changed\n")
    (signed.root / "new").write_text("x")
    assert run_cli(*args).returncode == 1
    s = _samples(out.read_text())
    assert _value(s, "duri_integrity_verified") == 0
    assert _value(s, "duri_integrity_problems", kind="modified") == 1
    assert _value(s, "duri_integrity_problems", kind="added") == 1
    assert _value(s, "duri_integrity_problems", kind="missing") == 0
    assert [p.name for p in out.parent.iterdir()] == ["duri_integrity.prom"]  # no temp files left


def test_textfile_written_for_untrusted_too(signed: Signed, run_cli: Run, tmp_path: Path) -> None:
    """An UNTRUSTED run still writes metrics: verified 0, status UNTRUSTED, serial 0."""
    out = tmp_path / "m.prom"
    signed.signature.unlink()
    r = run_cli("verify", str(signed.root), "-p", str(signed.keys.public), "--prometheus-textfile", str(out))
    assert r.returncode == 3
    s = _samples(out.read_text())
    assert _value(s, "duri_integrity_status", status="UNTRUSTED") == 1
    assert _value(s, "duri_integrity_manifest_serial") == 0


def test_label_values_are_escaped(tmp_path: Path) -> None:
    """A root path with quotes, backslashes and a newline still yields parseable metrics."""
    root = tmp_path / 'we"ird\\na\nme'
    root.mkdir()
    (root / "f").write_text("x")
    s = build_and_sign(root, new_keys(tmp_path / "k"), release='r"1')
    report = s.verify()
    samples = _samples(render_textfile(report))
    assert _value(samples, "duri_integrity_verified", root=str(root), release='r"1') == 1


def test_unwritable_textfile_keeps_the_verdict(signed: Signed, run_cli: Run, tmp_path: Path) -> None:
    """Metrics are best-effort: an unwritable textfile is a warning; the verdict, its exit code and output stay."""
    args = ["verify", str(signed.root), "-p", str(signed.keys.public)]
    bad = ["--prometheus-textfile", str(tmp_path / "missing-dir" / "m.prom")]
    r = run_cli(*args, *bad, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "VERIFIED"
    assert r.stderr.startswith("duri-integrity: warning: cannot write metrics") and len(r.stderr.splitlines()) == 1
    r = run_cli(*args, *bad)
    assert r.returncode == 0 and r.stdout.splitlines()[-1].startswith("VERIFIED: ")
    (signed.root / "extra").write_text("x")
    r = run_cli(*args, *bad, "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["status"] == "FAILED"


def test_last_run_timestamp_is_exact(signed: Signed) -> None:
    """The last-run time is written to the millisecond, not rounded to six digits (1.79576e+09)."""
    now = 1_795_764_680.123
    samples = _samples(render_textfile(signed.verify(), now=now))
    assert _value(samples, "duri_integrity_last_run_timestamp_seconds") == now
    assert _value(samples, "duri_integrity_manifest_serial") > 1e9  # integers in full too


def test_root_label_is_canonical(signed: Signed, run_cli: Run, tmp_path: Path) -> None:
    """The root label is the absolute, resolved path, however the root was spelled on the command line."""
    link = tmp_path / "current"
    link.symlink_to(signed.root)
    out = tmp_path / "m.prom"
    for root, cwd in ((".", signed.root), ("tree/../tree", tmp_path), (str(link), tmp_path)):
        r = run_cli("verify", root, "-p", str(signed.keys.public), "--prometheus-textfile", str(out), cwd=cwd)
        assert r.returncode == 0, r.stderr
        assert _value(_samples(out.read_text()), "duri_integrity_verified", root=str(signed.root.resolve())) == 1


def test_json_logs_one_object_per_line(signed: Signed, run_cli: Run) -> None:
    """--log-format json writes one JSON object per line on stderr with the context fields."""
    (signed.root / "x").write_text("x")
    r = run_cli("--log-format", "json", "verify", str(signed.root), "-p", str(signed.keys.public), "--json")
    assert r.returncode == 1
    records = [json.loads(line) for line in r.stderr.splitlines()]
    [rec] = [x for x in records if x["logger"] == "duri_integrity"]
    assert rec["level"] == "warning" and rec["status"] == "FAILED"
    assert rec["release"] == "v1.0.0" and rec["key_id"] == signed.keys.key_id
    assert rec["problems"] == 1 and rec["mode"] == "full" and rec["duration_seconds"] > 0
    json.loads(r.stdout)  # stdout stays the report alone


def test_default_cli_stderr_has_no_log_lines(signed: Signed, run_cli: Run) -> None:
    """Without --log-format, stderr keeps its one-line contract."""
    signed.manifest.unlink()
    r = run_cli("verify", str(signed.root), "-p", str(signed.keys.public))
    assert len(r.stderr.strip().splitlines()) == 1


def test_library_logs_with_context_and_leaves_root_logger_alone(
    signed: Signed, caplog: pytest.LogCaptureFixture
) -> None:
    """The library logs each verification with context fields and never configures the root logger."""
    root_logger = logging.getLogger()
    handlers, level = list(root_logger.handlers), root_logger.level
    with caplog.at_level(logging.INFO, logger="duri_integrity"):
        signed.verify()
    [rec] = [r for r in caplog.records if r.name == "duri_integrity"]
    extra = vars(rec)  # the context fields logged with extra=: attributes LogRecord does not declare
    assert rec.levelno == logging.INFO and extra["status"] == "VERIFIED"
    assert extra["serial"] > 0 and extra["key_id"] == signed.keys.key_id
    assert root_logger.handlers == handlers and root_logger.level == level


def test_no_logging_import_when_nothing_uses_it(signed: Signed) -> None:
    """A process that never imported logging verifies without importing it (nothing could receive a record)."""
    import sys

    code = (
        "import sys\n"
        "from duri_integrity import verify_integrity\n"
        f"r = verify_integrity({str(signed.root)!r}, public_keys={str(signed.keys.public)!r}, state_dir='none',"
        " use_config_file=False)\n"
        "assert r.status == 'VERIFIED', r.summary\n"
        "assert 'logging' not in sys.modules, 'logging was imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr

"""report.py, rule by rule: summaries, recommendations, exit codes, reason codes, counts, the
defaults of ``make_report``, and the report read as a mapping or as JSON.

``make_report`` is called directly with a ``Tally``; the exit codes are also checked through
the real console script.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from duri_integrity.report import (
    EXIT_USAGE,
    PROBLEM_KINDS,
    ManifestInfo,
    Problem,
    Report,
    Tally,
    make_report,
)

from .conftest import Signed, new_keys

RunCli = Callable[..., subprocess.CompletedProcess[str]]

COUNT_KEYS = {
    "entries",
    "checked",
    "files",
    "directories",
    "symlinks",
    "other",
    "excluded",
    "hashed",
    "problems",
    "failed",
    "total",
}

INFO = ManifestInfo(
    path="/m.json",
    deployment="svc",
    release="v1",
    serial=7,
    created="2026-01-01T00:00:00Z",
    expires=None,
    key_id="ABCDEF0123456789",
    root_digest="0" * 64,
    entries=12,
)


def tally(**counts: int) -> Tally:
    t = Tally()
    for name, value in counts.items():
        setattr(t, name, value)
    return t


def failed_report(n_modified: int = 1, n_missing: int = 0, total: int = 3) -> Report:
    t = tally(total=total, failed=n_modified + n_missing, problems=n_modified + n_missing)
    t.by_kind["modified"], t.by_kind["missing"] = n_modified, n_missing
    probs = [Problem(path=f"f{i}", kind="modified") for i in range(n_modified)]
    probs += [Problem(path=f"m{i}", kind="missing", expected="file") for i in range(n_missing)]
    return make_report(status="FAILED", root="/srv", problems=probs, tally=t)


def test_defaults_of_a_bare_report() -> None:
    """make_report with only a status and a root: full mode, no reason, empty lists, zero counts."""
    r = make_report(status="ERROR", root="/srv", reason="boom")
    assert (r.mode, r.reason_code, r.config_file, r.manifest) == ("full", None, None, None)
    assert (r.notes, r.problems, r.problems_truncated) == ([], [], False)
    assert (r.elapsed_seconds, r.checked_at, r.tool_version) == (0.0, "", "")
    assert set(r.counts) == COUNT_KEYS | set(PROBLEM_KINDS)
    assert set(r.counts.values()) == {0}


def test_fresh_tally_is_all_zero() -> None:
    """A new Tally counts nothing and is not truncated."""
    t = Tally()
    assert (t.checked, t.files, t.directories, t.symlinks, t.other) == (0, 0, 0, 0, 0)
    assert (t.added, t.excluded, t.hashed, t.problems, t.failed, t.total) == (0, 0, 0, 0, 0, 0)
    assert t.by_kind == dict.fromkeys(PROBLEM_KINDS, 0) and t.truncated is False


def test_problem_kinds_are_the_documented_ones() -> None:
    """The problem kinds, in the order reports count them."""
    assert PROBLEM_KINDS == (
        "modified",
        "missing",
        "added",
        "type_changed",
        "mode_changed",
        "symlink_changed",
        "unreadable",
        "unstable",
    )


def test_counts_come_from_the_tally() -> None:
    """Every count in the report is the tally's, the entries the manifest's, each kind under its own name."""
    t = tally(
        checked=9, files=5, directories=2, symlinks=1, other=1, excluded=3, hashed=4, problems=2, failed=2, total=13
    )
    t.by_kind["modified"], t.by_kind["unstable"] = 1, 1
    t.truncated = True
    probs = [Problem(path="a", kind="modified"), Problem(path="b", kind="unstable")]
    r = make_report(status="FAILED", root="/srv", manifest=INFO, problems=probs, tally=t)
    assert r.counts == {
        "entries": 12,
        "checked": 9,
        "files": 5,
        "directories": 2,
        "symlinks": 1,
        "other": 1,
        "excluded": 3,
        "hashed": 4,
        "problems": 2,
        "failed": 2,
        "total": 13,
        **dict.fromkeys(PROBLEM_KINDS, 0),
        "modified": 1,
        "unstable": 1,
    }
    assert r.problems_truncated and r.manifest == INFO


@pytest.mark.parametrize(
    ("status", "recommendation", "exit_code"),
    [
        ("VERIFIED", "proceed", 0),
        ("FAILED", "rollback_integrity", 1),
        ("UNTRUSTED", "rollback_untrusted", 3),
        ("ERROR", "rollback_unverifiable", 4),
    ],
)
def test_status_gives_recommendation_exit_code_and_truth(status: str, recommendation: str, exit_code: int) -> None:
    """Each status has its recommendation and exit code; only VERIFIED is truthy and integrity_verified."""
    r = failed_report() if status == "FAILED" else make_report(status=status, root="/srv", reason="why")  # type: ignore[arg-type]
    assert (r.status, r.recommendation, r.exit_code) == (status, recommendation, exit_code)
    assert bool(r) is r.integrity_verified is (status == "VERIFIED")


def test_usage_error_exit_code_is_2(run_cli: RunCli) -> None:
    """A usage error exits 2 (EXIT_USAGE), distinct from every verification outcome."""
    assert EXIT_USAGE == 2
    assert run_cli("verify", "--no-such-option").returncode == 2


def test_console_script_exit_codes(signed: Signed, run_cli: RunCli, tmp_path: Path) -> None:
    """The console script exits 0 when verified, 1 when the tree differs, 3 untrusted, 4 when it cannot verify."""
    pub = str(signed.keys.public)
    assert run_cli("verify", str(signed.root), "--public-key", pub).returncode == 0
    (signed.root / "app" / "main.py").write_text("print('changed')\n")
    assert run_cli("verify", str(signed.root), "--public-key", pub).returncode == 1
    other = str(new_keys(tmp_path / "other").public)  # a key that did not sign it
    assert run_cli("verify", str(signed.root), "--public-key", other).returncode == 3
    assert run_cli("verify", str(tmp_path / "nope"), "--public-key", pub).returncode == 4


@pytest.mark.parametrize(("files", "text"), [(0, "0 files verified"), (1, "1 file verified"), (2, "2 files verified")])
def test_verified_summary_counts_files(files: int, text: str) -> None:
    """A VERIFIED summary says how many files, in the singular only for one, with thousands separated."""
    assert make_report(status="VERIFIED", root="/", tally=tally(files=files)).summary == text
    assert make_report(status="VERIFIED", root="/", tally=tally(files=12345)).summary == "12,345 files verified"


def test_quick_mode_summary_says_so() -> None:
    """A quick-mode VERIFIED summary ends in "(quick mode)"; a full one does not."""
    r = make_report(status="VERIFIED", root="/", mode="quick", tally=tally(files=3))
    assert (r.summary, r.mode) == ("3 files verified (quick mode)", "quick")


def test_failed_summary_lists_kinds() -> None:
    """A FAILED summary says "N of M entries failed" and each kind present, by count."""
    assert failed_report(1, 2, 5).summary == "3 of 5 entries failed: 1 modified, 2 missing"
    assert failed_report(1, 0, 1).summary == "1 of 1 entry failed: 1 modified"


def test_untrusted_and_error_summaries_carry_the_reason() -> None:
    """UNTRUSTED and ERROR summaries carry the reason, and the reason code is kept as given."""
    u = make_report(status="UNTRUSTED", root="/", reason="bad signature", reason_code="bad_signature")
    assert (u.summary, u.reason, u.reason_code) == (
        "manifest not trusted: bad signature",
        "bad signature",
        "bad_signature",
    )
    e = make_report(status="ERROR", root="/", reason="no root", reason_code="tree_error")
    assert (e.summary, e.reason_code) == ("could not verify: no root", "tree_error")


def test_reason_code_defaults() -> None:
    """A FAILED report's reason code is "tree_differs" unless given; others have none unless given."""
    assert failed_report().reason_code == "tree_differs"
    assert make_report(status="VERIFIED", root="/").reason_code is None
    assert make_report(status="ERROR", root="/", reason="x").reason_code is None
    t = tally(problems=1, failed=1, total=1)
    r = make_report(status="FAILED", root="/", problems=[Problem(path="a", kind="added")], tally=t, reason_code="x")
    assert r.reason_code == "x"


def test_inconsistent_reports_are_programming_errors() -> None:
    """VERIFIED with a problem, or FAILED without one, raises ValueError instead of being rewritten."""
    p = Problem(path="a", kind="modified")
    with pytest.raises(ValueError, match="VERIFIED"):
        make_report(status="VERIFIED", root="/", problems=[p])
    with pytest.raises(ValueError, match="VERIFIED"):
        make_report(status="VERIFIED", root="/", tally=tally(problems=1))
    with pytest.raises(ValueError, match="FAILED"):
        make_report(status="FAILED", root="/")
    with pytest.raises(ValueError, match="FAILED"):
        make_report(status="FAILED", root="/", problems=[p])  # problems listed but none counted
    with pytest.raises(ValueError, match="FAILED"):
        make_report(status="FAILED", root="/", tally=tally(problems=1))


def test_notes_are_copied_into_the_report() -> None:
    """The report carries the notes given (a copy: later changes to the list do not reach it)."""
    notes = ["rollback to release 'v1' approved"]
    r = make_report(status="VERIFIED", root="/", notes=notes)
    notes.append("later")
    assert r.notes == ["rollback to release 'v1' approved"]


def test_elapsed_is_rounded_to_microseconds() -> None:
    """elapsed_seconds is rounded to six decimals."""
    assert make_report(status="VERIFIED", root="/", elapsed=1.23456789).elapsed_seconds == 1.234568


def test_report_reads_as_a_mapping() -> None:
    """r["status"], "status" in r, iteration, keys() and get() work as for a mapping of the fields."""
    r = make_report(status="VERIFIED", root="/srv", config_file="/etc/c.toml")
    assert r["status"] == "VERIFIED" and r["config_file"] == "/etc/c.toml"
    assert "status" in r and "nope" not in r
    assert list(r) == list(r.keys()) and "counts" in list(r)
    assert r.get("root") == "/srv" and r.get("nope") is None and r.get("nope", 5) == 5
    with pytest.raises(KeyError):
        r["nope"]
    assert {k: r[k] for k in r} == r.to_dict()


def test_json_is_compact_unless_indented() -> None:
    """to_json() is one line; to_json(indent=2) is indented; both decode to to_dict()."""
    r = failed_report()
    compact, pretty = r.to_json(), r.to_json(indent=2)
    assert "\n" not in compact and '\n  "status": "FAILED"' in pretty
    assert json.loads(compact) == json.loads(pretty) == r.to_dict()


def test_problems_are_immutable_and_keyword_only() -> None:
    """A Problem cannot be changed after it is made, can be hashed, and takes keywords only."""
    p = Problem(path="a", kind="missing", expected="file")
    with pytest.raises(AttributeError):
        p.path = "b"  # type: ignore[misc]
    assert len({p, Problem(path="a", kind="missing", expected="file")}) == 1
    with pytest.raises(TypeError):
        Problem("a", "missing")  # type: ignore[call-arg]
    assert msgspec.json.decode(msgspec.json.encode(p), type=Problem) == p


def test_report_json_without_the_newer_fields_decodes_with_defaults() -> None:
    """Report JSON without problems_truncated and config_file (an older tool's) decodes as not truncated, no config."""
    data = make_report(status="VERIFIED", root="/srv", config_file="/etc/c.toml").to_dict()
    del data["problems_truncated"], data["config_file"]
    decoded = msgspec.json.decode(json.dumps(data), type=Report)
    assert decoded.problems_truncated is False and decoded.config_file is None

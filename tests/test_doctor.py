"""duri-integrity doctor: the pre-deploy checklist."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from .conftest import Keys, Signed, console_script, new_keys

Run = Callable[..., subprocess.CompletedProcess[str]]


def _doctor(run_cli: Run, s: Signed, *extra: str) -> tuple[int, dict[str, dict[str, object]]]:
    r = run_cli("doctor", str(s.root), "-p", str(s.keys.public), "--json", *extra)
    report = json.loads(r.stdout)
    return r.returncode, {c["name"]: c for c in report["checks"]}


def test_all_checks_pass(signed: Signed, run_cli: Run) -> None:
    """A healthy host passes every check and exits 0; the human output says so."""
    code, checks = _doctor(run_cli, signed, "-s", str(signed.keys.secret))
    assert code == 0, checks
    assert set(checks) == {
        "root",
        "trusted keys",
        "rollback state",
        "manifest",
        "clock",
        "deployment",
        "rollback",
        "secret key",
        "no secret keys around the tree",
        "clock synchronised",
        "tree matches the manifest",
    }
    assert all(c["ok"] for c in checks.values())
    r = run_cli("doctor", str(signed.root), "-p", str(signed.keys.public))
    assert r.returncode == 0 and r.stdout.strip().endswith("all checks passed")


def test_insecure_or_untrusted_secret_key(signed: Signed, run_cli: Run, tmp_path: Path) -> None:
    """A secret key others can read, or one the hosts do not trust, fails with what to fix."""
    signed.keys.secret.chmod(0o644)
    code, checks = _doctor(run_cli, signed, "-s", str(signed.keys.secret))
    assert code == 1 and not checks["secret key"]["ok"] and "chmod" in str(checks["secret key"]["fix"])
    signed.keys.secret.chmod(0o600)
    other = new_keys(tmp_path / "other", "o")
    code, checks = _doctor(run_cli, signed, "-s", str(other.secret))
    assert code == 1 and "not among the trusted keys" in str(checks["secret key"]["detail"])


def test_missing_manifest_and_bad_signature(signed: Signed, run_cli: Run) -> None:
    """A missing manifest, or one whose signature fails, fails the manifest check."""
    signed.signature.write_text("garbage\n")
    code, checks = _doctor(run_cli, signed)
    assert code == 1 and "malformed signature" in str(checks["manifest"]["detail"])
    signed.manifest.unlink()
    code, checks = _doctor(run_cli, signed)
    assert code == 1 and not checks["manifest"]["ok"]


def test_key_inside_the_tree(signed: Signed, run_cli: Run) -> None:
    """A trusted key inside the tree fails the trusted-keys check."""
    inside = signed.root / "k.pub"
    shutil.copy(signed.keys.public, inside)
    r = run_cli("doctor", str(signed.root), "-p", str(inside), "--json")
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert r.returncode == 1 and "inside the tree" in str(checks["trusted keys"]["detail"])


def test_expired_manifest_fails_the_clock_check(tree: Path, keys: Keys, run_cli: Run) -> None:
    """An expired manifest fails the clock check."""
    from datetime import UTC, datetime, timedelta

    from .conftest import build_and_sign

    s = build_and_sign(tree, keys, created=datetime.now(tz=UTC) - timedelta(days=2), expires_in=timedelta(days=1))
    code, checks = _doctor(run_cli, s)
    assert code == 1 and "expired" in str(checks["clock"]["detail"])


def test_rollback_that_would_be_refused(tree: Path, keys: Keys, run_cli: Run, tmp_path: Path) -> None:
    """If this host has verified a newer serial, doctor says the deploy would be refused."""
    from .conftest import build_and_sign

    state = tmp_path / "state"
    newer = build_and_sign(tree, keys, serial=50)
    assert newer.verify(state_dir=str(state)).status == "VERIFIED"
    older = build_and_sign(tree, keys, serial=10, release="v0")
    code, checks = _doctor(run_cli, older, "--state-dir", str(state))
    assert code == 1 and "--allow-rollback-to v0@10" in str(checks["rollback"]["fix"])
    code, checks = _doctor(run_cli, older, "--state-dir", str(state), "--allow-rollback-to", "v0@10")
    assert code == 0 and checks["rollback"]["detail"] == "approved rollback"


def test_unreadable_file_fails_tree_check(signed: Signed) -> None:
    """A file the verifier could not open fails the tree check."""
    (signed.root / "app" / "main.py").chmod(0)
    exe = console_script()
    assert exe is not None
    cmd = [exe, "doctor", str(signed.root), "-p", str(signed.keys.public), "--json", "--state-dir", "none"]
    if os.geteuid() == 0:
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert r.returncode == 1 and "unreadable app/main.py" in str(checks["tree matches the manifest"]["detail"])


def test_expiry_within_a_week_is_flagged(tree: Path, keys: Keys, run_cli: Run) -> None:
    """A manifest that expires within seven days passes the clock check but says so."""
    from datetime import timedelta

    from .conftest import build_and_sign

    s = build_and_sign(tree, keys, expires_in=timedelta(days=3))
    code, checks = _doctor(run_cli, s)
    assert code == 0 and checks["clock"]["ok"] and "expires soon" in str(checks["clock"]["detail"])


def test_a_tampered_tree_fails_doctor(signed: Signed, run_cli: Run) -> None:
    """doctor ends with a full verification: an edited file fails it, naming the file."""
    (signed.root / "app" / "main.py").write_text("print('pwned')\n")
    code, checks = _doctor(run_cli, signed)
    assert code == 1 and "modified app/main.py" in str(checks["tree matches the manifest"]["detail"])


def test_doctor_records_nothing(signed: Signed, run_cli: Run, tmp_path: Path) -> None:
    """doctor's verification leaves the rollback mark alone: it checks, it does not deploy."""
    state = tmp_path / "doctor-state"
    code, _ = _doctor(run_cli, signed, "--state-dir", str(state))
    assert code == 0 and not list(state.glob("rollback-*.json"))


def test_wrong_deployment_and_trust_options(signed: Signed, run_cli: Run, tmp_path: Path) -> None:
    """doctor takes verify's trust options: another deployment, or a revoked key, fail as verify would."""
    code, checks = _doctor(run_cli, signed, "--deployment", "other")
    assert code == 1 and "this host runs 'other'" in str(checks["deployment"]["detail"])
    rev = tmp_path / "revoked.list"
    rev.write_text(signed.keys.key_id + "\n")
    code, checks = _doctor(run_cli, signed, "--revoked-key", str(rev))
    assert code == 1 and "revoked" in str(checks["trusted keys"]["detail"])


def test_directories_token_and_keys_around(signed: Signed, run_cli: Run, tmp_path: Path) -> None:
    """--check-dir wants safe directories, --serving wants a token, and no signing key may sit by the tree."""
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o777)
    logs.chmod(0o777)
    code, checks = _doctor(run_cli, signed, "--check-dir", str(logs), "--serving")
    assert code == 1 and "writable by group or others" in str(checks[f"directory {logs}"]["detail"])
    assert not checks["status token"]["ok"]
    shutil.copy(signed.keys.secret, signed.root.parent / "left-behind.key")
    code, checks = _doctor(run_cli, signed)
    assert code == 1 and "left-behind.key" in str(checks["no secret keys around the tree"]["detail"])


def test_a_malformed_approval_is_its_own_check(signed: Signed, run_cli: Run) -> None:
    """A label-only approval fails the 'rollback approval' check, with a hint that names the form."""
    code, checks = _doctor(run_cli, signed, "--allow-rollback-to", "new")
    assert code == 1 and "exactly one release" in str(checks["rollback approval"]["detail"])
    assert "LABEL@SERIAL" in str(checks["rollback approval"]["fix"]) and "deployment" not in checks

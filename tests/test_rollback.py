"""Rollback, replay and freeze: serials, approvals, expiry, clock skew, revoked keys."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from duri_integrity.build import build_manifest, sign_manifest, write_atomic
from duri_integrity.report import Report

from .conftest import Keys, Run, Signed, build_and_sign, new_keys


def _release(tree: Path, keys: Keys, release: str, serial: int, store: Path, **kw: Any) -> Path:  # kw: build_manifest's
    """Build and sign a manifest for the tree into its own folder outside it (a release artifact)."""
    out = store / release
    out.mkdir(parents=True)
    manifest = out / "MANIFEST.json"
    write_atomic(str(manifest), build_manifest(str(tree), deployment="svc", release=release, serial=serial, **kw).data)
    sign_manifest(str(manifest), str(keys.secret))
    return manifest


@pytest.fixture
def releases(tree: Path, keys: Keys, tmp_path: Path) -> tuple[Path, Path]:
    store = tmp_path / "releases"
    return _release(tree, keys, "v1", 100, store), _release(tree, keys, "v2", 200, store)


def _verify(tree: Path, keys: Keys, manifest: Path, state: Path, **kw: Any) -> Report:  # kw: verify_integrity's
    from duri_integrity import verify_integrity

    return verify_integrity(
        tree, manifest=manifest, public_keys=str(keys.public), state_dir=str(state), use_config_file=False, **kw
    )


def test_older_manifest_is_refused_and_state_untouched(
    tree: Path, keys: Keys, releases: tuple[Path, Path], tmp_path: Path
) -> None:
    """After v2 verified, the validly signed v1 is UNTRUSTED, and the refusal changes nothing."""
    v1, v2 = releases
    state = tmp_path / "state"
    assert _verify(tree, keys, v2, state).status == "VERIFIED"
    [mark] = state.glob("rollback-*.json")
    before = mark.read_bytes()
    r = _verify(tree, keys, v1, state)
    assert r.status == "UNTRUSTED" and r.recommendation == "rollback_untrusted"
    assert "rollback refused" in r.summary and "'v2' (serial 200)" in r.summary
    assert "--allow-rollback-to v1@100" in r.summary and r.reason_code == "rollback_refused"
    assert mark.read_bytes() == before


@pytest.mark.parametrize("approval", ["v1@100", "100", 100])
def test_approved_rollback_is_recorded_and_sticks(
    tree: Path,
    keys: Keys,
    releases: tuple[Path, Path],
    tmp_path: Path,
    approval: object,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An approval naming the release or serial lets v1 verify, says so, logs it, and lowers the mark."""
    v1, v2 = releases
    state = tmp_path / "state"
    _verify(tree, keys, v2, state)
    with caplog.at_level("WARNING", logger="duri_integrity"):
        r = _verify(tree, keys, v1, state, allow_rollback_to=approval)
    assert r.status == "VERIFIED"
    assert any(rec.levelname == "WARNING" and "rollback to release 'v1'" in rec.getMessage() for rec in caplog.records)
    assert any("rollback to release 'v1' (serial 100) approved" in n for n in r.notes)
    [mark] = state.glob("rollback-*.json")
    assert b'"approvals":[{' in mark.read_bytes()
    # the restarted old release keeps verifying without the approval...
    assert _verify(tree, keys, v1, state).status == "VERIFIED"
    # ...and rolling forward again needs nothing
    assert _verify(tree, keys, v2, state).status == "VERIFIED"
    assert _verify(tree, keys, v1, state).status == "UNTRUSTED"


@pytest.mark.parametrize("approval", ["v0@100", "v1@99", "99"])
def test_approval_for_another_release_does_not_help(
    tree: Path, keys: Keys, releases: tuple[Path, Path], tmp_path: Path, approval: str
) -> None:
    """An approval naming another label or serial does not approve v1 (serial 100)."""
    v1, v2 = releases
    state = tmp_path / "state"
    _verify(tree, keys, v2, state)
    assert _verify(tree, keys, v1, state, allow_rollback_to=approval).status == "UNTRUSTED"


@pytest.mark.parametrize("approval", ["v1", "@100", "v1@", "latest"])
def test_an_approval_must_name_exactly_one_release(
    tree: Path, keys: Keys, releases: tuple[Path, Path], tmp_path: Path, approval: str
) -> None:
    """A label alone would approve every build carrying it: it is refused as a configuration error."""
    v1, v2 = releases
    state = tmp_path / "state"
    _verify(tree, keys, v2, state)
    r = _verify(tree, keys, v1, state, allow_rollback_to=approval)
    assert r.status == "ERROR" and "exactly one release" in r.summary


def test_key_rotation_does_not_open_a_replay(
    tree: Path, keys: Keys, releases: tuple[Path, Path], tmp_path: Path
) -> None:
    """With the old and the new key both trusted, an older release signed by either is refused."""
    _v1, v2 = releases
    state = tmp_path / "state"
    new = new_keys(tmp_path / "new", "n")
    w3 = _release(tree, new, "w3", 300, tmp_path / "new-releases")
    from duri_integrity import verify_integrity

    both = [str(keys.public), str(new.public)]
    kw: dict[str, Any] = {"public_keys": both, "state_dir": str(state), "use_config_file": False}
    assert verify_integrity(tree, manifest=w3, **kw).status == "VERIFIED"
    r = verify_integrity(tree, manifest=v2, **kw)
    assert r.status == "UNTRUSTED" and "rollback refused" in r.summary, r.summary


def test_corrupt_state_fails_closed(tree: Path, keys: Keys, releases: tuple[Path, Path], tmp_path: Path) -> None:
    """A state file that cannot be read is an ERROR, not a silent reset of rollback protection."""
    v1, v2 = releases
    state = tmp_path / "state"
    _verify(tree, keys, v2, state)
    [mark] = state.glob("rollback-*.json")
    mark.write_text("{not json")
    r = _verify(tree, keys, v1, state)
    assert r.status == "ERROR" and "corrupt" in r.summary


def test_state_off_and_unwritable(tree: Path, keys: Keys, releases: tuple[Path, Path], tmp_path: Path) -> None:
    """'none' turns protection off with a note; an explicit directory that cannot be written is an ERROR."""
    v1, _ = releases
    r = _verify(tree, keys, v1, Path("none"))
    assert r.status == "VERIFIED" and any("rollback protection is off" in n for n in r.notes)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = _verify(tree, keys, v1, blocker / "state")
    assert r.status == "ERROR" and "rollback state directory" in r.summary and "--state-dir none" in r.summary
    broken = tmp_path / "broken-state"
    (broken / ".lock").mkdir(parents=True)  # the lock cannot be taken, so nothing can be recorded
    r = _verify(tree, keys, v1, broken)
    assert r.status == "ERROR" and "lock file" in r.summary


def test_rollback_through_the_cli(
    tree: Path, keys: Keys, releases: tuple[Path, Path], tmp_path: Path, run_cli: Run
) -> None:
    """The CLI refuses with exit 3 and one line, and accepts --allow-rollback-to or the variable."""
    v1, v2 = releases
    base = ["verify", str(tree), "-p", str(keys.public), "--state-dir", str(tmp_path / "s")]
    assert run_cli(*base, "-m", str(v2)).returncode == 0
    r = run_cli(*base, "-m", str(v1))
    assert r.returncode == 3 and "rollback refused" in r.stderr
    assert run_cli(*base, "-m", str(v1), env={"DURI_INTEGRITY_ALLOW_ROLLBACK_TO": "v1@100"}).returncode == 0


def test_expired_and_future_manifests(tree: Path, keys: Keys, tmp_path: Path) -> None:
    """Expired manifests and ones created beyond the clock-skew allowance are UNTRUSTED."""
    now = datetime.now(tz=UTC).replace(microsecond=0)
    store = tmp_path / "r"
    old = _release(tree, keys, "old", 1, store, created=now - timedelta(days=31), expires_in=timedelta(days=30))
    r = _verify(tree, keys, old, tmp_path / "s1")
    assert r.status == "UNTRUSTED" and "expired" in r.summary
    future = _release(tree, keys, "future", 2, store, created=now + timedelta(hours=1))
    r = _verify(tree, keys, future, tmp_path / "s2")
    assert r.status == "UNTRUSTED" and "in the future" in r.summary and "clock" in r.summary
    assert _verify(tree, keys, future, tmp_path / "s3", clock_skew=7200).status == "VERIFIED"
    near = _release(tree, keys, "near", 3, store, created=now + timedelta(seconds=60))
    assert _verify(tree, keys, near, tmp_path / "s4").status == "VERIFIED"


@pytest.mark.parametrize("form", ["pub", "dir", "list"])
def test_revoked_key_is_untrusted(signed: Signed, tmp_path: Path, form: str) -> None:
    """A manifest signed by a revoked key is UNTRUSTED, whichever way the revocation is given."""
    rev = tmp_path / "revoked"
    rev.mkdir()
    if form == "pub":
        source = rev / "old.pub"
        shutil.copy(signed.keys.public, source)
    elif form == "dir":
        shutil.copy(signed.keys.public, rev / "old.pub")
        source = rev
    else:
        source = rev / "revoked.list"
        source.write_text(f"# compromised 2026-11\n{signed.keys.key_id.lower()}  # laptop key\n")
    r = signed.verify(revoked_keys=[str(source)])
    assert r.status == "UNTRUSTED" and f"{signed.keys.key_id}, which is revoked" in r.summary


def test_bad_revocation_list_is_an_error(signed: Signed, tmp_path: Path) -> None:
    """A malformed revocation list is a clear ERROR naming the line."""
    bad = tmp_path / "revoked.list"
    bad.write_text("not-a-key-id\n")
    r = signed.verify(revoked_keys=[str(bad)])
    assert r.status == "ERROR" and "revoked.list:1" in r.summary


def test_build_warns_about_world_writable_and_setuid(tree: Path) -> None:
    """World-writable entries and setuid/setgid files are flagged when building."""
    (tree / "bin" / "run").chmod(0o4755)
    (tree / "data").chmod(0o777)
    warnings = build_manifest(str(tree), deployment="svc").warnings
    assert any("bin/run: setuid/setgid" in w for w in warnings)
    assert any("data: world-writable" in w for w in warnings)


def test_same_second_rebuild_is_not_a_rollback(tree: Path, keys: Keys) -> None:
    """Rebuilding the same release (same serial) verifies again; equal serials are not older."""
    s = build_and_sign(tree, keys, serial=5)
    assert s.verify().status == "VERIFIED"
    s = build_and_sign(tree, keys, serial=5)
    assert s.verify().status == "VERIFIED"


def test_switching_a_current_symlink_to_an_older_release_is_a_rollback(tmp_path: Path, keys: Keys) -> None:
    """The mark belongs to the configured root (``current``), not the directory it points at."""
    from duri_integrity import verify_integrity

    from .conftest import make_tree

    releases = tmp_path / "releases"
    for name, serial in (("v1", 100), ("v2", 200)):
        tree = make_tree(releases / name)
        build_and_sign(tree, keys, release=name, serial=serial)
    current = tmp_path / "current"
    state = tmp_path / "state"

    def check() -> Report:
        return verify_integrity(current, public_keys=str(keys.public), state_dir=str(state), use_config_file=False)

    current.symlink_to(releases / "v2")
    assert check().status == "VERIFIED"
    current.unlink()
    current.symlink_to(releases / "v1")
    r = check()
    assert r.status == "UNTRUSTED" and "rollback refused" in r.summary

"""Verification of real trees: every problem kind, every status, and the report's shape."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from duri_integrity import NotVerifiedError, ensure_integrity, verify_integrity
from duri_integrity.build import build_manifest, sign_manifest, write_atomic
from duri_integrity.report import Report

from .conftest import NON_UTF8_NAME, Keys, Signed, build_and_sign, new_keys


def kinds(report: Report) -> set[tuple[str, str]]:
    return {(p.path, p.kind) for p in report.problems}


def test_untouched_tree_is_verified(signed: Signed) -> None:
    """A tree that matches its signed manifest is VERIFIED with recommendation 'proceed'."""
    r = signed.verify()
    assert r.status == "VERIFIED", r.summary
    assert r["status"] == "VERIFIED" and r["integrity_verified"] is True and bool(r)
    assert r["recommendation"] == "proceed"
    assert r.problems == []
    assert r.summary == f"{r.counts['files']:,} files verified"
    assert r.manifest is not None and r.manifest.release == "v1.0.0"
    assert r.manifest.key_id == signed.keys.key_id
    assert r.mode == "full"


def test_report_mapping_and_json(signed: Signed) -> None:
    """The report reads as a mapping and serialises to JSON equal to to_dict()."""
    r = signed.verify()
    d = r.to_dict()
    assert json.loads(r.to_json()) == d
    assert set(d) >= {
        "status",
        "summary",
        "integrity_verified",
        "recommendation",
        "problems",
        "counts",
        "manifest",
        "elapsed_seconds",
    }
    assert "status" in r and r.get("nope", 5) == 5
    with pytest.raises(KeyError):
        r["nope"]
    assert r.manifest is not None, "a verified report describes its manifest"
    assert d["manifest"]["serial"] == r.manifest.serial


def test_modified_content(signed: Signed) -> None:
    """A same-size content change is caught by the hash and reported as modified."""
    p = signed.root / "app" / "main.py"
    p.write_text(p.read_text().replace("hello", "HELLO"))
    r = signed.verify()
    assert r.status == "FAILED" and r.recommendation == "rollback_integrity"
    assert kinds(r) == {("app/main.py", "modified")}
    expected = r.problems[0].expected
    assert expected is not None, "a modified file's problem says what was expected"
    assert expected.startswith("blake3:")
    assert r.summary == f"1 of {r.counts['total']:,} entries failed: 1 modified"


def test_size_change_is_modified_without_hashing(signed: Signed) -> None:
    """A size change is reported as modified with the sizes."""
    with open(signed.root / "data" / "empty", "ab") as f:
        f.write(b"x")
    r = signed.verify()
    assert kinds(r) == {("data/empty", "modified")}
    assert (r.problems[0].expected, r.problems[0].actual) == ("size 0", "size 1")


def test_missing(signed: Signed) -> None:
    """A deleted file is missing; a deleted directory reports its contents missing too."""
    (signed.root / "bin" / "run").unlink()
    shutil.rmtree(signed.root / "app" / "pkg")
    r = signed.verify()
    assert ("bin/run", "missing") in kinds(r)
    assert {("app/pkg", "missing"), ("app/pkg/mod.py", "missing"), ("app/pkg/deep/er/leaf.txt", "missing")} <= kinds(r)
    assert {k for _, k in kinds(r)} == {"missing"}


def test_added(signed: Signed) -> None:
    """New files and directories anywhere in the tree are reported as added."""
    (signed.root / "app" / "evil.py").write_text("x")
    (signed.root / "newdir").mkdir()
    r = signed.verify()
    assert kinds(r) == {("app/evil.py", "added"), ("newdir", "added")}


def test_type_changed(signed: Signed) -> None:
    """A file replaced by a directory, and a symlink replaced by a file, are type changes."""
    (signed.root / "data" / "empty").unlink()
    (signed.root / "data" / "empty").mkdir()
    (signed.root / "link-inside").unlink()
    (signed.root / "link-inside").write_text("print('hello')\n")
    r = signed.verify()
    assert kinds(r) == {("data/empty", "type_changed"), ("link-inside", "type_changed")}


def test_mode_changed(signed: Signed) -> None:
    """An executable bit, setuid bit or directory mode change is reported with both modes."""
    (signed.root / "bin" / "run").chmod(0o4755)
    (signed.root / "app").chmod(0o777)
    r = signed.verify()
    assert kinds(r) == {("bin/run", "mode_changed"), ("app", "mode_changed")}
    by_path = {p.path: p for p in r.problems}
    assert (by_path["bin/run"].expected, by_path["bin/run"].actual) == ("0755", "4755")


def test_symlink_changed(signed: Signed) -> None:
    """A retargeted symlink is reported with the old and new targets."""
    (signed.root / "link-inside").unlink()
    (signed.root / "link-inside").symlink_to("/etc/passwd")
    r = signed.verify()
    assert kinds(r) == {("link-inside", "symlink_changed")}
    assert (r.problems[0].expected, r.problems[0].actual) == ("app/main.py", "/etc/passwd")


def test_every_difference_is_reported_at_once(signed: Signed) -> None:
    """Verification never stops at the first problem."""
    (signed.root / "app" / "main.py").write_text("changed\n")
    (signed.root / "bin" / "run").unlink()
    (signed.root / "added.txt").write_text("x")
    (signed.root / "data").chmod(0o700)
    r = signed.verify()
    assert {k for _, k in kinds(r)} == {"modified", "missing", "added", "mode_changed"}
    assert r.counts["problems"] == 4


def test_non_utf8_names_are_verified_and_reported(signed: Signed) -> None:
    """Non-UTF-8 names verify, and show as backslash escapes in problems and JSON."""
    assert signed.verify().status == "VERIFIED"
    p = os.fsencode(signed.root / "data") + b"/" + os.fsencode(NON_UTF8_NAME)
    with open(p, "ab") as f:
        f.write(b"!")
    r = signed.verify()
    assert [pr.path for pr in r.problems] == ["data/caf\\xe9-latin1.txt"]
    json.loads(r.to_json())


def test_excluded_paths_follow_the_manifest_only(tree: Path, keys: Keys) -> None:
    """Paths excluded at build time are ignored at verify time, and nothing else is."""
    (tree / "app" / "__pycache__").mkdir()
    (tree / "app" / "__pycache__" / "x.pyc").write_bytes(b"cache")
    s = build_and_sign(tree, keys, exclude=["__pycache__/", "*.log"])
    (tree / "app" / "__pycache__" / "y.pyc").write_bytes(b"more cache")
    (tree / "run.log").write_text("log")
    (tree / "not-excluded.tmp").write_text("x")
    r = s.verify()
    assert kinds(r) == {("not-excluded.tmp", "added")}


def test_manifest_outside_the_tree(tree: Path, keys: Keys, tmp_path: Path) -> None:
    """The manifest and signature may live outside the tree."""
    out = tmp_path / "release-meta"
    out.mkdir()
    manifest = out / "m.json"
    write_atomic(str(manifest), build_manifest(str(tree), deployment="svc").data)
    sign_manifest(str(manifest), str(keys.secret))
    r = verify_integrity(tree, manifest=manifest, public_keys=str(keys.public), use_config_file=False)
    assert r.status == "VERIFIED", r.summary
    # ...and a manifest copied into the tree later is skipped, not reported as added
    shutil.copy(manifest, tree / "m.json")
    r = verify_integrity(
        tree,
        manifest=tree / "m.json",
        public_keys=str(keys.public),
        signature=str(manifest) + ".minisig",
        use_config_file=False,
    )
    assert r.status == "VERIFIED", r.summary


# --- UNTRUSTED ---------------------------------------------------------------


def test_missing_manifest_is_untrusted(signed: Signed) -> None:
    """No manifest means nothing to trust: UNTRUSTED with the path in the reason."""
    signed.manifest.unlink()
    r = signed.verify()
    assert r.status == "UNTRUSTED" and r.recommendation == "rollback_untrusted"
    assert "MANIFEST.json" in r.summary and not r.integrity_verified


def test_missing_signature_is_untrusted(signed: Signed) -> None:
    """An unsigned manifest is UNTRUSTED."""
    signed.signature.unlink()
    r = signed.verify()
    assert r.status == "UNTRUSTED" and "signature" in r.summary


def test_edited_manifest_is_untrusted(signed: Signed) -> None:
    """Any edit to the signed bytes, even whitespace, is UNTRUSTED."""
    signed.manifest.write_bytes(signed.manifest.read_bytes() + b" ")
    r = signed.verify()
    assert r.status == "UNTRUSTED" and "does not match" in r.summary


def test_edited_signature_is_untrusted(signed: Signed) -> None:
    """An edited trusted comment or a garbled signature is UNTRUSTED."""
    sig = signed.signature.read_bytes()
    signed.signature.write_bytes(sig.replace(b"release:v1.0.0", b"release:v9.9.9"))
    assert signed.verify().status == "UNTRUSTED"
    signed.signature.write_bytes(b"garbage\n")
    r = signed.verify()
    assert r.status == "UNTRUSTED" and "malformed signature" in r.summary


def test_wrong_key_is_untrusted(signed: Signed, tmp_path: Path) -> None:
    """A manifest signed by a key that is not trusted is UNTRUSTED and names the key."""
    other = new_keys(tmp_path / "other", "o")
    r = signed.verify(public_keys=[str(other.public)])
    assert r.status == "UNTRUSTED" and signed.keys.key_id in r.summary


def test_any_of_several_trusted_keys(signed: Signed, tmp_path: Path) -> None:
    """With several trusted keys, the signature is matched by key id."""
    other = new_keys(tmp_path / "other", "o")
    r = signed.verify(public_keys=[str(other.public), str(signed.keys.public)])
    assert r.status == "VERIFIED", r.summary


def test_key_inside_the_root_is_refused(signed: Signed) -> None:
    """A trusted key taken from the tree being verified is refused."""
    inside = signed.root / "trusted.pub"
    shutil.copy(signed.keys.public, inside)
    r = signed.verify(public_keys=[str(inside)])
    assert r.status == "UNTRUSTED" and "inside the tree" in r.summary


def test_malformed_manifest_even_if_signed_is_untrusted(signed: Signed) -> None:
    """A validly signed but malformed manifest is UNTRUSTED with the decoder's reason."""
    signed.manifest.write_bytes(b'{"format":"duri-integrity-manifest"}')
    sign_manifest_raw(signed)
    r = signed.verify()
    assert r.status == "UNTRUSTED" and "invalid manifest" in r.summary


def sign_manifest_raw(s: Signed) -> None:
    from duri_integrity.keys import load_secret_key, sign_bytes

    s.signature.write_bytes(sign_bytes(s.manifest.read_bytes(), load_secret_key(str(s.keys.secret)), "x"))


def test_expired_manifest_is_untrusted(tree: Path, keys: Keys) -> None:
    """A manifest past its expiry is UNTRUSTED."""
    from datetime import UTC, datetime, timedelta

    s = build_and_sign(tree, keys, created=datetime(2020, 1, 1, tzinfo=UTC), expires_in=timedelta(days=1))
    r = s.verify()
    assert r.status == "UNTRUSTED" and "expired" in r.summary


# --- ERROR -------------------------------------------------------------------


def test_missing_root_is_error(signed: Signed, tmp_path: Path) -> None:
    """A root that does not exist is ERROR (could not verify)."""
    r = verify_integrity(tmp_path / "nope", public_keys=str(signed.keys.public), use_config_file=False)
    assert r.status == "ERROR" and r.recommendation == "rollback_unverifiable"
    assert "nope" in r.summary


def test_no_trusted_key_is_error(signed: Signed) -> None:
    """With no trusted key configured anywhere, verification cannot run."""
    r = verify_integrity(signed.root, use_config_file=False)
    assert r.status == "ERROR" and "no trusted public key" in r.summary


def test_malformed_trusted_key_is_error(signed: Signed, tmp_path: Path) -> None:
    """A broken trusted-key file is ERROR naming the file."""
    bad = tmp_path / "bad.pub"
    bad.write_text("nope\n")
    r = signed.verify(public_keys=[str(bad)])
    assert r.status == "ERROR" and "bad.pub" in r.summary


def test_invalid_arguments_raise(signed: Signed) -> None:
    """Programming errors (bad argument values) raise instead of becoming a report."""
    with pytest.raises(ValueError, match="workers"):
        verify_integrity(signed.root, workers=0)


# --- the raising wrapper, and read-only behaviour --------------------------------


def test_ensure_integrity_raises_with_report(signed: Signed) -> None:
    """ensure_integrity returns the report when verified and raises NotVerifiedError otherwise."""
    kw: dict[str, Any] = {"public_keys": [str(signed.keys.public)], "use_config_file": False}
    assert ensure_integrity(signed.root, **kw).status == "VERIFIED"
    (signed.root / "x").write_text("x")
    with pytest.raises(NotVerifiedError) as err:
        ensure_integrity(signed.root, **kw)
    assert err.value.report.status == "FAILED"
    assert "FAILED" in str(err.value)


def _snapshot(root: Path) -> dict[bytes, tuple[int, int, int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.join(dirpath, name)] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return out


def test_verification_never_writes_to_the_tree(signed: Signed) -> None:
    """Nothing under the root is created, changed or touched (mtime, ctime) by verifying."""
    (signed.root / "app" / "main.py").write_text("tampered\n")
    before = _snapshot(signed.root)
    signed.verify()
    signed.verify(workers=1)
    assert _snapshot(signed.root) == before


def test_in_tree_manifest_copy_is_skipped_when_verifying_an_outside_copy(
    tree: Path, keys: Keys, tmp_path: Path
) -> None:
    """A release that ships MANIFEST.json inside it verifies against a copy of the manifest kept
    elsewhere (CI fetching the manifest separately): the in-tree files are not 'added'."""
    s = build_and_sign(tree, keys)
    outside = tmp_path / "fetched"
    outside.mkdir()
    shutil.copy(s.manifest, outside / "MANIFEST.json")
    shutil.copy(s.signature, outside / "MANIFEST.json.minisig")
    r = verify_integrity(tree, manifest=outside / "MANIFEST.json", public_keys=str(keys.public), use_config_file=False)
    assert r.status == "VERIFIED", r.summary

"""duri-integrity diff: what a release adds, removes and changes, in verify's vocabulary."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from duri_integrity.build import build_manifest, sign_manifest, write_atomic
from duri_integrity.report import PROBLEM_KINDS

from .conftest import Keys, new_keys

Run = Callable[..., subprocess.CompletedProcess[str]]


def _manifest(tree: Path, keys: Keys, out: Path, release: str, serial: int) -> Path:
    out.mkdir(parents=True)
    m = out / "MANIFEST.json"
    write_atomic(str(m), build_manifest(str(tree), deployment="svc", release=release, serial=serial).data)
    sign_manifest(str(m), str(keys.secret))
    return m


def _two_releases(tree: Path, keys: Keys, tmp_path: Path) -> tuple[Path, Path]:
    old = _manifest(tree, keys, tmp_path / "old", "v1", 1)
    (tree / "app" / "main.py").write_text("print('v2')\n")
    (tree / "bin" / "run").chmod(0o700)
    (tree / "app" / "new.py").write_text("new\n")
    (tree / "data" / "empty").unlink()
    (tree / "link-inside").unlink()
    (tree / "link-inside").symlink_to("bin/run")
    shutil.rmtree(tree / "empty-dir")
    (tree / "empty-dir").write_text("now a file\n")
    new = _manifest(tree, keys, tmp_path / "new", "v2", 2)
    return old, new


def test_diff_reports_every_kind_of_change(tree: Path, keys: Keys, tmp_path: Path, run_cli: Run) -> None:
    """Every kind of change appears under verify's name for it, as JSON and as text."""
    old, new = _two_releases(tree, keys, tmp_path)
    r = run_cli("diff", str(old), str(new), "-p", str(keys.public), "--json")
    assert r.returncode == 1, r.stderr
    d = json.loads(r.stdout)
    got = {(c["path"], c["kind"]) for c in d["changes"]}
    assert got == {
        ("app/main.py", "modified"),
        ("app/new.py", "added"),
        ("bin/run", "mode_changed"),
        ("data/empty", "missing"),
        ("link-inside", "symlink_changed"),
        ("empty-dir", "type_changed"),
    }
    assert {k for _, k in got} <= set(PROBLEM_KINDS)
    assert d["old"]["signed_by"] == keys.key_id and d["new"]["release"] == "v2" and d["notes"] == []
    text = run_cli("diff", str(old), str(new), "-p", str(keys.public))
    lines = text.stdout.splitlines()
    assert lines[0] == "v1 (serial 1) -> v2 (serial 2)"
    assert "MODE_CHANGED     bin/run  (old 0755, new 0700)" in lines
    assert "SYMLINK_CHANGED  link-inside  (old app/main.py, new bin/run)" in lines
    assert lines[-1] == "6 changes: 1 modified, 1 missing, 1 added, 1 type changed, 1 mode changed, 1 symlink changed"


def test_identical_manifests_exit_0(tree: Path, keys: Keys, tmp_path: Path, run_cli: Run) -> None:
    """Two manifests of the same tree differ in nothing and exit 0."""
    a = _manifest(tree, keys, tmp_path / "a", "v1", 1)
    b = _manifest(tree, keys, tmp_path / "b", "v1", 2)
    r = run_cli("diff", str(a), str(b))
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "0 changes"
    assert "signatures not checked" in r.stderr


def test_bad_signature_exits_3(tree: Path, keys: Keys, tmp_path: Path, run_cli: Run) -> None:
    """With keys, a manifest whose signature fails stops the diff with exit 3."""
    old, new = _two_releases(tree, keys, tmp_path)
    other = new_keys(tmp_path / "other", "o")
    r = run_cli("diff", str(old), str(new), "-p", str(other.public))
    assert r.returncode == 3 and "not a trusted key" in r.stderr
    with open(new, "ab") as f:
        f.write(b" ")
    r = run_cli("diff", str(old), str(new), "-p", str(keys.public))
    assert r.returncode == 3 and "does not match" in r.stderr


def test_missing_or_malformed_manifest_exits_4(tmp_path: Path, run_cli: Run) -> None:
    """A missing or malformed manifest is one clear line and exit 4."""
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    for args in ([str(tmp_path / "nope.json"), str(bad)], [str(bad), str(bad)]):
        r = run_cli("diff", *args)
        assert r.returncode == 4 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_non_utf8_names_in_diff(tree: Path, keys: Keys, tmp_path: Path, run_cli: Run) -> None:
    """Undecodable names show as backslash escapes and keep the JSON valid."""
    old = _manifest(tree, keys, tmp_path / "o", "v1", 1)
    with open(os.fsencode(tree) + b"/added-\xfe", "wb") as f:
        f.write(b"x")
    new = _manifest(tree, keys, tmp_path / "n", "v2", 2)
    r = run_cli("diff", str(old), str(new), "--json")
    assert [c["path"] for c in json.loads(r.stdout)["changes"]] == ["added-\\xfe"]


def test_diff_takes_release_directories(tree: Path, keys: Keys, tmp_path: Path, run_cli: Run) -> None:
    """OLD and NEW may be release directories: their MANIFEST.json and its signature are used."""
    old, new = _two_releases(tree, keys, tmp_path)
    r = run_cli("diff", str(old.parent), str(new.parent), "-p", str(keys.public), "--json")
    assert r.returncode == 1, r.stderr
    d = json.loads(r.stdout)
    assert d["old"]["path"] == str(old) and d["new"]["signed_by"] == keys.key_id
    (new.parent / "MANIFEST.json.minisig").unlink()
    r = run_cli("diff", str(old.parent), str(new.parent), "-p", str(keys.public))
    assert r.returncode == 3 and "cannot read signature" in r.stderr


def test_verify_and_diff_name_a_change_alike(tree: Path, keys: Keys, tmp_path: Path, run_cli: Run) -> None:
    """The kinds verify reports for a changed tree are exactly the kinds diff reports between the manifests."""
    old, new = _two_releases(tree, keys, tmp_path)
    shutil.copy(old, tree / "MANIFEST.json")
    shutil.copy(str(old) + ".minisig", tree / "MANIFEST.json.minisig")
    v = run_cli("verify", str(tree), "-p", str(keys.public), "--json", env={"DURI_INTEGRITY_STATE_DIR": "none"})
    verified = {(p["path"], p["kind"]) for p in json.loads(v.stdout)["problems"]}
    diffed = {
        (c["path"], c["kind"]) for c in json.loads(run_cli("diff", str(old), str(new), "--json").stdout)["changes"]
    }
    assert verified == diffed

"""Quick mode: a stat snapshot lets unchanged files go unhashed, and never hides a change."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from duri_integrity import snapshot as snapshot_mod
from duri_integrity.report import Report

from .conftest import Run, Signed


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files made by the test are seconds old at most; treat them as settled."""
    monkeypatch.setattr(snapshot_mod, "RACY_NS", 0)


def quick(s: Signed, cache: Path) -> Report:
    return s.verify(quick=True, cache_dir=str(cache))


def test_first_quick_run_hashes_everything_and_saves(signed: Signed, cache: Path) -> None:
    """Without a snapshot, quick mode hashes every file, says so, and saves a private snapshot."""
    r = quick(signed, cache)
    assert r.status == "VERIFIED" and r.mode == "full"
    assert r.counts["hashed"] == r.counts["files"]
    assert any("no snapshot yet" in n for n in r.notes)
    snaps = list(cache.glob("snapshot-*.bin"))
    assert len(snaps) == 1 and (snaps[0].stat().st_mode & 0o077) == 0


def test_second_quick_run_skips_unchanged_files(signed: Signed, cache: Path, no_racy_window: None) -> None:
    """With a fresh snapshot, no unchanged file is hashed and the report says quick mode ran."""
    quick(signed, cache)
    r = quick(signed, cache)
    assert r.status == "VERIFIED" and r.mode == "quick"
    assert r.counts["hashed"] == 0 and r.notes == []
    assert r.summary.endswith("(quick mode)")


def test_files_too_new_are_rehashed(signed: Signed, cache: Path) -> None:
    """Files changed within the racy window of the snapshot are re-hashed, not trusted."""
    quick(signed, cache)
    r = quick(signed, cache)
    assert r.status == "VERIFIED"
    assert r.counts["hashed"] == r.counts["files"]  # everything in the fixture is seconds old


def test_same_size_edit_with_mtime_restored_is_caught(signed: Signed, cache: Path, no_racy_window: None) -> None:
    """Editing a file and putting its size and mtime back still changes ctime, so it is re-hashed."""
    quick(signed, cache)
    p = signed.root / "app" / "main.py"
    st = p.stat()
    p.write_text(p.read_text().replace("hello", "HELLO"))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = quick(signed, cache)
    assert r.status == "FAILED"
    assert [(x.path, x.kind) for x in r.problems] == [("app/main.py", "modified")]


def test_structure_changes_are_caught_without_hashing(signed: Signed, cache: Path, no_racy_window: None) -> None:
    """Added, missing, mode and type changes are found by the walk in quick mode too."""
    quick(signed, cache)
    (signed.root / "added.txt").write_text("x")
    (signed.root / "bin" / "run").chmod(0o777)
    (signed.root / "data" / "empty").unlink()
    r = quick(signed, cache)
    kinds = {(x.path, x.kind) for x in r.problems}
    assert kinds == {("added.txt", "added"), ("bin/run", "mode_changed"), ("data/empty", "missing")}


def test_edited_snapshot_is_ignored(signed: Signed, cache: Path, no_racy_window: None) -> None:
    """A snapshot whose MAC does not check out is ignored with a note, and everything is hashed."""
    quick(signed, cache)
    [snap] = cache.glob("snapshot-*.bin")
    data = bytearray(snap.read_bytes())
    data[-3] ^= 0x01  # one bit of one stat record
    snap.write_bytes(bytes(data))
    r = quick(signed, cache)
    assert r.status == "VERIFIED" and r.mode == "full"
    assert r.counts["hashed"] == r.counts["files"]
    assert any("does not check out" in n for n in r.notes)


def test_snapshot_of_another_manifest_is_not_used(signed: Signed, cache: Path, no_racy_window: None) -> None:
    """A snapshot is tied to the manifest's root digest: a new release starts from a full check."""
    from .conftest import build_and_sign

    quick(signed, cache)
    (signed.root / "new-in-release.txt").write_text("v2")
    before = signed.verify().manifest
    assert before is not None, "the unchanged tree verifies against its manifest"
    serial = before.serial + 1
    again = build_and_sign(signed.root, signed.keys, release="v2", serial=serial)
    r = quick(again, cache)
    assert r.status == "VERIFIED" and r.mode == "full"


def test_unwritable_cache_is_a_note_not_a_failure(signed: Signed, tmp_path: Path) -> None:
    """If the snapshot cannot be saved, verification still succeeds and says why."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    r = signed.verify(quick=True, cache_dir=str(blocker / "cache"))
    assert r.status == "VERIFIED"
    assert any("snapshot not saved" in n for n in r.notes)


def test_quick_flag_on_the_command_line(signed: Signed, cache: Path, run_cli: Run) -> None:
    """`verify --quick --cache-dir` works end to end and reports the mode in JSON."""
    import json

    args = ["verify", str(signed.root), "-p", str(signed.keys.public), "--quick", "--cache-dir", str(cache), "--json"]
    first = json.loads(run_cli(*args).stdout)
    second = run_cli(*args)
    assert first["status"] == "VERIFIED" and second.returncode == 0
    assert json.loads(second.stdout)["mode"] in ("quick", "full")

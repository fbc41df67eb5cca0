"""The one stability rule (hashing.py): build and verify, through the C reader and without it, agree.

Each test runs on the path the suite runs on (the C reader, or pure Python under
DURI_INTEGRITY_NO_EXTENSION=1), and where the extension is there, compares it with the pure
path in the same process. Changes are injected between a file's open and its read: in the C
reader through speedups.FAULT_HOOK, in Python by wrapping os.readv, at the same moment.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from blake3 import blake3

from duri_integrity import speedups
from duri_integrity.build import build_manifest
from duri_integrity.errors import TreeError
from duri_integrity.hashing import CHUNK, SMALL_FILE, BuildHash, check_files, hash_for_build, read_file

from .conftest import Keys, build_and_sign

EXT = speedups._ext
PATHS = ["c", "python"] if EXT is not None else ["python"]


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the test through the C reader ("c") and through pure Python ("python")."""
    monkeypatch.setattr(speedups, "_ext", EXT if request.param == "c" else None)
    yield request.param


def _during_read(monkeypatch: pytest.MonkeyPatch, rel: str, root: Path, action: Callable[[], None]) -> list[int]:
    """Run ``action`` once, between ``rel``'s open (and fstat) and its first read, on either path."""
    calls: list[int] = []
    target = str(root / rel)
    real_readv = os.readv

    def once() -> None:
        if not calls:
            calls.append(1)
            action()

    def readv(fd: int, buffers: Any) -> int:
        if os.lseek(fd, 0, os.SEEK_CUR) == 0 and os.readlink(f"/proc/self/fd/{fd}") == target:
            once()
        return real_readv(fd, buffers)

    def hook(stage: int, p: bytes) -> int:
        if stage == speedups.STAGE_READ and p == os.fsencode(rel):
            once()
        return 0

    monkeypatch.setattr(os, "readv", readv)  # the os module hashing reads through
    monkeypatch.setattr(speedups, "FAULT_HOOK", hook)
    return calls


def _touch(p: Path) -> Callable[[], None]:
    """Set the file's mtime to a time it cannot have had: the bytes stay the same, the stat does not."""
    return lambda: os.utime(p, ns=(1, 1))


def _rewrite(p: Path) -> Callable[[], None]:
    """Overwrite the file's first bytes with other bytes of the same length."""

    def go() -> None:
        data = p.read_bytes()
        with open(p, "r+b") as f:
            f.write(bytes(b ^ 0xFF for b in data[:16]))
        os.utime(p, ns=(2, 2))  # the stat changes even within one timestamp tick

    return go


def _append(p: Path) -> Callable[[], None]:
    def go() -> None:
        with open(p, "ab") as f:
            f.write(b"!")

    return go


def _fail_reads(monkeypatch: pytest.MonkeyPatch, rel: str, root: Path) -> None:
    """Every read of ``rel`` fails with EIO after its open, on either path."""
    real = os.readv
    target = str(root / rel)

    def readv(fd: int, buffers: Any) -> int:
        if os.readlink(f"/proc/self/fd/{fd}") == target:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(fd, buffers)

    monkeypatch.setattr(os, "readv", readv)  # the os module hashing reads through
    rel_b = os.fsencode(rel)
    monkeypatch.setattr(
        speedups, "FAULT_HOOK", lambda stage, p: errno.EIO if stage == speedups.STAGE_READ and p == rel_b else 0
    )


SIZES = {"empty": 0, "small": 5000, "whole": SMALL_FILE, "chunked": SMALL_FILE + 3}


def _files(root: Path) -> list[tuple[str, os.stat_result]]:
    for name, size in SIZES.items():
        (root / name).write_bytes(os.urandom(size))
    return [(name, (root / name).lstat()) for name in SIZES]


@pytest.mark.parametrize("change", [_touch, _rewrite])
@pytest.mark.parametrize("name", ["small", "whole", "chunked"])
def test_a_file_changing_while_read_has_no_digest_in_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str, name: str, change: Callable[[Path], Any]
) -> None:
    """Build gives no digest for a file whose stat changes during its read, even with the same bytes."""
    files = _files(tmp_path)
    calls = _during_read(monkeypatch, name, tmp_path, change(tmp_path / name))
    res = dict(zip(SIZES, hash_for_build(str(tmp_path), files, workers=2), strict=True))
    assert calls == [1]
    assert res[name] == BuildHash(None, "unstable", "changed while being read")
    assert all(r.digest == blake3((tmp_path / n).read_bytes()).hexdigest() for n, r in res.items() if n != name)


@pytest.mark.parametrize("change", [_touch, _rewrite])
@pytest.mark.parametrize("name", ["small", "whole", "chunked"])
def test_a_file_changing_while_read_is_unstable_in_verify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str, name: str, change: Callable[[Path], Any]
) -> None:
    """Verify reports 'unstable' for a file whose stat changes during its read, even when its digest matches."""
    files = _files(tmp_path)
    jobs = [
        (rel, st.st_ino, st.st_size, st.st_mode & 0o7777, blake3((tmp_path / rel).read_bytes()).hexdigest())
        for rel, st in files
    ]
    calls = _during_read(monkeypatch, name, tmp_path, change(tmp_path / name))
    problems = check_files(str(tmp_path), jobs, workers=2)
    assert calls == [1]
    assert [(jobs[i][0], kind, actual) for i, kind, _, actual in problems] == [
        (name, "unstable", "changed while being read")
    ]


def test_the_whole_release_refuses_a_file_touched_while_read(
    tree: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """build_and_sign fails (no manifest signed) when a file's stat changes while it is read."""
    _during_read(monkeypatch, "app/pkg/mod.py", tree, _touch(tree / "app/pkg/mod.py"))
    with pytest.raises(TreeError, match=r"app/pkg/mod.py: unstable: changed while being read"):
        build_and_sign(tree, keys)
    assert not (tree / "MANIFEST.json").exists()


def test_verify_of_a_touched_file_fails_with_the_same_report_on_both_paths(
    signed: Any, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """A whole verification in which one file is touched mid-read: FAILED, that file unstable."""
    _during_read(monkeypatch, "data/blob.bin", signed.root, _touch(signed.root / "data/blob.bin"))
    r = signed.verify()
    assert r.status == "FAILED"
    assert [(p.path, p.kind) for p in r.problems] == [("data/blob.bin", "unstable")]


def _tricky(root: Path) -> list[tuple[str, os.stat_result]]:
    """Files whose build results cover every kind a reader returns; listed, then changed after the listing."""
    from duri_integrity.keys import generate_keypair

    generate_keypair(str(root / "k.key"), str(root / "k.pub"))
    key = (root / "k.key").read_bytes()
    (root / "huge.key").write_bytes(key + b"\0" * (SMALL_FILE + 10))  # a key, read in chunks
    for name, size in SIZES.items():
        (root / name).write_bytes(os.urandom(size))
    for name in ("fifo", "link", "gone", "grown", "chmod", "unreadable"):
        (root / name).write_bytes(b"listed\n")
    (root / "unreadable").chmod(0)
    names = sorted(p.name for p in root.iterdir())
    listed = [(n, (root / n).lstat()) for n in names]
    (root / "fifo").unlink()
    os.mkfifo(root / "fifo")
    (root / "link").unlink()
    (root / "link").symlink_to("small")
    (root / "gone").unlink()
    (root / "grown").write_bytes(b"listed, then longer\n")
    (root / "chmod").chmod(0o600)
    return listed


def test_build_results_are_identical_through_the_c_reader_and_without(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Digests, secret-key flags and every kind of problem: the same BuildHash list on both paths."""
    listed = _tricky(tmp_path)
    runs = {}
    for label in PATHS:
        monkeypatch.setattr(speedups, "_ext", EXT if label == "c" else None)
        runs[label] = hash_for_build(str(tmp_path), listed, workers=2)
    got = dict(zip((n for n, _ in listed), runs["python"], strict=True))
    assert all(r == runs["python"] for r in runs.values())
    assert {n for n, r in got.items() if r.secret_key} == {"k.key", "huge.key"}
    assert got["fifo"] == BuildHash(None, "unstable", "replaced between listing and opening")
    for name in ("gone", "link"):  # the open fails: ENOENT, or ELOOP (O_NOFOLLOW)
        assert got[name].problem == "unstable" and "replaced or removed" in got[name].detail
    assert got["grown"] == got["chmod"] == BuildHash(None, "unstable", "changed between listing and opening")
    if os.geteuid() != 0:  # root reads a mode-0 file
        assert got["unreadable"] == BuildHash(None, "unreadable", "Permission denied")
    for name in SIZES:
        assert got[name].digest == blake3((tmp_path / name).read_bytes()).hexdigest()


def test_a_read_failing_after_the_open_is_unreadable_in_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """An I/O error after a successful open: 'unreadable' with the system's words, on both paths."""
    files = _files(tmp_path)
    _fail_reads(monkeypatch, "small", tmp_path)
    res = dict(zip(SIZES, hash_for_build(str(tmp_path), files, workers=1), strict=True))
    assert res["small"] == BuildHash(None, "unreadable", "Input/output error")
    assert res["whole"].digest is not None


def test_built_manifests_are_byte_identical_on_both_paths(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same tree builds to the same manifest bytes through the C reader and without it, any thread count."""
    when = datetime(2026, 1, 2, tzinfo=UTC)
    out = set()
    for label in PATHS:
        monkeypatch.setattr(speedups, "_ext", EXT if label == "c" else None)
        for workers in (None, 1, 3):
            out.add(build_manifest(str(tree), deployment="svc", created=when, workers=workers).data)
    assert len(out) == 1


@pytest.mark.skipif(EXT is None, reason="C extension not built or turned off")
@pytest.mark.parametrize("situation", ["stable", "touched", "grown", "size", "mode", "fifo", "gone", "eio"])
def test_both_readers_return_the_same_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, situation: str) -> None:
    """The C reader and read_file give the same result object for one file in each situation."""
    p = tmp_path / "f"
    p.write_bytes(b"0123456789" * 10)
    st = p.lstat()
    size, mode = st.st_size, stat.S_IMODE(st.st_mode)
    if situation == "size":
        size += 1
    elif situation == "mode":
        mode ^= 0o100
    elif situation == "fifo":
        p.unlink()
        os.mkfifo(p)
    elif situation == "gone":
        p.unlink()
    results = []
    for reader in ("c", "python"):
        if situation in ("touched", "grown"):
            p.write_bytes(b"0123456789" * 10)  # the same inode, as listed
            _during_read(monkeypatch, "f", tmp_path, _touch(p) if situation == "touched" else _append(p))
        elif situation == "eio":
            _fail_reads(monkeypatch, "f", tmp_path)
        buf = bytearray(CHUNK)
        fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if reader == "c":
                r = speedups.new_reader(fd)
                try:
                    results.append(r.read([("f", st.st_ino, size, mode, "")], [0], buf)[0])
                finally:
                    r.close()
            else:
                with memoryview(buf) as view:
                    results.append(read_file(fd, "f", st.st_ino, size, mode, buf, view))
        finally:
            os.close(fd)
        monkeypatch.undo()
    expected = {
        "stable": 0,
        "touched": ("changed",),
        "grown": ("changed",),
        "size": ("size", 100),
        "mode": ("mode", stat.S_IMODE(st.st_mode), 0),
        "fifo": ("replaced",),
        "gone": ("open", errno.ENOENT),
        "eio": ("read", errno.EIO),
    }[situation]
    assert results == [expected, expected]

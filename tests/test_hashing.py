"""BLAKE3 hashing of real files: sizes around every threshold, races, scheduling."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from blake3 import blake3

from duri_integrity.hashing import SMALL_FILE, FileCheck, check_files, hash_for_build


def _check(p: Path, digest: str | None = None, size: int | None = None, mode: int | None = None) -> FileCheck:
    st = p.lstat()
    return (
        p.name,
        st.st_ino,
        st.st_size if size is None else size,
        (st.st_mode & 0o7777) if mode is None else mode,
        digest or blake3(p.read_bytes()).hexdigest(),
    )


SIZES = [0, 1, 2047, 2048, 65536, SMALL_FILE, SMALL_FILE + 1, 3 * SMALL_FILE + 7]


@pytest.mark.parametrize("size", SIZES)
def test_build_digest_matches_reference(tmp_path: Path, size: int) -> None:
    """Each read strategy gives the reference BLAKE3 of the content."""
    data = os.urandom(size)
    p = tmp_path / "f"
    p.write_bytes(data)
    res = hash_for_build(str(tmp_path), [(p.name, p.lstat())], workers=2)[0]
    assert res.digest == blake3(data).hexdigest() and res.problem is None


@pytest.mark.parametrize("size", SIZES)
def test_check_passes_and_catches_one_flipped_byte(tmp_path: Path, size: int) -> None:
    """A matching file gives no problem; one changed byte gives 'modified' with both digests."""
    p = tmp_path / "f"
    p.write_bytes(os.urandom(size))
    job = _check(p)
    assert check_files(str(tmp_path), [job], workers=2) == []
    if size:
        data = bytearray(p.read_bytes())
        data[size // 2] ^= 0x40
        p.write_bytes(bytes(data))
        [(i, kind, want, got)] = check_files(str(tmp_path), [job], workers=2)
        assert (i, kind, want) == (0, "modified", f"blake3:{job[4]}")
        assert got == f"blake3:{blake3(bytes(data)).hexdigest()}"


def test_size_and_mode_checked_from_the_descriptor(tmp_path: Path) -> None:
    """Size and mode differences are reported from fstat, and a size change skips hashing."""
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    problems = check_files(str(tmp_path), [_check(p, size=4, mode=0o600)], workers=1)
    assert sorted(k for _, k, _, _ in problems) == ["mode_changed", "modified"]


@pytest.mark.parametrize("workers", [1, 2, 5])
def test_many_files_all_checked_with_any_worker_count(tmp_path: Path, workers: int) -> None:
    """Every file is checked exactly once whatever the worker count, big files included."""
    jobs = []
    for i in range(300):
        p = tmp_path / f"f{i}"
        p.write_bytes(os.urandom(i * 37 if i % 100 else SMALL_FILE + i))
        jobs.append(_check(p))
    bad = {7, 100, 299}
    jobs = [(*j[:4], "0" * 64) if k in bad else j for k, j in enumerate(jobs)]
    problems = check_files(str(tmp_path), jobs, workers=workers)
    assert sorted(i for i, *_ in problems) == sorted(bad)


def test_other_inode_than_listed_but_same_file_now_is_checked(tmp_path: Path) -> None:
    """An inode that differs from the directory entry's but is still the name's (overlayfs copy-up) is hashed."""
    p = tmp_path / "f"
    p.write_bytes(b"one")
    job = _check(p)
    assert check_files(str(tmp_path), [(job[0], job[1] + 10**9, *job[2:])], workers=1) == []
    [(_, kind, _, _)] = check_files(str(tmp_path), [(job[0], job[1] + 10**9, *job[2:4], "0" * 64)], workers=1)
    assert kind == "modified"


def test_replaced_file_is_unstable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file replaced between its open and the check of its name is reported unstable, not hashed."""
    from duri_integrity import speedups

    p, twin = tmp_path / "f", tmp_path / "twin"
    p.write_bytes(b"one")
    twin.write_bytes(b"one")
    job = _check(p)
    real_fstat = os.fstat

    def fstat_then_swap(fd: int) -> os.stat_result:
        st = real_fstat(fd)
        if twin.exists():
            twin.rename(p)  # the name now points at another inode than the descriptor
        return st

    def hook(stage: int, path: bytes) -> int:  # the same fault, injected into the C reader
        if stage == speedups.STAGE_FSTAT and twin.exists():
            twin.rename(p)
        return 0

    monkeypatch.setattr(os, "fstat", fstat_then_swap)
    monkeypatch.setattr(speedups, "FAULT_HOOK", hook)
    [(_, kind, _, _)] = check_files(str(tmp_path), [(job[0], job[1] + 10**9, *job[2:])], workers=1)
    assert kind == "unstable"


def test_symlink_swapped_in_is_not_followed(tmp_path: Path) -> None:
    """A file replaced by a symlink after the walk is refused by O_NOFOLLOW."""
    target = tmp_path / "secret"
    target.write_bytes(b"secret")
    p = tmp_path / "f"
    p.write_bytes(b"file")
    job = _check(p)
    p.unlink()
    p.symlink_to(target)
    [(_, kind, _, _)] = check_files(str(tmp_path), [job], workers=1)
    assert kind == "unstable"
    assert hash_for_build(str(tmp_path), [(p.name, target.lstat())], workers=1)[0].problem == "unstable"


def test_removed_file_is_unstable(tmp_path: Path) -> None:
    """A file removed after the walk is reported as unstable."""
    p = tmp_path / "f"
    p.write_bytes(b"file")
    job = _check(p)
    p.unlink()
    [(_, kind, _, _)] = check_files(str(tmp_path), [job], workers=1)
    assert kind == "unstable"


def test_fifo_swapped_in_does_not_block(tmp_path: Path) -> None:
    """A FIFO put in a file's place is never read (O_NONBLOCK, then refused by type)."""
    p = tmp_path / "f"
    p.write_bytes(b"file")
    job = _check(p)
    st = p.lstat()
    p.unlink()
    os.mkfifo(p)
    [(_, kind, _, _)] = check_files(str(tmp_path), [job], workers=1)
    assert kind == "unstable"
    assert hash_for_build(str(tmp_path), [(p.name, st)], workers=1)[0].problem == "unstable"


def test_build_refuses_a_file_changed_since_listing(tmp_path: Path) -> None:
    """If a file's size or mtime changed between the walk and the open, build reports it."""
    p = tmp_path / "f"
    p.write_bytes(b"before")
    st = p.lstat()
    p.write_bytes(b"after, longer")
    assert hash_for_build(str(tmp_path), [(p.name, st)], workers=1)[0].problem == "unstable"


def test_secret_key_content_is_flagged(tmp_path: Path) -> None:
    """Content shaped like a minisign secret key is flagged for the builder."""
    from duri_integrity.keys import generate_keypair

    generate_keypair(str(tmp_path / "k.key"), str(tmp_path / "k.pub"))
    res = hash_for_build(str(tmp_path), [(n, (tmp_path / n).lstat()) for n in ("k.key", "k.pub")], workers=1)
    assert [r.secret_key for r in res] == [True, False]


def test_invalid_worker_count(tmp_path: Path) -> None:
    """A worker count below one is a programming error."""
    with pytest.raises(ValueError, match="workers"):
        check_files(str(tmp_path), [], workers=-1)


def test_directory_swapped_for_symlink_is_not_entered(tmp_path: Path) -> None:
    """A directory replaced by a symlink after the walk is refused at the directory, not followed."""
    root = tmp_path / "root"
    (root / "lib").mkdir(parents=True)
    (root / "lib" / "x.so").write_bytes(b"inside")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.so").write_bytes(b"inside")  # same content: following the link would "verify"
    job: FileCheck = ("lib/x.so", (root / "lib" / "x.so").lstat().st_ino, 6, 0o644, blake3(b"inside").hexdigest())
    (root / "lib").rename(tmp_path / "moved")
    (root / "lib").symlink_to(outside)
    [(_, kind, _, detail)] = check_files(str(root), [job], workers=1)
    # O_DIRECTORY|O_NOFOLLOW on a symlink fails with ENOTDIR (or ELOOP): the link is never followed.
    assert kind == "unstable" and ("Not a directory" in (detail or "") or "symbolic links" in (detail or ""))


def test_growth_during_a_chunked_read_is_noticed(tmp_path: Path) -> None:
    """Reading past the size fstat gave means the file grew: no digest is returned for it."""
    from duri_integrity.hashing import CHUNK, _hash_chunks

    p = tmp_path / "big"
    p.write_bytes(os.urandom(3 * SMALL_FILE))
    fd = os.open(p, os.O_RDONLY)
    try:
        digest, got = _hash_chunks(fd, 3 * SMALL_FILE - 10, bytearray(CHUNK))  # as if it grew by 10 bytes
    finally:
        os.close(fd)
    assert digest is None and got > 3 * SMALL_FILE - 10


def test_files_rewritten_during_verification_never_verify(tmp_path: Path) -> None:
    """While a writer keeps changing files, every check reports them (modified or unstable), never OK."""
    import threading

    root = tmp_path / "busy"
    root.mkdir()
    names = ["small.txt", "big.bin"]
    (root / names[0]).write_bytes(b"a" * 5000)
    (root / names[1]).write_bytes(b"b" * (4 * SMALL_FILE))
    jobs = [_check(root / n) for n in names]
    stop, started = threading.Event(), threading.Event()

    def writer() -> None:
        k = 0
        while not stop.is_set():
            k += 1
            for n in names:
                with open(root / n, "r+b") as f:
                    f.seek(k % 4000)
                    f.write(bytes([0xC0 | (k % 64)]) * 64)  # never the original bytes
            started.set()

    t = threading.Thread(target=writer)
    t.start()
    started.wait()
    try:
        for _ in range(20):
            problems = check_files(str(root), jobs, workers=2)
            assert {i for i, *_ in problems} == {0, 1}
            assert {kind for _, kind, _, _ in problems} <= {"modified", "unstable"}
    finally:
        stop.set()
        t.join()


def test_directory_chain_holds_a_bounded_number_of_descriptors(tmp_path: Path) -> None:
    """Moving about a 60-level tree, the cursor keeps at most MAX_HELD_DIRS fds, each the right directory."""
    import random

    from duri_integrity.walk import MAX_HELD_DIRS, DirCursor

    d = tmp_path
    for _ in range(60):
        d = d / "d"
        d.mkdir()
    rng = random.Random(7)
    root_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    cursor = DirCursor(root_fd)
    before = len(os.listdir("/proc/self/fd"))
    try:
        for _ in range(300):
            depth = rng.choice([0, 1, rng.randrange(61), 59, 60])
            rel = "/".join(["d"] * depth)
            fd = cursor.enter(rel)
            assert os.fstat(fd).st_ino == (tmp_path / rel).stat().st_ino
            assert len(os.listdir("/proc/self/fd")) - before <= MAX_HELD_DIRS
    finally:
        cursor.close()
        os.close(root_fd)
    assert len(os.listdir("/proc/self/fd")) == before - 1


def test_secret_key_variants_minisign_loads_are_flagged(tmp_path: Path, minisign_bin: str) -> None:
    """Every form of a secret key the real minisign loads (BOM, any first line, junk after, big file) is flagged."""
    import subprocess

    subprocess.run(
        [minisign_bin, "-G", "-W", "-p", str(tmp_path / "k.pub"), "-s", str(tmp_path / "k.key")],
        check=True,
        capture_output=True,
    )
    key = (tmp_path / "k.key").read_bytes()
    comment, key_line = key.splitlines()[:2]
    variants = {
        "plain.key": key,
        "bom.key": b"\xef\xbb\xbf" + key,
        "any-comment.key": b"release notes\n" + key_line + b"\n",
        "crlf.key": comment + b"\r\n" + key_line + b"\r\n",
        "junk-after.key": key + os.urandom(6000),
        "huge.bin": key + b"\0" * (SMALL_FILE + 10),
    }
    (tmp_path / "msg").write_bytes(b"m")
    for name, data in variants.items():
        (tmp_path / name).write_bytes(data)
        loaded = subprocess.run(
            [minisign_bin, "-S", "-s", str(tmp_path / name), "-m", str(tmp_path / "msg"), "-x", str(tmp_path / "sig")],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
        assert loaded.returncode == 0, (name, loaded.stderr)  # minisign really uses it as a key
    (tmp_path / "bare.key").write_bytes(key_line + b"\n")  # minisign 0.11 refuses it; it is the key all the same
    (tmp_path / "notes.txt").write_bytes(b"a line\nthat quotes RWQAAEIy mid-line\n")
    names = [*variants, "bare.key", "k.pub", "notes.txt"]
    res = hash_for_build(str(tmp_path), [(n, (tmp_path / n).lstat()) for n in names], workers=2)
    assert {n: r.secret_key for n, r in zip(names, res, strict=True)} == {
        **dict.fromkeys([*variants, "bare.key"], True),
        "k.pub": False,
        "notes.txt": False,
    }


def test_the_pure_path_helpers_stop_when_the_caller_is_interrupted() -> None:
    """An interrupt (or error) on the calling thread stops the helpers after the batch they hold,
    instead of letting them hash everything left before the caller hears of it."""
    from duri_integrity.schedule import schedule

    done: list[int] = []
    main = threading.get_ident()

    def run_batch(batch: list[int], worker: Any) -> None:
        if threading.get_ident() == main:
            raise KeyboardInterrupt
        time.sleep(0.002)
        done.extend(batch)

    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(KeyboardInterrupt):
            schedule([], list(range(500)), run_batch, fd, 4096, 3, None)  # 500 one-file batches
    finally:
        os.close(fd)
    assert len(done) < 100


def test_an_interrupt_while_a_pure_path_helper_starts_reaches_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C inside Thread.start()'s wait surfaces as a RuntimeError about a lock: the caller gets the
    interrupt instead of going on to hash, and the helper that did start is waited for."""
    from duri_integrity import schedule as sched

    started: list[threading.Thread] = []
    real_start = threading.Thread.start

    def interrupted(self: threading.Thread) -> None:
        real_start(self)
        started.append(self)
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("release unlocked lock")  # noqa: B904 - as threading's own, the interrupt its context

    hashed_by: set[int] = set()

    def run_batch(batch: list[int], worker: Any) -> None:
        hashed_by.add(threading.get_ident())
        time.sleep(0.02)  # the helper is still at work when the caller would return without waiting

    monkeypatch.setattr(threading.Thread, "start", interrupted)
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(KeyboardInterrupt):
            sched.schedule([], list(range(50)), run_batch, fd, 4096, 2, None)
    finally:
        os.close(fd)
    assert started and not started[0].is_alive()
    assert threading.get_ident() not in hashed_by


def test_join_started_waits_for_a_started_thread_and_gives_up_on_one_never_started() -> None:
    from duri_integrity.threads import join_started

    t = threading.Thread(target=time.sleep, args=(0.05,))
    t.start()
    join_started(t)
    assert not t.is_alive()
    began = time.monotonic()
    join_started(threading.Thread(target=time.sleep, args=(0,)), patience=0.05)  # never started
    assert time.monotonic() - began < 1

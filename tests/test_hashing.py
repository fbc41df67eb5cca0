"""BLAKE3 hashing of real files: sizes around every threshold, races, unreadable files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from blake3 import blake3

from duri_integrity.hashing import LARGE_FILE, SMALL_FILE, HashJob, hash_files, hash_one


def _job(p: Path) -> HashJob:
    st = p.lstat()
    return HashJob(str(p), st.st_dev, st.st_ino, st.st_size)


@pytest.mark.parametrize(
    "size", [0, 1, 2047, 2048, 65536, SMALL_FILE, SMALL_FILE + 1, 3 * SMALL_FILE + 7, LARGE_FILE + 5]
)
def test_digest_matches_reference(tmp_path: Path, size: int) -> None:
    """Each read strategy gives the reference BLAKE3 of the content."""
    data = os.urandom(size)
    p = tmp_path / "f"
    p.write_bytes(data)
    res = hash_files([_job(p)], workers=2)[0]
    assert res.digest == blake3(data).hexdigest()
    assert res.problem is None


def test_many_files_parallel_keep_order(tmp_path: Path) -> None:
    """Results come back in the jobs' order whatever the worker count."""
    paths = []
    for i in range(200):
        p = tmp_path / f"f{i}"
        p.write_bytes(os.urandom(i * 37))
        paths.append(p)
    jobs = [_job(p) for p in paths]
    want = [blake3(p.read_bytes()).hexdigest() for p in paths]
    for workers in (1, 2, 5):
        assert [r.digest for r in hash_files(jobs, workers=workers)] == want


def test_replaced_file_is_unstable(tmp_path: Path) -> None:
    """A file whose inode differs from what the walk saw is reported, not hashed."""
    p = tmp_path / "f"
    p.write_bytes(b"one")
    job = _job(p)
    p.unlink()
    p.write_bytes(b"two")
    other = tmp_path / "keep"
    other.write_bytes(b"x")  # keeps the old inode number from being reused at once
    res = hash_one(job._replace(ino=job.ino + 10**9))
    assert res.digest is None and res.problem == "unstable"


def test_symlink_swapped_in_is_not_followed(tmp_path: Path) -> None:
    """A file replaced by a symlink after the walk is refused by O_NOFOLLOW."""
    target = tmp_path / "secret"
    target.write_bytes(b"secret")
    p = tmp_path / "f"
    p.write_bytes(b"file")
    job = _job(p)
    p.unlink()
    p.symlink_to(target)
    res = hash_one(job)
    assert res.digest is None and res.problem == "unstable"


def test_removed_file_is_unstable(tmp_path: Path) -> None:
    """A file removed after the walk is reported as unstable."""
    p = tmp_path / "f"
    p.write_bytes(b"file")
    job = _job(p)
    p.unlink()
    assert hash_one(job).problem == "unstable"


def test_fifo_swapped_in_does_not_block(tmp_path: Path) -> None:
    """A FIFO put in a file's place is never read (O_NONBLOCK, then refused by type)."""
    p = tmp_path / "f"
    p.write_bytes(b"file")
    job = _job(p)
    p.unlink()
    os.mkfifo(p)
    assert hash_one(job).problem == "unstable"


def test_secret_key_content_is_flagged(tmp_path: Path) -> None:
    """Content shaped like a minisign secret key is flagged for the builder."""
    from duri_integrity.keys import generate_keypair

    generate_keypair(str(tmp_path / "k.key"), str(tmp_path / "k.pub"))
    assert hash_one(_job(tmp_path / "k.key")).secret_key
    assert not hash_one(_job(tmp_path / "k.pub")).secret_key


def test_invalid_worker_count(tmp_path: Path) -> None:
    """A worker count below one is a programming error."""
    with pytest.raises(ValueError, match="workers"):
        hash_files([], workers=0)

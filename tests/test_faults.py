"""Fault injection: a tree churning under verification, failing syscalls, resource limits, leaks."""

from __future__ import annotations

import errno
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from blake3 import blake3

from duri_integrity import hashing, readahead, speedups
from duri_integrity.hashing import check_files

from .conftest import Keys, Signed, build_and_sign

# The mutator: every victim is, at every instant, different from what the manifest says (missing,
# another type, another mode, other bytes): whatever a verification sees of a victim is a problem.
MUTATOR = r"""
import os, random, shutil, sys, time
root, stop = sys.argv[1], sys.argv[2]
rng = random.Random(int(sys.argv[3]))
ORIG = b"original content\n" * 40
OTHER = bytes(b ^ 0xFF for b in ORIG)  # differs from ORIG at every offset
victims = ["a/victim.txt", "b/c/victim.bin", "vdir"]
trash = os.path.join(root, ".trash")  # inside the tree: it is "added" too
os.makedirs(trash, exist_ok=True)
n = 0

def fresh(path, kind):
    tmp = os.path.join(os.path.dirname(path), f".tmp{n}")
    if kind == "file":
        with open(tmp, "wb") as f:
            f.write(OTHER[: rng.randrange(1, len(OTHER))])
        os.chmod(tmp, 0o644)
    elif kind == "dir":
        os.mkdir(tmp, 0o700)  # the manifest's directories are 0755
        with open(os.path.join(tmp, "f"), "wb") as f:
            f.write(ORIG)
    elif kind == "fifo":
        os.mkfifo(tmp)
    else:
        os.symlink("/etc/passwd", tmp)
    return tmp

def swap(path, kind):
    tmp = fresh(path, kind)
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            os.rename(path, os.path.join(trash, f"old{n}"))  # missing until the next rename
        os.rename(tmp, path)  # atomic over a file, FIFO or symlink
    except OSError:
        os.rename(tmp, os.path.join(trash, f"left{n}"))

for v in victims:  # first make every victim differ, then say so
    swap(os.path.join(root, v), "fifo")
print("ready", flush=True)
while not os.path.exists(stop):
    n += 1
    v = os.path.join(root, rng.choice(victims))
    op = rng.choice(["file", "dir", "fifo", "symlink", "chmod", "truncate", "append"])
    try:
        if op in ("chmod", "truncate", "append") and os.path.isfile(v) and not os.path.islink(v):
            if op == "chmod":
                os.chmod(v, rng.choice([0o600, 0o755, 0o666]))
            elif op == "truncate":
                os.truncate(v, rng.randrange(1, len(OTHER)))  # OTHER's bytes: still not ORIG
            else:
                with open(v, "ab") as f:
                    f.write(b"x")
        else:
            swap(v, op if op in ("file", "dir", "fifo", "symlink") else "fifo")
    except OSError:
        pass  # the previous state stays: it differs too
    if n % 50 == 0:  # empty the trash, never remove it: it stays a difference
        for name in os.listdir(trash):
            p = os.path.join(trash, name)
            shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)
    time.sleep(0.0002)
print(n)
"""

ORIG = b"original content\n" * 40


def _churn_tree(root: Path) -> None:
    for d in ("a", "b/c", "vdir", "steady/x/y"):
        (root / d).mkdir(parents=True, exist_ok=True)
        (root / d).chmod(0o755)
    (root / "a" / "victim.txt").write_bytes(ORIG)
    (root / "b" / "c" / "victim.bin").write_bytes(ORIG)
    (root / "vdir" / "f").write_bytes(ORIG)
    for i in range(20):
        (root / "steady" / "x" / "y" / f"s{i}.txt").write_bytes(os.urandom(i * 100))
    for p in root.rglob("*"):
        if p.is_file():
            p.chmod(0o644)


def test_churning_tree_never_verifies_never_crashes(tmp_path: Path, keys: Keys) -> None:
    """Victims churned (type swaps, renames, chmod, truncate, append) while verifying: no crash, hang or VERIFIED."""
    root = tmp_path / "churn"
    root.mkdir()
    _churn_tree(root)
    s = build_and_sign(root, keys)
    (root / ".trash").mkdir()  # from here on the tree differs, before the mutator even starts
    stop = tmp_path / "stop"
    mutator = subprocess.Popen(
        [sys.executable, "-c", MUTATOR, str(root), str(stop), "20261127"], stdout=subprocess.PIPE, text=True
    )
    assert mutator.stdout is not None and mutator.stdout.readline() == "ready\n"
    results: list[tuple[str, set[str]]] = []
    failures: list[BaseException] = []

    def loop() -> None:
        try:
            for k in range(300):
                r = s.verify(quick=k % 3 == 0, workers=1 + k % 3)
                results.append((r.status, {p.path for p in r.problems}))
        except BaseException as exc:
            failures.append(exc)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    t.join(timeout=60)
    stop.write_text("")
    out, _ = mutator.communicate(timeout=30)
    assert not t.is_alive(), "verification hung"
    assert not failures, failures
    assert int(out) > 0 and mutator.returncode == 0
    assert len(results) == 300
    statuses = {status for status, _ in results}
    assert statuses == {"FAILED"}, statuses
    # Every run reported every victim: each differs from the manifest at every instant.
    victims = {".trash", "a/victim.txt", "b/c/victim.bin", "vdir"}
    missed = [victims - paths for _, paths in results if not victims <= paths]
    assert not missed, missed[:3]


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _where(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def test_read_failing_after_open_is_unreadable(signed: Signed, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read that fails after a successful open is reported for that file, never dropped."""
    real = os.readv

    def readv(fd: int, buffers: Any) -> int:
        if _where(fd).endswith("/app/pkg/mod.py"):
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, buffers)

    def hook(stage: int, path: bytes) -> int:  # the same fault in the C reader
        return errno.EIO if stage == speedups.STAGE_READ and path == b"app/pkg/mod.py" else 0

    monkeypatch.setattr(os, "readv", readv)
    monkeypatch.setattr(speedups, "FAULT_HOOK", hook)
    r = signed.verify(workers=2)
    assert r.status == "FAILED"
    assert [(p.path, p.kind, p.actual) for p in r.problems] == [("app/pkg/mod.py", "unreadable", "Input/output error")]


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.ENOMEM])
def test_running_out_of_resources_is_an_error_not_a_problem(
    signed: Signed, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """Out of descriptors or memory while opening or reading files: ERROR (exit 4), never 'unreadable'."""
    real_open, real_readv = os.open, os.readv

    def fail_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if path == "main.py":
            raise OSError(code, os.strerror(code))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    def hook_open(stage: int, path: bytes) -> int:  # the same faults in the C reader
        return code if stage == speedups.STAGE_OPEN and path == b"app/main.py" else 0

    monkeypatch.setattr(os, "open", fail_open)
    monkeypatch.setattr(speedups, "FAULT_HOOK", hook_open)
    r = signed.verify()
    assert r.status == "ERROR" and r.exit_code == 4 and "ran out of resources" in (r.reason or "")
    monkeypatch.setattr(os, "open", real_open)

    def hook_read(stage: int, path: bytes) -> int:
        return code if stage == speedups.STAGE_READ and path == b"bin/run" else 0

    monkeypatch.setattr(speedups, "FAULT_HOOK", hook_read)

    def fail_read(fd: int, buffers: Any) -> int:
        if _where(fd).endswith("/bin/run"):
            raise OSError(code, os.strerror(code))
        return real_readv(fd, buffers)

    monkeypatch.setattr(os, "readv", fail_read)
    assert signed.verify().status == "ERROR"


def test_exception_in_a_hashing_helper_thread_propagates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in a helper thread is raised to the caller: no result with part of the tree unchecked."""
    root = tmp_path / "many"
    root.mkdir()
    jobs = []
    for i in range(400):
        p = root / f"f{i:03d}"
        p.write_bytes(b"x" * i)
        jobs.append((p.name, p.lstat().st_ino, i, 0o644, blake3(b"x" * i).hexdigest()))
        p.chmod(0o644)
    helper_ran = threading.Event()
    real = hashing._check_batch

    def check_batch(*args: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            helper_ran.set()
            raise RuntimeError("bug in a helper")
        helper_ran.wait(5)  # let a helper take a batch before the caller finishes them all
        real(*args)

    real_read = readahead.read_batch

    def read_batch(*args: Any) -> Any:  # the C path's seam: small files are read by helper threads
        if threading.current_thread() is not threading.main_thread():
            helper_ran.set()
            raise RuntimeError("bug in a helper")
        return real_read(*args)

    monkeypatch.setattr(hashing, "_check_batch", check_batch)
    monkeypatch.setattr(readahead, "read_batch", read_batch)
    with pytest.raises(RuntimeError, match="bug in a helper"):
        check_files(str(root), jobs, workers=2)
    assert helper_ran.is_set()


def test_file_changing_mid_read_is_unstable(signed: Signed, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file rewritten (same size) between its fstat and its read is 'unstable', not 'modified' or fine."""
    real = os.readv
    target = signed.root / "data" / "blob.bin"

    def rewrite() -> None:
        time.sleep(0.01)  # so that even a coarse-timestamp filesystem sees a new mtime
        writer = os.open(target, os.O_WRONLY)
        try:
            os.pwrite(writer, b"CHANGED", 100)
        finally:
            os.close(writer)

    def readv(fd: int, buffers: Any) -> int:
        if _where(fd) == str(target) and os.lseek(fd, 0, os.SEEK_CUR) == 0:
            rewrite()
        return real(fd, buffers)

    def hook(stage: int, path: bytes) -> int:  # the same rewrite, between the C reader's fstat and read
        if stage == speedups.STAGE_READ and path == b"data/blob.bin":
            rewrite()
        return 0

    monkeypatch.setattr(os, "readv", readv)
    monkeypatch.setattr(speedups, "FAULT_HOOK", hook)
    r = signed.verify()
    assert [(p.path, p.kind) for p in r.problems] == [("data/blob.bin", "unstable")]


def test_no_descriptor_leaks(signed: Signed) -> None:
    """Verifications, passing and failing (missing, added, unreadable, replaced), leave no descriptor open."""
    signed.verify()
    before = _fd_count()
    assert signed.verify(workers=3).status == "VERIFIED"
    (signed.root / "app" / "pkg" / "mod.py").unlink()
    (signed.root / "app" / "pkg" / "new.py").write_text("x")
    (signed.root / "bin" / "run").unlink()
    os.mkfifo(signed.root / "bin" / "run")
    (signed.root / "app" / "pkg" / "deep").rename(signed.root / "moved")
    for quick in (False, True, True):
        assert signed.verify(quick=quick, workers=2).status == "FAILED"
    assert _fd_count() == before


def test_root_digest_over_more_than_4096_entries(tmp_path: Path, keys: Keys) -> None:
    """The root digest fed in 4,096-entry slices equals the one-piece digest; such a tree verifies, tampering fails."""
    import msgspec

    from duri_integrity.manifest import _ROOT_DIGEST_CONTEXT, compute_root_digest, decode_manifest

    root = tmp_path / "wide"
    for d in range(3):
        (root / f"d{d}").mkdir(parents=True)
        for i in range(1500):
            (root / f"d{d}" / f"f{i:04d}").write_bytes(b"%d" % i)
    s = build_and_sign(root, keys, exclude=["*.tmp"])
    m = decode_manifest(s.manifest.read_bytes())
    assert len(m.entries) == 4503
    whole = msgspec.json.encode({"exclude": m.exclude, "entries": m.entries})
    one_piece = blake3(whole, derive_key_context=_ROOT_DIGEST_CONTEXT).hexdigest()
    assert compute_root_digest(m.exclude, m.entries) == one_piece
    assert m.root_digest == compute_root_digest(m.exclude, m.entries)
    assert s.verify().status == "VERIFIED"
    (root / "d2" / "f1499").write_bytes(b"tampered")
    r = s.verify()
    assert [(p.path, p.kind) for p in r.problems] == [("d2/f1499", "modified")]


def _deep_tree(root: Path, depth: int) -> Path:
    """``depth`` nested directories with ten files each: many batches, each thread deep in the chain."""
    d = root
    for k in range(depth):
        d = d / "d"
        d.mkdir(parents=True)
        for i in range(10):
            (d / f"f{i}").write_bytes(b"%d" % k)
    return root


def _verify_limited(s: Signed, limit: int, workers: int) -> tuple[int, dict[str, Any]]:
    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    env = {k: v for k, v in os.environ.items() if not k.startswith("DURI_INTEGRITY_")}
    env["DURI_INTEGRITY_STATE_DIR"] = "none"
    cmd = [sys.executable, "-m", "duri_integrity", "verify", str(s.root), "--public-key", str(s.keys.public)]
    p = subprocess.run(
        [*cmd, "--workers", str(workers), "--json"],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=lower,
        cwd=s.root.parent,
        timeout=60,
        check=False,
    )
    return p.returncode, json.loads(p.stdout) if p.stdout.strip() else {"stderr": p.stderr}


def test_descriptor_limit_never_changes_the_verdict(tmp_path: Path, keys: Keys) -> None:
    """Under a low RLIMIT_NOFILE a deep tree verifies with any worker count; one too deep to walk is ERROR."""
    fits = build_and_sign(_deep_tree(tmp_path / "fits", 70), keys)
    for workers in (1, 2, 3, 4):
        code, report = _verify_limited(fits, 100, workers)
        assert (code, report.get("status")) == (0, "VERIFIED"), (workers, report)
    too_deep = build_and_sign(_deep_tree(tmp_path / "deep", 130), keys)
    for workers in (1, 3):
        code, report = _verify_limited(too_deep, 100, workers)
        assert (code, report.get("status")) == (4, "ERROR"), (workers, report)
        assert "ran out of resources" in report["reason"] and report["problems"] == []

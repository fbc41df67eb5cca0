"""The tamper matrix and awkward filesystem objects, through the real console script."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from duri_integrity.manifest import Entry

from .conftest import Signed, build_and_sign

Run = Callable[..., subprocess.CompletedProcess[str]]


def _same_size_other_content(root: Path) -> None:
    """Replace app/main.py with a hard link to a new file of the same size but other content."""
    target = root / "app" / "main.py"
    twin = root / "data" / "twin.txt"
    data = target.read_bytes()
    twin.write_bytes(bytes(b ^ 1 for b in data))
    target.unlink()
    os.link(twin, target)


def _append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


def _fifo(root: Path) -> None:
    os.mkfifo(root / "data" / "pipe")


def _swap(path: Path, remove: Callable[[Path], None], make: Callable[[Path], object]) -> None:
    """Replace what is at ``path``: remove it, then make the new thing there."""
    remove(path)
    make(path)


# Each change's return value (write_text's count, rename's new path) is not used.
TAMPER: dict[str, tuple[Callable[[Path], object], set[tuple[str, str]]]] = {
    "content": (lambda r: (r / "app/main.py").write_text("print('HELLO')\n"), {("app/main.py", "modified")}),
    "truncate": (lambda r: os.truncate(r / "app/pkg/mod.py", 3), {("app/pkg/mod.py", "modified")}),
    "append": (lambda r: _append(r / "bin/run", "rm -rf /\n"), {("bin/run", "modified")}),
    "delete": (lambda r: (r / "data/blob.bin").unlink(), {("data/blob.bin", "missing")}),
    "add": (lambda r: (r / "app/evil.py").write_text("x"), {("app/evil.py", "added")}),
    "rename": (
        lambda r: (r / "app/main.py").rename(r / "app/main2.py"),
        {("app/main.py", "missing"), ("app/main2.py", "added")},
    ),
    "chmod": (lambda r: (r / "app/main.py").chmod(0o755), {("app/main.py", "mode_changed")}),
    "file to symlink": (
        lambda r: _swap(r / "app/main.py", Path.unlink, lambda p: p.symlink_to("/etc/passwd")),
        {("app/main.py", "type_changed")},
    ),
    "symlink retarget": (
        lambda r: _swap(r / "link-inside", Path.unlink, lambda p: p.symlink_to("bin/run")),
        {("link-inside", "symlink_changed")},
    ),
    "file to directory": (
        lambda r: _swap(r / "data/empty", Path.unlink, Path.mkdir),
        {("data/empty", "type_changed")},
    ),
    "directory to file": (
        lambda r: _swap(r / "empty-dir", Path.rmdir, lambda p: p.write_text("")),
        {("empty-dir", "type_changed")},
    ),
    "add fifo": (_fifo, {("data/pipe", "added")}),
    "hard link swap": (_same_size_other_content, {("app/main.py", "modified"), ("data/twin.txt", "added")}),
}


@pytest.mark.parametrize("case", list(TAMPER))
def test_tamper_matrix(signed: Signed, run_cli: Run, case: str) -> None:
    """Each kind of change is reported with its kind, and the command exits 1."""
    change, expected = TAMPER[case]
    change(signed.root)
    r = run_cli("verify", str(signed.root), "-p", str(signed.keys.public), "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert {(p["path"], p["kind"]) for p in report["problems"]} == expected
    assert report["integrity_verified"] is False


def _awkward_tree(root: Path) -> None:
    (root / "d").mkdir(parents=True)
    (root / "d" / "plain.txt").write_text("plain\n")
    os.mkfifo(root / "d" / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "d" / "sock"))
    sock.close()
    (root / "d" / "loop-a").symlink_to("loop-b")
    (root / "d" / "loop-b").symlink_to("loop-a")
    (root / "d" / "self").symlink_to("self")
    (root / "d" / "dangling").symlink_to("nowhere/at/all")
    (root / "d" / "line\nbreak.txt").write_text("newline in the name\n")
    (root / "d" / "tab\tand space .txt").write_text("x\n")
    if os.geteuid() == 0:
        os.mknod(root / "d" / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))


def _deep(root: Path, total: int = 6000) -> str:
    """Make a directory chain whose path is longer than PATH_MAX (4,096), using directory fds."""
    name = "n" * 200
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    parts: list[str] = []
    try:
        while len("/".join(parts)) < total:
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
            parts.append(name)
        leaf = os.open("leaf.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(leaf, b"deep\n")
        os.close(leaf)
    finally:
        os.close(fd)
    return "/".join([*parts, "leaf.txt"])


def test_awkward_objects_build_verify_and_never_hang(tmp_path: Path, run_cli: Run) -> None:
    """FIFOs, sockets, devices, link loops, dangling links, odd names and over-long paths are recorded
    as what they are, verify cleanly, and are never opened (a FIFO would block the reader)."""
    from .conftest import new_keys

    root = tmp_path / "awkward"
    _awkward_tree(root)
    deep = _deep(root)
    assert len(str(root / deep)) > 4096
    keys = new_keys(tmp_path / "keys")
    signed = build_and_sign(root, keys)
    kinds = {e.path: e.kind for e in json_entries(signed)}
    assert kinds["d/fifo"] == "fifo" and kinds["d/sock"] == "socket"
    assert kinds["d/loop-a"] == kinds["d/self"] == kinds["d/dangling"] == "symlink"
    assert kinds["d/line\nbreak.txt"] == "file" and kinds[deep] == "file"
    if os.geteuid() == 0:
        assert kinds["d/null"] == "char_device"
    r = run_cli("verify", str(root), "-p", str(keys.public), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    # change the deep file through descriptors, then see it reported by its full path
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for part in deep.split("/")[:-1]:
        child = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    leaf = os.open("leaf.txt", os.O_WRONLY | os.O_APPEND, dir_fd=fd)
    os.write(leaf, b"more\n")
    os.close(leaf)
    os.close(fd)
    r = run_cli("verify", str(root), "-p", str(keys.public), "--json")
    assert r.returncode == 1
    assert [(p["path"], p["kind"]) for p in json.loads(r.stdout)["problems"]] == [(deep, "modified")]


def json_entries(signed: Signed) -> list[Entry]:
    from duri_integrity.manifest import decode_manifest

    return decode_manifest(signed.manifest.read_bytes()).entries


def test_unreadable_directory_is_reported(signed: Signed) -> None:
    """A directory the verifier cannot list is an 'unreadable' problem, never success."""
    import shutil

    (signed.root / "app" / "pkg").chmod(0)
    exe = shutil.which("duri-integrity")
    assert exe is not None
    cmd = [exe, "verify", str(signed.root), "-p", str(signed.keys.public), "--json"]
    if os.geteuid() == 0:
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    env = {**os.environ, "DURI_INTEGRITY_STATE_DIR": "none"}
    r = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    (signed.root / "app" / "pkg").chmod(0o755)
    assert r.returncode == 1, r.stderr
    problems = {(p["path"], p["kind"]) for p in json.loads(r.stdout)["problems"]}
    assert ("app/pkg", "unreadable") in problems

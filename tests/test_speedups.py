"""The optional C reader gives exactly the pure-Python results; the build falls back without a compiler."""

from __future__ import annotations

import base64
import errno
import importlib
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from blake3 import blake3

from duri_integrity import hashing, speedups
from duri_integrity.hashing import FileCheck, check_files

from .conftest import Keys, build_and_sign, make_tree

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import hatch_build  # noqa: E402

needs_ext = pytest.mark.skipif(not speedups.available(), reason="C extension not built or turned off")


def _job(root: Path, rel: str) -> FileCheck:
    p = root / rel
    st = p.lstat()
    return (rel, st.st_ino, st.st_size, st.st_mode & 0o7777, blake3(p.read_bytes()).hexdigest())


def _tricky_tree(root: Path) -> list[FileCheck]:
    """Files of every size class in nested directories, then one of every kind of damage."""
    rng = random.Random(5)
    rels = []
    for d in ("a", "a/b", "a/b/c", "x", "x/y"):
        (root / d).mkdir(parents=True, exist_ok=True)
        for k in range(12):
            rel = f"{d}/f{k}"
            (root / rel).write_bytes(rng.randbytes(rng.choice([0, 1, 2047, 2048, 40_000, 1 << 20, (1 << 20) + 5])))
            rels.append(rel)
    os.mkdir(os.fsencode(root) + b"/caf\xe9")
    rels.append(os.fsdecode(b"caf\xe9/n\xffame"))
    (root / rels[-1]).write_bytes(b"non-UTF-8 names")
    jobs = [_job(root, r) for r in rels]
    (root / "a/f1").write_bytes(b"different")  # size
    (root / "a/f4").chmod(0o600)  # mode
    data = bytearray((root / "a/b/f4").read_bytes())
    data[len(data) // 2] ^= 1
    (root / "a/b/f4").write_bytes(bytes(data))  # content (40 KB or 1 MiB)
    (root / "a/b/c/f2").unlink()  # gone
    (root / "x/f3").unlink()
    (root / "x/f3").symlink_to("/etc/passwd")  # a link in its place
    (root / "x/f5").unlink()
    os.mkfifo(root / "x/f5")  # a FIFO in its place
    shutil.rmtree(root / "x/y")  # a directory gone: every file in it
    (root / "x/y").symlink_to(root / "a")  # and a link to another directory in its place
    return jobs


def _both(root: Path, jobs: list[FileCheck], workers: int, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    fast = sorted(check_files(str(root), jobs, workers=workers))
    ext = speedups._ext
    monkeypatch.setattr(speedups, "_ext", None)
    pure = sorted(check_files(str(root), jobs, workers=workers))
    monkeypatch.setattr(speedups, "_ext", ext)
    return fast, pure


@needs_ext
@pytest.mark.parametrize("workers", [1, 2, 4])
def test_reader_reports_exactly_what_the_pure_path_reports(
    tmp_path: Path, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Size, mode, content, removal, a symlink, a FIFO and a directory swapped for a link: identical problems."""
    jobs = _tricky_tree(tmp_path)
    fast, pure = _both(tmp_path, jobs, workers, monkeypatch)
    assert fast == pure
    kinds = {(jobs[i][0], kind) for i, kind, _, _ in fast}
    assert {("a/f1", "modified"), ("a/f4", "mode_changed"), ("a/b/f4", "modified")} <= kinds
    assert {("a/b/c/f2", "unstable"), ("x/f3", "unstable"), ("x/f5", "unstable")} <= kinds
    assert {j[0] for j in jobs if j[0].startswith("x/y/")} <= {p for p, _ in kinds}


@needs_ext
def test_deep_trees_in_any_order_are_read_beneath_the_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 40-level tree visited in random order: every file checked, results as pure Python's, no descriptor left."""
    d, rels = tmp_path, []
    for depth in range(40):
        d = d / f"d{depth % 3}"
        d.mkdir()
        for k in range(3):
            (d / f"f{k}").write_bytes(b"%d-%d" % (depth, k))
            rels.append(str((d / f"f{k}").relative_to(tmp_path)))
    jobs = [_job(tmp_path, r) for r in rels]
    random.Random(3).shuffle(jobs)
    bad = {5, 77}
    jobs = [(*j[:4], "0" * 64) if k in bad else j for k, j in enumerate(jobs)]
    before = len(os.listdir("/proc/self/fd"))
    fast, pure = _both(tmp_path, jobs, 2, monkeypatch)
    assert fast == pure and sorted(i for i, *_ in fast) == sorted(bad)
    assert len(os.listdir("/proc/self/fd")) == before


@needs_ext
def test_reader_refuses_a_buffer_too_small_and_use_after_close(tmp_path: Path) -> None:
    """A batch that does not fit the buffer is a ValueError, a closed reader a RuntimeError: never a bad read."""
    (tmp_path / "f").write_bytes(b"0123456789")
    jobs = [_job(tmp_path, "f")]
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        reader = speedups.new_reader(fd)
        with pytest.raises(ValueError, match="too small"):
            reader.read(jobs, [0], bytearray(10))  # 10 bytes + the one that notices growth
        buf = bytearray(11)
        assert reader.read(jobs, [0], buf) == [0] and buf[:10] == b"0123456789"
        reader.close()
        with pytest.raises(RuntimeError):
            reader.read(jobs, [0], buf)
    finally:
        os.close(fd)


@needs_ext
def test_reader_cannot_be_reinitialised_or_reentered_while_reading(tmp_path: Path) -> None:
    """Python code run during a read (the fault hook, a jobs sequence's __getitem__) cannot re-init or re-enter it."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d/f").write_bytes(b"0123456789")
    jobs = [_job(tmp_path, "d/f")]
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    refused: list[str] = []
    reader: Any = None
    ext = speedups._ext
    assert ext is not None, "needs_ext: the extension is loaded"

    def poke(what: str) -> None:
        try:
            if what == "init":
                reader.__init__(fd)
            else:
                reader.read(jobs, [0], bytearray(11))
        except RuntimeError:
            refused.append(what)

    def hook(stage: int, path: bytes) -> int:
        poke("init" if stage == ext.STAGE_FSTAT else "read")
        return 0

    class Jobs(list[FileCheck]):
        def __getitem__(self, i: Any) -> Any:
            poke("init")
            poke("read")
            return list.__getitem__(self, i)

    try:
        reader = ext.Reader(fd, hook)
        buf = bytearray(11)
        assert reader.read(jobs, [0], buf) == [0] and buf[:10] == b"0123456789"
        assert sorted(refused) == ["init", "read", "read"]  # open and read stages re-enter, fstat re-inits
        refused.clear()
        assert reader.read(Jobs(jobs), [0], buf) == [0]
        assert refused[:2] == ["init", "read"]
    finally:
        reader.close()
        os.close(fd)


@needs_ext
def test_verify_reports_are_identical_with_and_without(
    tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole verification of a damaged tree gives the same report through the C reader and without it."""
    root = tmp_path / "t"
    root.mkdir()
    _tricky_tree(root)
    s = build_and_sign(root, keys)
    (root / "a/f0").write_bytes(b"changed after the build")
    (root / "a/b/f7").chmod(0o700)
    fast = s.verify(workers=2)
    monkeypatch.setattr(speedups, "_ext", None)
    pure = s.verify(workers=2)
    assert fast.status == pure.status == "FAILED"
    assert fast.problems == pure.problems and fast.summary == pure.summary


def test_extension_compiles_warning_free(tmp_path: Path) -> None:
    """The C source compiles with -Werror (-Wall -Wextra) with the machine's compiler, and imports."""
    if not shutil.which("gcc") and not os.environ.get("CC"):
        pytest.skip("no C compiler")
    env = {**os.environ, "DURI_INTEGRITY_NO_EXTENSION": ""}
    code = "import sys, pathlib, hatch_build as h; print(h.compile_extension(pathlib.Path(sys.argv[1]), ('-Werror',)))"
    import subprocess

    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True)
    assert f"{tmp_path}/_speedups" in out.stdout, out.stdout + out.stderr
    load = "import importlib.util as u, sys; s = u.spec_from_file_location('duri_integrity._speedups', sys.argv[1]); "
    load += "m = u.module_from_spec(s); s.loader.exec_module(m); print(m.Reader)"
    got = subprocess.run([sys.executable, "-c", load, str(next(tmp_path.iterdir()))], capture_output=True, text=True)
    assert "Reader" in got.stdout, got.stderr


def test_no_compiler_means_no_extension_not_a_failed_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With CC=/bin/false (or a missing compiler) the hook reports why and builds nothing: a pure-Python wheel."""
    monkeypatch.delenv("DURI_INTEGRITY_NO_EXTENSION", raising=False)
    monkeypatch.setenv("CC", "/bin/false")
    out = tmp_path / "out"
    out.mkdir()
    built, why = hatch_build.compile_extension(out)
    assert built is None and "exited 1" in why and not list(out.iterdir())
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    assert hatch_build.compile_extension(tmp_path) == (None, f"no C compiler ({tmp_path / 'no-such-cc'})")


def test_switch_turns_the_extension_off(tmp_path: Path) -> None:
    """DURI_INTEGRITY_NO_EXTENSION=1 makes a fresh interpreter use the pure-Python path."""
    import subprocess

    code = "from duri_integrity import speedups; print(speedups.available())"
    env = {**os.environ, "DURI_INTEGRITY_NO_EXTENSION": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_pure_path_still_routes_every_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the extension, files on both sides of the size split are each checked once."""
    monkeypatch.setattr(speedups, "_ext", None)
    rels = []
    for k, size in enumerate([10, hashing.ROUTE - 1, hashing.ROUTE, hashing.ROUTE + 1, 3 << 20]):
        (tmp_path / f"f{k}").write_bytes(os.urandom(size))
        rels.append(f"f{k}")
    jobs = [_job(tmp_path, r) for r in rels]
    jobs[2] = (*jobs[2][:4], "0" * 64)
    assert [(i, k) for i, k, _, _ in check_files(str(tmp_path), jobs, workers=2)] == [(2, "modified")]


def _quick_tree(root: Path) -> None:
    """Nested directories, exclusions that match files and whole directories, links, odd names."""
    for d in ("app/pkg/deep", "app/__pycache__", "data", "logs"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for k in range(30):
        (root / "app/pkg" / f"m{k}.py").write_bytes(b"x = %d\n" % k * (k + 1))
    (root / "app/pkg/deep/leaf.txt").write_bytes(b"leaf")
    (root / "app/__pycache__/m.pyc").write_bytes(b"cache")
    (root / "logs/today.log").write_bytes(b"log")
    (root / "data/blob.bin").write_bytes(os.urandom(70_000))
    (root / "data/link").symlink_to("blob.bin")
    with open(os.fsencode(root / "data") + b"/caf\xe9", "wb") as f:
        f.write(b"latin-1")


def _damage(root: Path) -> None:
    (root / "app/pkg/m3.py").write_bytes(b"changed, other size")
    (root / "app/pkg/m4.py").chmod(0o600)
    (root / "app/pkg/m5.py").unlink()
    (root / "app/pkg/new.py").write_bytes(b"added")
    (root / "app/added-dir/sub").mkdir(parents=True)
    (root / "app/added-dir/sub/f").write_bytes(b"added too")
    (root / "data/link").unlink()
    (root / "data/link").symlink_to("/etc/passwd")
    (root / "app/__pycache__/other.pyc").write_bytes(b"excluded")
    (root / "logs/tomorrow.log").write_bytes(b"excluded")
    os.utime(root / "app/pkg/m6.py", ns=(10**18, 10**18))  # same size, new times: re-hashed, still fine
    data = bytearray((root / "app/pkg/m7.py").read_bytes())
    data[0] ^= 1
    (root / "app/pkg/m7.py").write_bytes(bytes(data))  # same size, new content: found by the hash


@needs_ext
@pytest.mark.parametrize("quick", [True, False])
def test_scanner_reports_exactly_what_the_python_walk_reports(
    tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch, quick: bool
) -> None:
    """Quick and full mode through the C scanner and through the Python walk: the same reports, clean and damaged."""
    root = tmp_path / "t"
    root.mkdir()
    _quick_tree(root)
    s = build_and_sign(root, keys, exclude=["__pycache__/", "*.log"])
    cache = tmp_path / "cache"
    runs: dict[str, list[Any]] = {"c": [], "py": []}
    ext = speedups._ext

    def run(label: str) -> None:
        monkeypatch.setattr(speedups, "_ext", ext if label == "c" else None)
        runs[label].append(s.verify(quick=quick, cache_dir=str(cache / label)))

    for label in ("c", "py", "c", "py"):  # the second of each uses the snapshot the first saved
        run(label)
    _damage(root)
    for label in ("c", "py"):
        run(label)
    for fast, pure in zip(runs["c"], runs["py"], strict=True):
        assert (fast.status, fast.mode, fast.summary, fast.counts) == (
            pure.status,
            pure.mode,
            pure.summary,
            pure.counts,
        )
        assert fast.problems == pure.problems
    assert [r.status for r in runs["c"]] == ["VERIFIED", "VERIFIED", "FAILED"]
    assert runs["c"][1].mode == ("quick" if quick else "full")
    assert runs["c"][2].counts["excluded"] == runs["c"][0].counts["excluded"] + 1  # not inside an excluded dir
    kinds = {(p.path, p.kind) for p in runs["c"][2].problems}
    assert {("app/pkg/m3.py", "modified"), ("app/pkg/m4.py", "mode_changed"), ("app/pkg/m5.py", "missing")} <= kinds
    assert {("app/pkg/m7.py", "modified"), ("data/link", "symlink_changed"), ("app/added-dir/sub/f", "added")} <= kinds


@needs_ext
@pytest.mark.parametrize("quick", [True, False])
def test_scanner_refuses_a_trust_anchor_in_the_tree(tmp_path: Path, keys: Keys, quick: bool) -> None:
    """A hard link to the public key inside the tree is refused through the scanner (it hands it over)."""
    root = tmp_path / "t"
    root.mkdir()
    _quick_tree(root)
    s = build_and_sign(root, keys)
    os.link(keys.public, root / "data" / "key.pub")
    r = s.verify(quick=quick, cache_dir=str(tmp_path / "cache"))
    assert r.status != "VERIFIED" and "trust anchors must come from outside" in (r.reason or "")


@pytest.mark.parametrize("fast", [True, False])
def test_reader_never_climbs_out_of_the_root(tmp_path: Path, fast: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A path with '..', '.' or an empty component (which manifest validation refuses) is never opened."""
    if fast and not speedups.available():
        pytest.skip("C extension not built or turned off")
    if not fast:
        monkeypatch.setattr(speedups, "_ext", None)
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (tmp_path / "outside").write_bytes(b"secret")
    st = (tmp_path / "outside").lstat()
    for rel in ("../outside", "d/../../outside", "./d/../../outside", "d//x"):
        job = (rel, st.st_ino, st.st_size, st.st_mode & 0o7777, blake3(b"secret").hexdigest())
        [(_, kind, _, why)] = check_files(str(root), [job], workers=1)
        assert kind == "unstable" and os.strerror(errno.EINVAL) in (why or ""), rel  # never opened, never hashed


@pytest.mark.parametrize("quick", [True, False])
@pytest.mark.parametrize("stage", ["entry", "list"])
def test_walk_out_of_descriptors_is_an_error_and_leaks_nothing(
    tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch, quick: bool, stage: str
) -> None:
    """EMFILE while the scanner lists or stats deep in the tree: ERROR (never a per-entry problem), no fd left open."""
    root = tmp_path / "t"
    root.mkdir()
    _quick_tree(root)
    s = build_and_sign(root, keys)
    where = {"entry": (speedups.STAGE_ENTRY, b"app/pkg/deep/leaf.txt"), "list": (speedups.STAGE_LIST, b"app/pkg/deep")}
    want_stage, want_path = where[stage]

    def hook(stage_now: int, path: bytes) -> int:
        return errno.EMFILE if (stage_now, path) == (want_stage, want_path) else 0

    monkeypatch.setattr(speedups, "FAULT_HOOK", hook)
    real_scandir = os.scandir

    def scandir(path: Any = ".") -> Any:  # the same fault for the Python walk (no extension)
        if stage == "list" and isinstance(path, int) and os.readlink(f"/proc/self/fd/{path}").endswith("app/pkg/deep"):
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    if stage == "entry" and not speedups.can_scan():
        pytest.skip("the Python walk's lstat is not hooked here (tests/test_compare.py covers it)")
    before = len(os.listdir("/proc/self/fd"))
    r = s.verify(quick=quick, cache_dir=str(tmp_path / "cache"))
    assert r.status == "ERROR" and "ran out of resources" in (r.reason or "") and not r.problems
    assert len(os.listdir("/proc/self/fd")) == before


@needs_ext
def test_scanner_enters_every_one_of_many_sibling_directories(tmp_path: Path, keys: Keys) -> None:
    """Many sibling subdirectories with names of varied length: each is entered once, under its own name."""
    root = tmp_path / "t"
    root.mkdir()
    names = [f"d{k}" + "x" * (k % 7) for k in range(1500)]
    for name in names:
        (root / name).mkdir()
        (root / name / "f").write_bytes(name.encode())
    s = build_and_sign(root, keys)
    cache = tmp_path / "cache"
    assert s.verify(quick=True, cache_dir=str(cache)).status == "VERIFIED"
    for name in names[1::500]:
        (root / name / "f").write_bytes(b"other content")
    (root / names[-1] / "added").write_bytes(b"new")
    report = s.verify(quick=True, cache_dir=str(cache))
    kinds = {(p.path, p.kind) for p in report.problems}
    assert kinds == {(f"{n}/f", "modified") for n in names[1::500]} | {(f"{names[-1]}/added", "added")}


def test_stage_numbers_match_the_extension() -> None:
    """The fault hook's stage numbers in speedups.py are the extension's own."""
    if not speedups.available():
        pytest.skip("needs the C extension")
    ext = importlib.import_module("duri_integrity._speedups")
    for name in ("STAGE_OPEN", "STAGE_FSTAT", "STAGE_READ", "STAGE_ENTRY", "STAGE_LIST", "STAGE_CTIME"):
        assert getattr(speedups, name) == getattr(ext, name), name


@pytest.mark.parametrize("exclude", [(), ("data/", "*.txt"), ("app/pkg/*",)])
def test_build_lists_the_same_tree_through_the_scanner_and_the_python_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exclude: tuple[str, ...]
) -> None:
    """build's walk through the C scanner gives the manifest the Python walk gives, byte for byte:
    nesting, non-UTF-8 names, links, exclusions and the tool's own files."""
    if not speedups.available():
        pytest.skip("needs the C extension")
    from datetime import UTC, datetime

    from duri_integrity.build import build_manifest

    root = make_tree(tmp_path / "tree", outside=tmp_path)
    (root / "MANIFEST.json").write_text("{}")  # the tool's own file: left out by both
    when = datetime(2026, 1, 1, tzinfo=UTC)

    def build() -> bytes:
        return build_manifest(str(root), deployment="svc", exclude=exclude, created=when, serial=1).data

    with_c = build()
    monkeypatch.setattr(speedups, "_ext", None)
    assert build() == with_c


_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _regex_finds(head: bytes, start: int = 0) -> int:
    from duri_integrity.keys import _find_key_line

    return _find_key_line(head, start)


def _key_line(rng: random.Random) -> bytes:
    """A random secret key's base64 line without its "=": "Ed", any two bytes, "B2", 152 more."""
    raw = b"Ed" + bytes(rng.randrange(256) for _ in range(2)) + b"B2" + bytes(rng.randrange(256) for _ in range(152))
    return base64.b64encode(raw)[:-1]


@needs_ext
def test_find_key_line_agrees_with_the_regular_expression_at_the_edges() -> None:
    """The extension's search finds a key line where keys._KEY_LINE does, from any start, in any buffer."""
    line = _key_line(random.Random(3))
    cases = [
        b"",
        line,
        line[:-1],
        b"x" + line,
        b"RW" + line,
        b"RWQAAEIy" * 600,  # every 8 characters the start of a key line
        b"RW" * 2048,
        b"R" * 300,
        line[:100] + b"!" + line,  # a broken run, then a whole line
        line[:100] + b"!" + line[:-1],
        b"RWQAAEIy" + b"A" * 202 + b"\x00" + line,  # one character short of a line, then one
        bytes(range(256)) * 16,
    ]
    find = speedups.find_key_line
    assert find is not None
    for head in cases:
        for start in (0, 1, 7, 8, 200, len(head), len(head) + 5, -3):
            assert find(head, start) == _regex_finds(head, max(start, 0)), (head[:24], start)
        assert find(bytearray(head), 0) == find(memoryview(head), 0) == _regex_finds(head)


@needs_ext
def test_find_key_line_agrees_with_the_regular_expression_on_random_heads() -> None:
    """Heads of "R", "W", the line's fixed characters, base64 and a few other bytes, with real lines
    planted whole or cut short: the same first match, from the start and from just after it."""
    rng = random.Random(11)
    alphabet = b"RRWWQEIyUk0" + _B64 + b"=\n\x00\xff"
    answers = {True: 0, False: 0}
    for _ in range(4_000):
        n = rng.choice((rng.randrange(0, 260), rng.randrange(200, 1200)))
        head = bytes(rng.choice(alphabet) if rng.random() < 0.5 else rng.choice(_B64) for _ in range(n))
        if rng.random() < 0.4:  # a key line, whole or cut short, somewhere
            at = rng.randrange(0, n + 1)
            head = head[:at] + _key_line(rng)[: rng.choice((211, 211, 210, 150))] + head[at:]
        first = _regex_finds(head)
        assert speedups.find_key_line is not None and speedups.find_key_line(head, 0) == first, head
        if first >= 0:
            assert speedups.find_key_line(head, first + 1) == _regex_finds(head, first + 1)
        answers[first >= 0] += 1
    assert min(answers.values()) > 500, answers


def test_the_key_line_pattern_is_exactly_the_lines_that_decode_to_a_key() -> None:
    """keys._KEY_LINE matches a 211-character line exactly when it and an "=" decode to a secret key's
    layout: every random key's line, and no line that differs from one in a fixed character."""
    from duri_integrity.keys import _is_key_line, _key_line_pattern

    rng = random.Random(5)
    for _ in range(2_000):
        line = _key_line(rng)
        assert _key_line_pattern().fullmatch(line) and _is_key_line(line + b"=")
        k = rng.randrange(211)
        other = line[:k] + bytes([rng.choice(_B64)]) + line[k + 1 :]
        assert bool(_key_line_pattern().fullmatch(other)) == _is_key_line(other + b"="), (k, other[:10])


def _chunky_tree(root: Path) -> None:
    """Directories holding around one, two and several of the scanner's chunks of 128 entries."""
    for count in (0, 1, 2, 127, 128, 129, 257, 600):
        d = root / f"d{count}"
        d.mkdir(parents=True)
        for k in range(count):
            p = d / f"e{k:04d}"
            if k % 50 == 7:
                p.mkdir()
                (p / "inner").write_bytes(b"i" * k)
            elif k % 50 == 9:
                p.symlink_to(f"e{k - 1:04d}")
            else:
                p.write_bytes(b"x" * k)  # each size its own: another entry's lstat would show
                p.chmod(0o600 + k % 64)


@needs_ext
@pytest.mark.parametrize("cpus", ["all", "one"])
def test_scanner_lstat_of_every_entry_is_its_own(tmp_path: Path, cpus: str) -> None:
    """Entries are lstat-ed a chunk at a time on two threads (one when the process may use one CPU): every
    entry of directories around the chunk size gets its own lstat, round after round."""
    from duri_integrity import scan

    root = tmp_path / "t"
    _chunky_tree(root)
    allowed = os.sched_getaffinity(0)
    if cpus == "one":
        os.sched_setaffinity(0, {min(allowed)})
    seen: dict[str, tuple[int, int, int]] = {}

    def found(rel: str, st: scan.Lstat, target: str | None) -> None:
        seen[rel] = (st.st_mode, st.st_ino, st.st_size)

    try:
        for _ in range(25):
            seen.clear()
            scan.listing(str(root), set(), None, found, lambda err: pytest.fail(str(err)))  # type: ignore[arg-type]
            expect = {}
            for p in root.rglob("*"):
                st = p.lstat()
                expect[str(p.relative_to(root))] = (st.st_mode, st.st_ino, st.st_size)
            assert seen == expect
    finally:
        os.sched_setaffinity(0, allowed)


@needs_ext
def test_quick_mode_over_chunk_sized_directories_matches_the_python_walk(
    tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Quick mode through the scanner's chunks and through the Python walk: the same reports, clean and
    after a change in the middle of a chunk, at a chunk's end and in the chunk after it."""
    root = tmp_path / "t"
    _chunky_tree(root)
    s = build_and_sign(root, keys)
    ext = speedups._ext
    reports: dict[str, list[Any]] = {"c": [], "py": []}
    for label in ("c", "py"):
        monkeypatch.setattr(speedups, "_ext", ext if label == "c" else None)
        reports[label].append(s.verify(quick=True, cache_dir=str(tmp_path / label)))
    for k in (60, 127, 128):
        (root / "d257" / f"e{k:04d}").write_bytes(b"y" * k)
    for label in ("c", "py"):
        monkeypatch.setattr(speedups, "_ext", ext if label == "c" else None)
        reports[label].append(s.verify(quick=True, cache_dir=str(tmp_path / label)))
    for fast, pure in zip(reports["c"], reports["py"], strict=True):
        assert (fast.status, fast.counts, fast.problems) == (pure.status, pure.counts, pure.problems)
    assert [r.status for r in reports["c"]] == ["VERIFIED", "FAILED"]
    assert {p.path for p in reports["c"][1].problems} == {f"d257/e{k:04d}" for k in (60, 127, 128)}


@needs_ext
def test_reader_refuses_a_path_with_a_nul_byte(tmp_path: Path) -> None:
    """A NUL byte would cut a path short at every system call: both reader calls refuse it."""
    (tmp_path / "a").write_bytes(b"x")
    root_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    reader = speedups.new_reader(root_fd)
    try:
        with pytest.raises(ValueError, match="NUL byte"):
            reader.read([("a\0b", 0, 1, 0o644, "")], [0], bytearray(2))
        with pytest.raises(ValueError, match="NUL byte"):
            reader.ctimes(["a", "a\0b"], 0, [0, 0])
        assert reader.ctimes(["a"], 0, [0])  # the reader is usable again
    finally:
        reader.close()
        os.close(root_fd)

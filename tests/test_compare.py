"""The comparison core: races become problems, counts are exact, the problem list is bounded."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from duri_integrity import speedups
from duri_integrity.build import build_manifest, sign_manifest, write_atomic
from duri_integrity.compare import compare
from duri_integrity.manifest import decode_manifest_keys
from duri_integrity.report import Problem, Tally, make_report
from duri_integrity.settle import start_mark

from .conftest import Keys, Signed, build_and_sign


def kinds(r: Any) -> set[tuple[str, str]]:
    return {(p.path, p.kind) for p in r.problems}


def _scandir_hook(
    monkeypatch: pytest.MonkeyPatch, on_entry: Any = None, fail_dir: str | None = None, root: Path | None = None
) -> None:
    """Wrap os.scandir for the walk: run ``on_entry(dirent)`` after each entry is read (the
    directory entry's type is fixed by then), or fail listing the directory named ``fail_dir``
    (the root when ``root`` is given). The same faults reach quick mode's C scanner by its hook."""
    real = os.scandir

    def hook(stage: int, path: bytes) -> int:
        rel = os.fsdecode(path)
        if stage == speedups.STAGE_ENTRY and on_entry is not None:
            on_entry(SimpleNamespace(name=rel.rpartition("/")[2]))
        listing = stage == speedups.STAGE_LIST and fail_dir is not None
        if listing and ((rel == "." and root is not None) or (root is None and ("/" + rel).endswith(f"/{fail_dir}"))):
            return errno.EACCES
        return 0

    monkeypatch.setattr(speedups, "FAULT_HOOK", hook)

    class Wrapped:
        def __init__(self, it: Any) -> None:
            self.it = it

        def __enter__(self) -> Wrapped:
            return self

        def __exit__(self, *a: object) -> None:
            self.it.close()

        def __iter__(self) -> Iterator[os.DirEntry[str]]:
            for dent in self.it:
                if on_entry is not None:
                    on_entry(dent)
                yield dent

    def scandir(path: Any = ".") -> Any:
        if isinstance(path, int) and fail_dir is not None and os.readlink(f"/proc/self/fd/{path}").endswith(fail_dir):
            raise PermissionError(errno.EACCES, "Permission denied")
        return Wrapped(real(path))

    monkeypatch.setattr(os, "scandir", scandir)


@pytest.mark.parametrize("quick", [False, True])
@pytest.mark.parametrize("same_content", [True, False])
def test_fifo_turning_into_a_file_after_listing_is_not_a_crash(
    signed: Signed, monkeypatch: pytest.MonkeyPatch, quick: bool, same_content: bool
) -> None:
    """A name listed as a FIFO and lstat-ed as a regular file is compared as what lstat saw, never an exception."""
    p = signed.root / "app" / "main.py"
    data = p.read_bytes()
    p.unlink()
    os.mkfifo(p)

    def flip(dent: os.DirEntry[str]) -> None:
        if dent.name == "main.py" and p.is_fifo():
            # Later than a clock tick after the start: certainly during the run. A change within
            # the start's tick cannot be placed, and the run is done again after it (settle.py),
            # which then rightly finds the released bytes.
            time.sleep(0.03)
            tmp = p.with_name("main.py.new")
            tmp.write_bytes(data if same_content else data.upper())
            tmp.chmod(0o644)
            tmp.rename(p)

    _scandir_hook(monkeypatch, flip)
    r = signed.verify(quick=quick)
    if same_content:
        # The released bytes, but a file created during the run: it changed while being checked,
        # and so did the directory it was renamed into.
        assert r.status == "FAILED" and kinds(r) == {("app/main.py", "unstable"), ("app", "unstable")}, r.problems
    else:
        assert r.status == "FAILED" and kinds(r) == {("app/main.py", "modified")}


@pytest.mark.parametrize("quick", [False, True])
def test_entry_gone_before_lstat_is_unstable_not_also_missing(
    signed: Signed, monkeypatch: pytest.MonkeyPatch, quick: bool
) -> None:
    """A name that vanishes between listing and lstat is one problem (unstable), not also 'missing'."""
    (signed.root / "app" / "main.py").unlink()
    os.mkfifo(signed.root / "app" / "main.py")

    def vanish(dent: os.DirEntry[str]) -> None:
        if dent.name == "main.py":
            (signed.root / "app" / "main.py").unlink()

    _scandir_hook(monkeypatch, vanish)
    r = signed.verify(quick=quick)
    assert r.status == "FAILED" and kinds(r) == {("app/main.py", "unstable")}


@pytest.mark.parametrize("quick", [False, True])
def test_unlistable_directory_contents_are_unreadable_not_missing(
    signed: Signed, monkeypatch: pytest.MonkeyPatch, quick: bool
) -> None:
    """Entries under a directory that cannot be listed are 'unreadable' (we do not know), never 'missing'."""
    _scandir_hook(monkeypatch, fail_dir="app/pkg")
    r = signed.verify(quick=quick)
    assert r.status == "FAILED"
    assert kinds(r) == {
        ("app/pkg", "unreadable"),
        ("app/pkg/mod.py", "unreadable"),
        ("app/pkg/deep", "unreadable"),
        ("app/pkg/deep/er", "unreadable"),
        ("app/pkg/deep/er/leaf.txt", "unreadable"),
    }
    assert r.counts["missing"] == 0 and r.counts["failed"] == 5


@pytest.mark.parametrize("quick", [False, True])
def test_unlistable_root_is_not_everything_missing(
    signed: Signed, monkeypatch: pytest.MonkeyPatch, quick: bool
) -> None:
    """If the root itself cannot be listed, every entry is 'unreadable', none 'missing', and N of M holds."""
    _scandir_hook(monkeypatch, fail_dir=signed.root.name, root=signed.root)
    r = signed.verify(quick=quick)
    assert r.status == "FAILED" and r.counts["missing"] == 0
    assert r.counts["unreadable"] == r.counts["entries"] + 1  # the root, then everything in the manifest
    assert r.counts["failed"] == r.counts["total"] == r.counts["entries"] + 1


def test_summary_counts_files_as_files(signed: Signed) -> None:
    """'N files verified' counts regular files; directories and symlinks are counted separately."""
    files = dirs = links = 0
    for dirpath, dnames, fnames in os.walk(signed.root):
        for n in dnames + fnames:
            p = os.path.join(dirpath, n)
            if os.path.islink(p):
                links += 1
            elif os.path.isdir(p):
                dirs += 1
            elif dirpath != str(signed.root) or n not in ("MANIFEST.json", "MANIFEST.json.minisig"):
                files += 1
    r = signed.verify()
    assert r.status == "VERIFIED"
    assert r.summary == f"{files:,} files verified"
    c = r.counts
    assert (c["files"], c["directories"], c["symlinks"], c["other"]) == (files, dirs, links, 0)
    assert c["checked"] == c["entries"] == files + dirs + links == c["total"]


def test_n_of_m_never_has_n_above_m(tmp_path: Path, keys: Keys) -> None:
    """Added entries count in the total: ten added to a four-file tree is '10 of 14 entries failed'."""
    root = tmp_path / "small"
    root.mkdir()
    for i in range(4):
        (root / f"f{i}").write_text(str(i))
    s = build_and_sign(root, keys)
    for i in range(10):
        (root / f"new{i}").write_text("x")
    r = s.verify()
    assert r.summary == "10 of 14 entries failed: 10 added"
    assert (r.counts["failed"], r.counts["total"], r.counts["added"]) == (10, 14, 10)


def test_one_path_with_two_problems_counts_once(signed: Signed) -> None:
    """A file both chmod-ed and rewritten is two problems but one failed entry."""
    p = signed.root / "bin" / "run"
    p.write_text("#!/bin/sh\necho pwned\n")
    p.chmod(0o777)
    r = signed.verify()
    assert kinds(r) == {("bin/run", "mode_changed"), ("bin/run", "modified")}
    assert r.counts["problems"] == 2 and r.counts["failed"] == 1
    assert r.summary.startswith(f"1 of {r.counts['total']:,} entries failed:")


def test_excluded_entries_are_counted(signed: Signed) -> None:
    """counts['excluded'] is what the exclusion patterns left out: an excluded directory once, not its contents."""
    cache = signed.root / "app" / "__pycache__"
    cache.mkdir()
    for i in range(5):
        (cache / f"m{i}.pyc").write_bytes(b"x")
    (signed.root / "app" / "stray.pyc").write_bytes(b"x")
    r = signed.verify()
    assert r.status == "VERIFIED" and r.counts["excluded"] == 2


def _compare_args(s: Signed) -> tuple[Any, list[str], str]:
    m, keys = decode_manifest_keys(s.manifest.read_bytes())
    return m, keys, os.path.realpath(s.root)


def test_problem_list_is_bounded_counts_stay_exact(signed: Signed) -> None:
    """With a cap, the first N problems in path order are kept, counts are exact, the list says it is truncated."""
    for i in range(57):
        (signed.root / "data" / f"added-{i:03d}").write_text("x")
    m, keys, root = _compare_args(signed)
    skip = {"MANIFEST.json", "MANIFEST.json.minisig"}
    capped = compare(m, keys, root, skip, 1, None, False, max_problems=10, root_path=root, started=start_mark())
    full = compare(m, keys, root, skip, 1, None, False, max_problems=None, root_path=root, started=start_mark())
    assert len(full.problems) == 57 and not full.tally.truncated
    assert full.problems == sorted(full.problems, key=lambda p: (p.path, p.kind))
    assert capped.problems == full.problems[:10] and capped.tally.truncated
    assert capped.tally.problems == capped.tally.by_kind["added"] == capped.tally.failed == 57
    r = make_report(status="FAILED", root=".", problems=capped.problems, tally=capped.tally)
    assert r.problems_truncated and r.counts["problems"] == 57 and len(r.problems) == 10
    with pytest.raises(ValueError, match="max_problems"):
        compare(m, keys, root, skip, 1, None, False, max_problems=0, root_path=root, started=start_mark())


def test_verified_with_problems_is_a_programming_error() -> None:
    """make_report raises for VERIFIED with problems (listed or only counted) instead of rewriting the verdict."""
    t = Tally()
    t.problems, t.failed, t.total = 1, 1, 1
    with pytest.raises(ValueError, match="VERIFIED"):
        make_report(status="VERIFIED", root=".", problems=[Problem(path="a", kind="added")], tally=t)
    with pytest.raises(ValueError, match="VERIFIED"):
        make_report(status="VERIFIED", root=".", tally=t)
    with pytest.raises(ValueError, match="FAILED"):
        make_report(status="FAILED", root=".")


def _signed_elsewhere(tmp_path: Path, keys: Keys) -> tuple[Path, Path]:
    root = tmp_path / "rel"
    (root / "app").mkdir(parents=True)
    (root / "app" / "x.py").write_text("x = 1\n")
    manifest = tmp_path / "elsewhere" / "MANIFEST.json"
    manifest.parent.mkdir()
    write_atomic(str(manifest), build_manifest(str(root), deployment="svc", release="v1").data)
    sign_manifest(str(manifest), str(keys.secret))
    return root, manifest


def _verify_elsewhere(root: Path, manifest: Path, keys: Keys) -> Any:
    from duri_integrity import verify_integrity

    return verify_integrity(root, manifest=manifest, public_keys=[str(keys.public)], use_config_file=False)


def test_own_file_names_are_skipped_only_as_regular_files(tmp_path: Path, keys: Keys) -> None:
    """With the manifest elsewhere, MANIFEST.json names are skipped as files but reported as anything else."""
    root, manifest = _signed_elsewhere(tmp_path, keys)
    (root / "MANIFEST.json").write_text("{}")
    (root / "MANIFEST.json.minisig").write_text("stale")
    assert _verify_elsewhere(root, manifest, keys).status == "VERIFIED"
    (root / "MANIFEST.json").unlink()
    (root / "MANIFEST.json").mkdir()
    (root / "MANIFEST.json" / "payload.so").write_bytes(b"\x7fELF")
    (root / "MANIFEST.json.minisig").unlink()
    (root / "MANIFEST.json.minisig").symlink_to("/etc/passwd")
    r = _verify_elsewhere(root, manifest, keys)
    assert r.status == "FAILED"
    assert kinds(r) == {
        ("MANIFEST.json", "added"),
        ("MANIFEST.json/payload.so", "added"),
        ("MANIFEST.json.minisig", "added"),
    }

"""verify.py and compare.py, rule by rule: the counts of a failed run, quick mode's record of
checked files, reason codes, notes, argument checks, and walk errors (both walks).

Each test pins one behaviour a mutant of verify.py or compare.py would change (see
docs/mutation.md). Trees are real files on disk; faults are injected in-process (the C
scanner's fault hook, or ``os`` functions wrapped for the pure-Python walk); the public
entry points (``verify_integrity``, ``ensure_integrity``, ``compare``) are what is called.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from duri_integrity import compare as compare_mod
from duri_integrity import settle, speedups
from duri_integrity import snapshot as snapshot_mod
from duri_integrity.compare import compare
from duri_integrity.config import Settings
from duri_integrity.errors import ConfigError, IntegrityError, KeyFileError, NotVerifiedError, TreeError
from duri_integrity.manifest import decode_manifest_keys
from duri_integrity.report import Report
from duri_integrity.settle import Mark
from duri_integrity.verify import Run, ensure_integrity, verify_integrity, verify_settings

from .conftest import Keys, Signed, build_and_sign, past_the_start

Hook = Callable[[int, bytes], int]


@pytest.fixture(params=["scanner", "python"])
def walker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with the C scanner (when built) and with the pure-Python walk and hasher."""
    if request.param == "python":
        # What DURI_INTEGRITY_NO_EXTENSION=1 does at import: no extension module.
        monkeypatch.setattr(speedups, "_ext", None)
    return str(request.param)


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files the test just wrote count as settled for quick mode (no racy window)."""
    monkeypatch.setattr(snapshot_mod, "RACY_NS", 0)


def small_tree(root: Path) -> Path:
    """a.txt b.txt c.txt, d/ with e.txt f.txt, a symlink, a FIFO: one of each kind."""
    root.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (root / name).write_text(f"content of {name}\n")
    (root / "d").mkdir()
    (root / "d" / "e.txt").write_text("e\n")
    (root / "d" / "f.txt").write_text("f\n")
    (root / "link").symlink_to("a.txt")
    os.mkfifo(root / "fifo")
    return root


@pytest.fixture
def small(tmp_path: Path, keys: Keys) -> Signed:
    return build_and_sign(small_tree(tmp_path / "small"), keys, release="v1")


def run(s: Signed, **kw: Any) -> Report:
    kw.setdefault("public_keys", [str(s.keys.public)])
    kw.setdefault("use_config_file", False)
    return verify_integrity(s.root, **kw)


def problems(r: Report) -> set[tuple[str, str]]:
    return {(p.path, p.kind) for p in r.problems}


def fail_listing(monkeypatch: pytest.MonkeyPatch, root: Path, rel: str) -> None:
    """Listing the directory ``rel`` ("." for the root) fails with EACCES, in both walks."""
    real_scandir = os.scandir
    target = os.path.realpath(root / rel)

    def hook(stage: int, path: bytes) -> int:
        return errno.EACCES if stage == speedups.STAGE_LIST and os.fsdecode(path) == rel else 0

    monkeypatch.setattr(speedups, "FAULT_HOOK", hook)

    def scandir(fd: Any = ".") -> Any:
        # The Python walk lists each directory by its descriptor.
        if isinstance(fd, int) and os.readlink(f"/proc/self/fd/{fd}") == target:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real_scandir(fd)

    monkeypatch.setattr(os, "scandir", scandir)


# -- counts of a FAILED run ---------------------------------------------------------------------


def test_counts_of_a_failed_run_are_exact(small: Signed, walker: str) -> None:
    """A FAILED run counts what was found as expected, what was added, missing and hashed, exactly."""
    (small.root / "a.txt").write_text("CONTENT of a.txt\n")  # same size, other bytes
    (small.root / "d" / "e.txt").unlink()
    (small.root / "d" / "f.txt").unlink()  # two missing entries side by side in the manifest
    (small.root / "new.txt").write_text("added\n")
    r = run(small)
    assert r.status == "FAILED" and r.reason_code == "tree_differs"
    assert problems(r) == {("a.txt", "modified"), ("d/e.txt", "missing"), ("d/f.txt", "missing"), ("new.txt", "added")}
    c = r.counts
    assert (c["files"], c["directories"], c["symlinks"], c["other"]) == (3, 1, 1, 1)
    assert c["checked"] == 6  # found with the expected type; the added file is not among them
    assert (c["added"], c["missing"], c["modified"], c["problems"], c["failed"]) == (1, 2, 1, 4, 4)
    assert c["total"] == c["entries"] + 1  # the manifest's entries and the one path it does not list
    assert c["hashed"] == 3
    assert r.summary == f"4 of {c['total']} entries failed: 1 modified, 2 missing, 1 added"


def test_counts_of_a_verified_run(small: Signed, walker: str) -> None:
    """A VERIFIED run counts every entry by kind, hashes every file and has no problem."""
    r = run(small)
    assert r.status == "VERIFIED" and r.reason_code is None and r.reason is None
    c = r.counts
    assert (c["checked"], c["files"], c["directories"], c["symlinks"], c["other"]) == (8, 5, 1, 1, 1)
    assert (c["hashed"], c["problems"], c["failed"], c["added"]) == (5, 0, 0, 0)
    assert c["total"] == c["entries"]
    assert r.summary == "5 files verified"


def test_one_path_with_two_problems_fails_once(small: Signed, walker: str) -> None:
    """A directory with a changed mode and a missing file inside: each path is counted once as failed."""
    (small.root / "d").chmod(0o700)
    (small.root / "d" / "e.txt").unlink()
    (small.root / "a.txt").chmod(0o600)
    (small.root / "a.txt").write_text("CONTENT of a.txt\n")
    r = run(small)
    assert problems(r) == {
        ("d", "mode_changed"),
        ("d/e.txt", "missing"),
        ("a.txt", "mode_changed"),
        ("a.txt", "modified"),
    }
    assert (r.counts["problems"], r.counts["failed"], r.counts["mode_changed"]) == (4, 3, 2)
    [d] = [p for p in r.problems if p.path == "d"]
    assert (d.expected, d.actual) == ("0755", "0700")


def test_added_directory_counts_once_with_its_contents(small: Signed, walker: str) -> None:
    """An added directory and the file in it are two added paths, each counted in the total."""
    (small.root / "extra").mkdir()
    (small.root / "extra" / "x").write_text("x")
    r = run(small)
    assert problems(r) == {("extra", "added"), ("extra/x", "added")}
    [x] = [p for p in r.problems if p.path == "extra/x"]
    assert x.actual == "file" and x.expected is None
    assert (r.counts["added"], r.counts["failed"], r.counts["total"]) == (2, 2, r.counts["entries"] + 2)


def test_type_changed_counts_no_file(small: Signed, walker: str) -> None:
    """A file replaced by a directory is type_changed (expected and actual named) and not counted a file."""
    (small.root / "b.txt").unlink()
    (small.root / "b.txt").mkdir()
    r = run(small)
    [p] = r.problems
    assert (p.path, p.kind, p.expected, p.actual) == ("b.txt", "type_changed", "file", "dir")
    assert (r.counts["files"], r.counts["directories"], r.counts["checked"]) == (4, 1, 7)


def test_max_problems_of_one_lists_the_first(small: Signed, walker: str) -> None:
    """max_problems=1 keeps the first problem in path order and says the list is truncated."""
    for name in ("a.txt", "b.txt", "c.txt"):
        (small.root / name).unlink()
    r = run(small, max_problems=1)
    assert [(p.path, p.kind) for p in r.problems] == [("a.txt", "missing")]
    assert r.problems_truncated and r.counts["missing"] == 3


# -- walk errors: cannot list ------------------------------------------------------------------


def test_unlistable_directory_contents_are_unreadable(
    small: Signed, walker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries under a directory that cannot be listed are unreadable, not missing; the directory counts once."""
    fail_listing(monkeypatch, small.root, "d")
    r = run(small)
    assert problems(r) == {("d", "unreadable"), ("d/e.txt", "unreadable"), ("d/f.txt", "unreadable")}
    [d] = [p for p in r.problems if p.path == "d"]
    assert d.actual is not None and d.actual.startswith("cannot list directory")
    # Each entry says which directory hid it (an operator fixes that one, not the entry).
    assert {p.actual for p in r.problems if p.path != "d"} == {"in d, which could not be read"}
    assert r.counts["failed"] == 3 and r.counts["total"] == r.counts["entries"]


def test_unlistable_root_counts_itself(small: Signed, walker: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A root that cannot be listed is one failed path of its own, and every entry is unreadable."""
    fail_listing(monkeypatch, small.root, ".")
    r = run(small)
    assert r.status == "FAILED"
    kinds = {k for _, k in problems(r)}
    assert kinds == {"unreadable"} and (".", "unreadable") in problems(r)
    assert {p.actual for p in r.problems if "/" not in p.path and p.path != "."} == {"in ., which could not be read"}
    n = r.counts["entries"]
    assert r.counts["failed"] == r.counts["total"] == n + 1


def test_quick_mode_reports_unlistable_directories(
    small: Signed, walker: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Quick mode reports a directory it cannot list, and its entries as unreadable (never missing)."""
    fail_listing(monkeypatch, small.root, "d")
    r = run(small, quick=True, cache_dir=str(tmp_path / "cache"))
    assert problems(r) == {("d", "unreadable"), ("d/e.txt", "unreadable"), ("d/f.txt", "unreadable")}


# -- quick mode -----------------------------------------------------------------------------------


def test_failed_file_is_never_skipped_by_a_later_quick_run(small: Signed, tmp_path: Path, settled: None) -> None:
    """After a quick run found a file modified (size and mtime kept), the next quick runs still hash and fail it."""
    cache = str(tmp_path / "cache")
    assert run(small, quick=True, cache_dir=cache).status == "VERIFIED"
    p = small.root / "a.txt"
    st = p.stat()
    p.write_text("CONTENT of a.txt\n")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    for _ in range(2):
        r = run(small, quick=True, cache_dir=cache)
        assert r.status == "FAILED" and problems(r) == {("a.txt", "modified")}
        assert r.mode == "quick" and r.counts["hashed"] == 1
    p.write_text("content of a.txt\n")  # put back: verified again, by hashing it
    r = run(small, quick=True, cache_dir=cache)
    assert r.status == "VERIFIED" and r.counts["hashed"] == 1


def test_quick_run_after_a_failed_first_run_still_fails(small: Signed, tmp_path: Path, settled: None) -> None:
    """A FAILED quick run saves no snapshot, so the next quick run hashes everything again."""
    cache = tmp_path / "cache"
    (small.root / "b.txt").write_text("CONTENT of b.txt\n")
    r = run(small, quick=True, cache_dir=str(cache))
    assert r.status == "FAILED" and not list(cache.glob("snapshot-*"))
    r = run(small, quick=True, cache_dir=str(cache))
    assert r.status == "FAILED" and r.counts["hashed"] == r.counts["files"] == 5


def test_quick_size_change_is_modified_without_hashing(small: Signed, tmp_path: Path, walker: str) -> None:
    """Quick mode reports a file whose size changed from its lstat and does not read it."""
    (small.root / "c.txt").write_text("longer content of c.txt\n")
    r = run(small, quick=True, cache_dir=str(tmp_path / "cache"))
    [p] = r.problems
    assert (p.path, p.kind, p.expected, p.actual) == ("c.txt", "modified", "size 17", "size 24")
    assert r.counts["hashed"] == 4 and r.counts["files"] == 5


def test_quick_mode_checks_modes_once(small: Signed, tmp_path: Path, walker: str, settled: None) -> None:
    """Quick mode hashes a file whose mode changed and reports the mode change once, nothing else."""
    cache = str(tmp_path / "cache")
    first = run(small, quick=True, cache_dir=cache)
    assert first.status == "VERIFIED" and first.counts["hashed"] == 5
    assert run(small, quick=True, cache_dir=cache).counts["hashed"] == 0
    (small.root / "b.txt").chmod(0o600)
    r = run(small, quick=True, cache_dir=cache)
    assert [(p.path, p.kind, p.expected, p.actual) for p in r.problems] == [("b.txt", "mode_changed", "0644", "0600")]


def test_quick_is_off_by_default(small: Signed, tmp_path: Path) -> None:
    """Without quick=True no snapshot is read or written: a full run."""
    cache = tmp_path / "cache"
    r = run(small, cache_dir=str(cache))
    assert r.mode == "full" and r.notes == [] and not cache.exists()


# -- changes during the run ---------------------------------------------------------------------


def test_files_changed_after_hashing_are_unstable(small: Signed, walker: str) -> None:
    """Every file changed after it was hashed (during the run) is unstable: the verdict is about one moment."""
    files = [small.root / n for n in ("a.txt", "b.txt", "c.txt", "d/e.txt", "d/f.txt")]
    calls: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        calls.append((done, total))
        if done == total:
            past_the_start(small.root.parent / "probe")
            for f in files:
                f.chmod(0o644)  # same mode: only the ctime moves

    r = run(small, progress=progress)
    assert calls[-1] == (5, 5)
    assert r.status == "FAILED"
    assert problems(r) == {(str(f.relative_to(small.root)), "unstable") for f in files}
    assert {p.actual for p in r.problems} == {"changed during the check"}


def test_files_removed_after_hashing_are_all_unstable(small: Signed, walker: str) -> None:
    """Every file removed after it was hashed is unstable, not only the first one re-checked."""
    files = [small.root / n for n in ("a.txt", "b.txt", "c.txt", "d/e.txt", "d/f.txt")]

    def progress(done: int, total: int) -> None:
        if done == total:
            past_the_start(small.root.parent / "probe")  # the directories' new stamps: certainly later
            for f in files:
                f.unlink()

    r = run(small, progress=progress)
    gone = {(str(f.relative_to(small.root)), "unstable") for f in files}
    # The directories that held them changed too (an entry removed): the root and d.
    assert problems(r) == gone | {(".", "unstable"), ("d", "unstable")}
    for p in r.problems:
        why = "changed during the check" if p.path in (".", "d") else "replaced or removed during the check"
        assert (p.actual or "").startswith(why), p


# -- reason codes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (KeyFileError("k"), "key_error"),
        (TreeError("t"), "tree_error"),
        (ConfigError("c"), "config_error"),
        (IntegrityError("i"), "error"),
    ],
)
def test_error_raised_while_hashing_has_its_reason_code(small: Signed, exc: Exception, code: str) -> None:
    """An IntegrityError raised during the check (here by the progress callback) is an ERROR with its code."""

    def progress(done: int, total: int) -> None:
        raise exc

    r = run(small, progress=progress)
    assert (r.status, r.reason_code, r.reason) == ("ERROR", code, str(exc))
    assert r.recommendation == "rollback_unverifiable" and not r


def test_os_error_during_the_check_is_an_error_naming_the_file(small: Signed) -> None:
    """An OSError nobody below turned into a message is ERROR os_error with its text and file name."""

    def progress(done: int, total: int) -> None:
        raise OSError(errno.EIO, "Input/output error", "some/file")

    r = run(small, progress=progress)
    assert (r.status, r.reason_code, r.reason) == ("ERROR", "os_error", "Input/output error 'some/file'")


def test_real_error_codes(small: Signed, tmp_path: Path) -> None:
    """A malformed trusted key is key_error, a missing root tree_error, a bad config file config_error."""
    bad_key = tmp_path / "bad.pub"
    bad_key.write_text("not a key\n")
    r = run(small, public_keys=[str(bad_key)])
    assert (r.status, r.reason_code) == ("ERROR", "key_error")
    r = verify_integrity(tmp_path / "nope", public_keys=[str(small.keys.public)], use_config_file=False)
    assert (r.status, r.reason_code, r.root) == ("ERROR", "tree_error", str(tmp_path / "nope"))
    cfg = tmp_path / "bad.toml"
    cfg.write_text("workers = [\n")
    r = run(small, config_file=str(cfg))
    assert (r.status, r.reason_code, r.root) == ("ERROR", "config_error", str(small.root))


def test_config_error_without_root_reports_the_cwd(
    small: Signed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no root given, a report for a configuration error names "." (the working directory)."""
    monkeypatch.setenv("DURI_INTEGRITY_CONFIG", str(tmp_path / "missing.toml"))
    r = verify_integrity(public_keys=[str(small.keys.public)])
    assert (r.status, r.reason_code, r.root) == ("ERROR", "config_error", ".")


def test_no_root_verifies_the_working_directory(small: Signed, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no root anywhere, the working directory is verified and the report says "."."""
    monkeypatch.chdir(small.root)
    r = verify_integrity(public_keys=[str(small.keys.public)], use_config_file=False)
    assert (r.status, r.root) == ("VERIFIED", ".")


# -- configuration and trust notes ------------------------------------------------------------------


def test_system_config_file_is_used_by_default(small: Signed, tmp_path: Path) -> None:
    """By default the system config file is read: its settings apply and the report names it."""
    etc = Path(os.environ["DURI_INTEGRITY_SYSTEM_DIR"])
    etc.mkdir(parents=True)
    cfg = etc / "config.toml"
    cfg.write_text(f"public_key = {str(small.keys.public)!r}\n")
    r = verify_integrity(small.root)  # the trusted key comes from the config file alone
    assert r.status == "VERIFIED" and r.config_file == str(cfg)


def test_config_file_inside_the_tree_is_refused(small: Signed) -> None:
    """A config file inside the tree it would configure makes the run UNTRUSTED (trust_anchor_in_tree)."""
    cfg = small.root / "conf.toml"
    cfg.write_text("workers = 2\n")
    r = run(small, config_file=str(cfg))
    assert (r.status, r.reason_code) == ("UNTRUSTED", "trust_anchor_in_tree")
    assert r.recommendation == "rollback_untrusted"


def test_config_file_inside_the_tree_is_refused_even_when_excluded(tmp_path: Path, keys: Keys) -> None:
    """A config file in the tree is refused by its path, even where the manifest excludes it from the walk."""
    s = build_and_sign(small_tree(tmp_path / "ex"), keys, release="v1", exclude=["*.toml"])
    cfg = s.root / "d" / "conf.toml"
    cfg.write_text("workers = 2\n")
    r = run(s, config_file=str(cfg))
    assert (r.status, r.reason_code) == ("UNTRUSTED", "trust_anchor_in_tree")
    assert str(cfg) in (r.reason or "")


def test_config_file_hard_linked_into_the_tree_is_refused(small: Signed, tmp_path: Path, walker: str) -> None:
    """A config file outside the tree, hard-linked into it, is found by inode and refused."""
    cfg = tmp_path / "conf.toml"
    cfg.write_text("workers = 2\n")
    os.link(cfg, small.root / "d" / "conf-link.toml")
    r = run(small, config_file=str(cfg))
    assert (r.status, r.reason_code) == ("UNTRUSTED", "trust_anchor_in_tree")


def test_trusted_key_hard_linked_into_the_tree_is_refused(small: Signed, walker: str) -> None:
    """A trusted public key hard-linked into the tree is refused, in either walk."""
    os.link(small.keys.public, small.root / "key-link.pub")
    r = run(small)
    assert (r.status, r.reason_code) == ("UNTRUSTED", "trust_anchor_in_tree")


def test_approved_rollback_note_is_in_the_report(tree: Path, keys: Keys, tmp_path: Path) -> None:
    """The trust pipeline's note about an approved rollback reaches the report."""
    store = tmp_path / "releases"
    store.mkdir()
    s2 = build_and_sign(tree, keys, release="v2", serial=200)
    shutil.copy(s2.manifest, store / "v2.json")
    shutil.copy(s2.signature, store / "v2.json.minisig")
    s1 = build_and_sign(tree, keys, release="v1", serial=100)
    state = str(tmp_path / "state")
    pub = [str(keys.public)]
    r2 = verify_integrity(tree, manifest=store / "v2.json", public_keys=pub, state_dir=state, use_config_file=False)
    assert r2.status == "VERIFIED", r2.summary
    r1 = verify_integrity(tree, manifest=s1.manifest, public_keys=pub, state_dir=state, use_config_file=False)
    assert (r1.status, r1.reason_code) == ("UNTRUSTED", "rollback_refused")
    r1 = verify_integrity(
        tree, manifest=s1.manifest, public_keys=pub, state_dir=state, use_config_file=False, allow_rollback_to="v1@100"
    )
    assert r1.status == "VERIFIED", r1.summary
    assert any("rollback to release 'v1' (serial 100) approved" in n for n in r1.notes)


def test_state_dir_none_says_rollback_protection_is_off(small: Signed) -> None:
    """state_dir="none" verifies and notes that rollback protection is off."""
    r = run(small, state_dir="none")
    assert r.status == "VERIFIED" and r.notes == ["rollback protection is off (state directory set to none)"]


# -- arguments ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 256])
def test_workers_bounds_are_accepted(small: Signed, workers: int) -> None:
    """workers=1 and workers=256 are both valid."""
    assert run(small, workers=workers).status == "VERIFIED"


@pytest.mark.parametrize("bad", [0, 257, "3", 2.5, -1])
def test_bad_workers_raise_value_error(small: Signed, bad: object) -> None:
    """workers outside 1..256 or not an integer is the caller's bug: ValueError."""
    with pytest.raises(ValueError, match="workers"):
        run(small, workers=bad)


@pytest.mark.parametrize("bad", [0, -3, "3", 2.5])
def test_bad_max_problems_raise_value_error(small: Signed, bad: object) -> None:
    """max_problems that is not a positive integer is a ValueError, before anything is read."""
    with pytest.raises(ValueError, match="max_problems must be a positive integer or None"):
        run(small, max_problems=bad)


def test_max_problems_none_lists_everything(small: Signed) -> None:
    """max_problems=None is valid and lists every problem."""
    for name in ("a.txt", "b.txt", "c.txt"):
        (small.root / name).unlink()
    r = run(small, max_problems=None)
    assert len(r.problems) == 3 and not r.problems_truncated


@pytest.mark.parametrize(
    "kw", [{"deployment": 5}, {"state_dir": 3.5}, {"root_kw": ["x"]}, {"clock_skew": "a"}, {"manifest": 7}]
)
def test_wrongly_typed_arguments_raise_value_error(small: Signed, kw: dict[str, Any]) -> None:
    """An argument of the wrong type is a ValueError, never a report or another exception."""
    if "root_kw" in kw:
        with pytest.raises(ValueError, match="invalid argument"):
            verify_integrity(kw["root_kw"], public_keys=[str(small.keys.public)], use_config_file=False)
        return
    with pytest.raises(ValueError, match="invalid argument"):
        run(small, **kw)


def test_checked_at_is_utc_seconds_with_z(small: Signed) -> None:
    """checked_at is an ISO 8601 UTC time to the second, ending in Z."""
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", run(small).checked_at)


def test_every_report_is_logged(small: Signed, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    """Each finished verification is logged once with its status, VERIFIED or not."""
    with caplog.at_level(logging.INFO, logger="duri_integrity"):
        run(small)
        verify_integrity(tmp_path / "nope", use_config_file=False)
    statuses = [getattr(rec, "status", None) for rec in caplog.records]
    assert statuses == ["VERIFIED", "ERROR"]


def test_ensure_integrity_returns_the_verified_report(small: Signed) -> None:
    """ensure_integrity returns the report of a verified tree and raises NotVerifiedError otherwise."""
    r = ensure_integrity(small.root, public_keys=[str(small.keys.public)], use_config_file=False)
    assert isinstance(r, Report) and r.status == "VERIFIED"
    (small.root / "a.txt").unlink()
    with pytest.raises(NotVerifiedError) as info:
        ensure_integrity(small.root, public_keys=[str(small.keys.public)], use_config_file=False)
    assert str(info.value).startswith("FAILED: ")


def test_same_manifest_verified_twice_in_one_process(small: Signed, walker: str) -> None:
    """Verifying the same manifest again in the same process gives the same answer (nothing stale reused)."""
    first, second = run(small), run(small)
    assert first.status == second.status == "VERIFIED"
    assert first.counts == second.counts
    (small.root / "b.txt").write_text("CONTENT of b.txt\n")
    assert problems(run(small)) == {("b.txt", "modified")}


def test_verify_settings_defaults_are_a_full_recorded_run(small: Signed, tmp_path: Path) -> None:
    """verify_settings (as doctor calls it) runs in full mode and, by default, records the rollback mark."""
    state, cache = tmp_path / "vs-state", tmp_path / "vs-cache"
    settings = Settings(
        root=str(small.root),
        public_key=[str(small.keys.public)],
        deployment="svc",
        state_dir=str(state),
        cache_dir=str(cache),
    )
    r = verify_settings(settings, Run(str(small.root), time.perf_counter(), ""))
    assert (r.status, r.mode, r.notes) == ("VERIFIED", "full", [])
    assert not cache.exists()  # no quick-mode snapshot read or written
    assert len(list(state.glob("rollback-*.json"))) == 1


def test_snapshot_that_cannot_be_saved_is_a_note(small: Signed, tmp_path: Path) -> None:
    """Quick mode with a cache directory others may write verifies, and notes the snapshot was not saved."""
    cache = tmp_path / "shared-cache"
    cache.mkdir()
    cache.chmod(0o777)
    r = run(small, quick=True, cache_dir=str(cache))
    assert r.status == "VERIFIED"
    assert any(n.startswith("snapshot not saved: ") for n in r.notes), r.notes
    assert not list(cache.iterdir())


def _compare_from(small: Signed, monkeypatch: pytest.MonkeyPatch, fine: int, coarse: int) -> tuple[Any, list[Mark]]:
    """compare() with its start taken as (fine, coarse) on both clocks; the marks its checks used."""
    m, keys = decode_manifest_keys(small.manifest.read_bytes())
    used: list[Mark] = []
    real_changed_since = settle.changed_since

    def changed_since(root: str, mark: Mark, *rest: Any, **kw: Any) -> tuple[list[tuple[int, str]], bool]:
        used.append(mark)
        return real_changed_since(root, mark, *rest, **kw)

    monkeypatch.setattr(settle, "start_mark", lambda: Mark(fine, coarse))
    monkeypatch.setattr(compare_mod, "changed_since", changed_since)
    root = os.path.realpath(small.root)
    return compare(m, keys, root, set(), 1, None, False, root_path=str(small.root), started=Mark(fine, coarse)), used


# The files, and the directories holding them (the root included): the re-check covers both.
SMALL_CHECKED = [".", "a.txt", "b.txt", "c.txt", "d", "d/e.txt", "d/f.txt"]


def test_unstable_means_changed_strictly_after_the_start(
    small: Signed, walker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path whose ctime is after the start on the fine clock is unstable; exactly at it is not."""
    newest = max((small.root / f).stat().st_ctime_ns for f in SMALL_CHECKED)
    latest = {f for f in SMALL_CHECKED if (small.root / f).stat().st_ctime_ns == newest}
    at, used = _compare_from(small, monkeypatch, newest, newest - 10**6)
    assert at.problems == [] and at.tally.hashed == 5
    assert [m.waited for m in used] == [False, True]  # a stamp between the clocks: checked once more
    before, used = _compare_from(small, monkeypatch, newest - 1, newest - 10**6)
    assert {(p.path, p.kind) for p in before.problems} == {(f, "unstable") for f in latest}
    assert len(used) == 1  # certainly changed during the run: no second look


def test_a_tree_older_than_the_coarse_start_is_checked_once(
    small: Signed, walker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every stamp before the coarse clock's start: one attempt, no wait, nothing unstable."""
    newest = max((small.root / f).stat().st_ctime_ns for f in SMALL_CHECKED)
    out, used = _compare_from(small, monkeypatch, newest + 2 * 10**6, newest + 10**6)
    assert out.problems == [] and out.tally.hashed == 5
    assert [m.waited for m in used] == [False]


def test_default_problem_list_holds_the_first_5000(small: Signed) -> None:
    """By default a report lists the first 5,000 problems (docs/api.md) and counts all of them."""
    extra = small.root / "extra"
    extra.mkdir()
    for i in range(5001):
        (extra / f"{i:05d}").touch()
    r = run(small)
    assert len(r.problems) == 5000 and r.problems_truncated
    assert r.counts["added"] == 5002 and r.problems[0].path == "extra" and r.problems[-1].path == "extra/04998"


def test_added_directory_that_cannot_be_listed_counts_once(
    small: Signed, walker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An added directory that then cannot be listed has two problems but is one failed path of the total."""
    (small.root / "extra").mkdir()
    (small.root / "extra" / "x").write_text("x")
    fail_listing(monkeypatch, small.root, "extra")
    r = run(small)
    assert problems(r) == {("extra", "added"), ("extra", "unreadable")}
    assert (r.counts["problems"], r.counts["failed"], r.counts["total"]) == (2, 1, r.counts["entries"] + 1)


def test_out_of_descriptors_in_the_recheck_is_an_error(
    small: Signed, walker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Running out of descriptors while re-checking hashed files is ERROR tree_error, never "unstable" files."""
    hashed: list[bool] = []
    real_stat = os.stat

    def progress(done: int, total: int) -> None:
        if done == total:
            hashed.append(True)

    def stat(path: Any, *, dir_fd: int | None = None, follow_symlinks: bool = True) -> os.stat_result:
        if hashed and dir_fd is not None:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_stat(path, dir_fd=dir_fd, follow_symlinks=follow_symlinks)

    def hook(stage: int, path: bytes) -> int:  # the extension's look-up (the scanner walker)
        return errno.EMFILE if hashed and stage == speedups.STAGE_CTIME else 0

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(speedups, "FAULT_HOOK", hook)
    r = run(small, progress=progress)
    assert (r.status, r.reason_code) == ("ERROR", "tree_error") and hashed
    assert "ran out of resources" in (r.reason or "")

"""Verify a tree against a signed manifest and produce a complete report."""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TypedDict, Unpack

from . import __version__
from .config import OWN_FILES, Settings, resolve_settings
from .errors import IntegrityError, NotVerifiedError, UntrustedError
from .exclude import Excluder
from .hashing import FileCheck, check_files
from .logs import log_report
from .manifest import File, Manifest, Symlink, display
from .report import ManifestInfo, Mode, Problem, Report, Status, make_report
from .snapshot import RECORD, Snapshot, default_cache_dir, load_snapshot, save_snapshot
from .trust import TrustAnchorInTree, evaluate, load_inputs, now_utc, record_verified
from .walk import KIND_BY_FMT, check_root, inside_root, iter_tree, relative_inside

__all__ = ["VerifyOptions", "ensure_integrity", "verify_integrity", "verify_settings"]


def _describe_target(e: Symlink) -> str:
    if e.target is not None:
        return e.target
    return display(os.fsdecode(e.target_b64 or b""))


class _Outcome:
    """What comparing the tree with the manifest found."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.checked = 0
        self.files = 0
        self.hashed = 0
        self.records: bytearray | None = None
        """Quick mode: the stat record of every file that checked out, for the next snapshot."""


def _compare(
    m: Manifest,
    keys: list[str],
    root_real: str,
    skip: set[str],
    workers: int | None,
    snapshot: Snapshot | None,
    quick: bool,
    progress: Callable[[int, int], None] | None = None,
) -> _Outcome:
    """Walk the tree and compare it with the manifest, hashing what must be hashed.

    The walk is consumed as it goes, so nothing per entry is kept but the files
    still to be hashed: a 100,000-file tree stays well under 100 MiB.
    """
    out = _Outcome()
    problems = out.problems
    entries = m.entries
    index: dict[str, int] = dict(zip(keys, range(len(keys)), strict=True))
    # The conventional in-tree manifest and signature are never part of the tree, even when
    # this run uses a copy kept elsewhere (unless the manifest itself lists them).
    skip = skip | {n for n in OWN_FILES if n not in index}
    pop = index.pop
    jobs: list[FileCheck] = []
    job_index: list[int] = []
    errors: list[tuple[str, str]] = []
    seen = added = files = 0
    records = bytearray(RECORD.size * len(entries)) if quick else None
    old = snapshot.records if snapshot is not None else None
    settled_before = snapshot.settled_before() if snapshot is not None else 0
    size_of, pack = RECORD.size, RECORD.pack
    for rel, st, link_target in iter_tree(root_real, Excluder(m.exclude), skip, stat_files=quick, errors=errors):
        seen += 1
        i = pop(rel, -1)
        e = entries[i] if i >= 0 else None
        if type(st) is int:  # full mode: a regular file known from its directory entry only
            if type(e) is File:
                files += 1
                # keys[i] is the manifest's own string, equal to rel: sharing it lets the walk's copy go.
                jobs.append((keys[i], st, e.size, e.mode, e.blake3))
                job_index.append(i)
            elif e is None:
                problems.append(Problem(path=display(rel), kind="added", actual="file"))
                added += 1
            else:
                problems.append(Problem(path=display(rel), kind="type_changed", expected=e.kind, actual="file"))
            continue
        assert isinstance(st, os.stat_result)
        mode = st.st_mode
        kind = KIND_BY_FMT.get(stat.S_IFMT(mode), "unknown")
        if e is None:
            problems.append(Problem(path=display(rel), kind="added", actual=kind))
            added += 1
            continue
        if kind != e.kind:
            problems.append(Problem(path=display(rel), kind="type_changed", expected=e.kind, actual=kind))
            continue
        perm = mode & 0o7777
        if perm != e.mode:
            problems.append(
                Problem(path=display(rel), kind="mode_changed", expected=f"{e.mode:04o}", actual=f"{perm:04o}")
            )
        if type(e) is File:  # quick mode: regular files come with their lstat
            files += 1
            if st.st_size != e.size:
                problems.append(
                    Problem(path=display(rel), kind="modified", expected=f"size {e.size}", actual=f"size {st.st_size}")
                )
                continue
            record = pack(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            assert records is not None
            records[size_of * i : size_of * (i + 1)] = record
            if (
                old is not None
                and old[size_of * i : size_of * (i + 1)] == record
                and st.st_mtime_ns < settled_before
                and st.st_ctime_ns < settled_before
            ):
                continue
            # The mode was compared above; hand the hasher the mode seen so it is not reported twice.
            jobs.append((keys[i], st.st_ino, e.size, perm, e.blake3))
            job_index.append(i)
        elif type(e) is Symlink:
            want = e.target if e.target is not None else os.fsdecode(e.target_b64 or b"")
            if link_target != want:
                problems.append(
                    Problem(
                        path=display(rel),
                        kind="symlink_changed",
                        expected=_describe_target(e),
                        actual=display(link_target or ""),
                    )
                )
    problems.extend(Problem(path=display(p), kind="unreadable", actual=msg) for p, msg in errors)
    out.checked, out.files = seen - added, files
    problems.extend(Problem(path=display(rel), kind="missing", expected=entries[i].kind) for rel, i in index.items())
    del index
    tick = None
    if progress is not None:
        lock, done, total = threading.Lock(), [0], len(jobs)

        def tick(n: int) -> None:
            with lock:
                done[0] += n
                progress(done[0], total)

    for k, what, expected_value, got in check_files(root_real, jobs, workers, tick):
        problems.append(Problem(path=display(jobs[k][0]), kind=what, expected=expected_value, actual=got))
        if records is not None:  # never remember a file that failed
            i = job_index[k]
            records[size_of * i : size_of * (i + 1)] = bytes(size_of)
    out.hashed = len(jobs)
    out.records = records
    return out


def verify_integrity(
    root: str | os.PathLike[str] | None = None,
    *,
    manifest: str | os.PathLike[str] | None = None,
    signature: str | os.PathLike[str] | None = None,
    public_keys: str | Sequence[str] | None = None,
    deployment: str | None = None,
    workers: int | None = None,
    quick: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    allow_rollback_to: str | int | None = None,
    revoked_keys: str | Sequence[str] | None = None,
    clock_skew: int | None = None,
    config_file: str | os.PathLike[str] | None = None,
    use_config_file: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Verify a tree against its signed manifest and return a complete :class:`Report`.

    Arguments left as None come from the environment (``DURI_INTEGRITY_*``) and
    then from one config file: ``config_file``, else ``DURI_INTEGRITY_CONFIG``,
    else ``/etc/duri-integrity/config.toml`` (never one found in the working
    directory). ``deployment`` names the service this host runs; it is required
    while rollback protection is on. Operational failures (missing manifest, bad
    signature, missing root, bad configuration, unusable rollback state) come
    back as a report with status UNTRUSTED or ERROR; only invalid arguments raise.

    ``progress``, if given, is called from the hashing threads as
    ``progress(files_done, files_to_hash)``.

    ``quick=True`` re-hashes only files whose stat changed since the last
    verified run (see :mod:`duri_integrity.snapshot`); it is weaker than a full
    check because it trusts file timestamps, and the report says which mode ran.
    """
    t0 = time.perf_counter()
    started_ns = time.time_ns()
    checked_at = datetime.now(tz=UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    if workers is not None and (not isinstance(workers, int) or not 1 <= workers <= 256):
        raise ValueError("workers must be an integer between 1 and 256")
    overrides = _overrides(
        root,
        manifest,
        signature,
        public_keys,
        deployment,
        workers,
        cache_dir,
        state_dir,
        allow_rollback_to,
        revoked_keys,
        clock_skew,
    )
    run = Run(os.fspath(root) if root is not None else ".", t0, checked_at)
    try:
        settings, run.config_file = resolve_settings(
            overrides, use_config_file=use_config_file, config_file=os.fspath(config_file) if config_file else None
        )
    except IntegrityError as exc:
        return run.finish("ERROR", str(exc), _error_code(exc))
    return verify_settings(settings, run, quick=quick, progress=progress, started_ns=started_ns)


def verify_settings(
    settings: Settings,
    run: Run,
    *,
    quick: bool = False,
    progress: Callable[[int, int], None] | None = None,
    started_ns: int = 0,
    record: bool = True,
) -> Report:
    """The verification proper, from resolved settings. ``record=False`` leaves the rollback
    mark and the quick-mode snapshot untouched (``doctor`` checks; it does not deploy)."""
    run.root = settings.root or "."
    try:
        root_real = check_root(run.root)
        if run.config_file is not None and inside_root(root_real, run.config_file) is not None:
            raise TrustAnchorInTree(
                f"config file {run.config_file!r} is inside the tree being verified; it must come from outside it"
            )
        inputs = load_inputs(settings, root_real)
        tm = evaluate(inputs, now_utc())
        run.minfo = tm.info
        run.notes.extend(tm.notes)
        if inputs.store is None:
            run.notes.append("rollback protection is off (state directory set to none)")
        skip = relative_inside(root_real, (inputs.manifest_path, inputs.signature_path))
        snapshot = None
        cache = settings.cache_dir or default_cache_dir()
        if quick:
            snapshot, note = load_snapshot(cache, root_real, tm.manifest.root_digest, len(tm.manifest.entries))
            if note:
                run.notes.append(note)
        run.mode = "quick" if snapshot else "full"
        outcome = _compare(tm.manifest, tm.keys, root_real, skip, settings.workers, snapshot, quick, progress)
        if outcome.problems:
            return run.finish("FAILED", outcome=outcome)
        if record:
            record_verified(tm, inputs.store)
    except UntrustedError as exc:
        return run.finish("UNTRUSTED", str(exc), exc.code)
    except IntegrityError as exc:  # configuration, keys, the root, the state: could not verify
        return run.finish("ERROR", str(exc), _error_code(exc))
    except OSError as exc:  # anything the layers below did not already turn into a message
        where = f" {exc.filename!r}" if exc.filename else ""
        return run.finish("ERROR", f"{exc.strerror or exc}{where}", "os_error")
    if record and quick and outcome.hashed and outcome.records is not None:
        # Every file now checks out: remember their stat so the next quick run can skip them.
        note = save_snapshot(cache, Snapshot(root_real, tm.manifest.root_digest, started_ns, outcome.records))
        if note:
            run.notes.append(note)
    return run.finish("VERIFIED", outcome=outcome)


def _overrides(
    root: str | os.PathLike[str] | None,
    manifest: str | os.PathLike[str] | None,
    signature: str | os.PathLike[str] | None,
    public_keys: str | Sequence[str] | None,
    deployment: str | None,
    workers: int | None,
    cache_dir: str | os.PathLike[str] | None,
    state_dir: str | os.PathLike[str] | None,
    allow_rollback_to: str | int | None,
    revoked_keys: str | Sequence[str] | None,
    clock_skew: int | None,
) -> Settings:
    def path(p: str | os.PathLike[str] | None) -> str | None:
        return os.fspath(p) if p is not None else None

    def paths(p: str | Sequence[str] | None) -> list[str] | None:
        return [p] if isinstance(p, str) else ([os.fspath(k) for k in p] if p is not None else None)

    return Settings(
        root=path(root),
        manifest=path(manifest),
        signature=path(signature),
        public_key=paths(public_keys),
        deployment=deployment,
        workers=workers,
        cache_dir=path(cache_dir),
        state_dir=path(state_dir),
        allow_rollback_to=str(allow_rollback_to) if allow_rollback_to is not None else None,
        revoked_keys=paths(revoked_keys),
        clock_skew=clock_skew,
    )


def _error_code(exc: IntegrityError) -> str:
    from .errors import ConfigError, KeyFileError, TreeError

    if isinstance(exc, KeyFileError):
        return "key_error"
    if isinstance(exc, TreeError):
        return "tree_error"
    if isinstance(exc, ConfigError):
        return "config_error"
    return "error"


class Run:
    """What one verification has learnt so far, and how to turn it into the report."""

    def __init__(self, root: str, t0: float, checked_at: str) -> None:
        self.root, self.t0, self.checked_at = root, t0, checked_at
        self.config_file: str | None = None
        self.minfo: ManifestInfo | None = None
        self.notes: list[str] = []
        self.mode: Mode = "full"

    def finish(
        self, status: Status, reason: str | None = None, code: str | None = None, outcome: _Outcome | None = None
    ) -> Report:
        report = make_report(
            status=status,
            root=self.root,
            reason=reason,
            reason_code=code,
            config_file=self.config_file,
            mode=self.mode,
            manifest=self.minfo,
            problems=outcome.problems if outcome else None,
            checked=outcome.checked if outcome else 0,
            files=outcome.files if outcome else 0,
            hashed=outcome.hashed if outcome else 0,
            notes=self.notes,
            elapsed=time.perf_counter() - self.t0,
            checked_at=self.checked_at,
            tool_version=__version__,
        )
        log_report(report)
        return report


class VerifyOptions(TypedDict, total=False):
    """The keyword arguments of :func:`verify_integrity`, for wrappers that pass them on."""

    manifest: str | os.PathLike[str] | None
    signature: str | os.PathLike[str] | None
    public_keys: str | Sequence[str] | None
    deployment: str | None
    workers: int | None
    quick: bool
    cache_dir: str | os.PathLike[str] | None
    state_dir: str | os.PathLike[str] | None
    allow_rollback_to: str | int | None
    revoked_keys: str | Sequence[str] | None
    clock_skew: int | None
    config_file: str | os.PathLike[str] | None
    use_config_file: bool
    progress: Callable[[int, int], None] | None


def ensure_integrity(root: str | os.PathLike[str] | None = None, **options: Unpack[VerifyOptions]) -> Report:
    """Like :func:`verify_integrity`, but raise NotVerifiedError unless the tree is VERIFIED."""
    report = verify_integrity(root, **options)
    if not report.integrity_verified:
        raise NotVerifiedError(report)
    return report

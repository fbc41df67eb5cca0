"""Verify a tree against a signed manifest and produce a complete report."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TypedDict, Unpack

from . import __version__
from .compare import Outcome, compare
from .config import Settings, resolve_settings
from .errors import ConfigError, IntegrityError, NotVerifiedError
from .logs import log_report
from .report import ManifestInfo, Mode, Report, Status, make_report
from .snapshot import Snapshot, default_cache_dir, load_snapshot, save_snapshot
from .trust import Untrusted, load_trusted_manifest, record_verified, rollback_key
from .walk import check_root, relative_inside

__all__ = ["VerifyOptions", "ensure_integrity", "verify_integrity"]


def verify_integrity(
    root: str | os.PathLike[str] | None = None,
    *,
    manifest: str | os.PathLike[str] | None = None,
    signature: str | os.PathLike[str] | None = None,
    public_keys: str | Sequence[str] | None = None,
    workers: int | None = None,
    quick: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    allow_rollback_to: str | int | None = None,
    revoked_keys: str | Sequence[str] | None = None,
    clock_skew: int | None = None,
    use_config_file: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Verify a tree against its signed manifest and return a complete :class:`Report`.

    Arguments left as None come from the environment (``DURI_INTEGRITY_*``) and
    then the config file. Operational failures (missing manifest, bad signature,
    missing root, bad configuration) come back as a report with status
    UNTRUSTED or ERROR; only invalid arguments raise.

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
    if isinstance(public_keys, str):
        public_keys = [public_keys]
    overrides = Settings(
        root=os.fspath(root) if root is not None else None,
        manifest=os.fspath(manifest) if manifest is not None else None,
        signature=os.fspath(signature) if signature is not None else None,
        public_key=[os.fspath(k) for k in public_keys] if public_keys is not None else None,
        workers=workers,
        cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
        state_dir=os.fspath(state_dir) if state_dir is not None else None,
        allow_rollback_to=str(allow_rollback_to) if allow_rollback_to is not None else None,
        revoked_keys=[revoked_keys]
        if isinstance(revoked_keys, str)
        else (list(revoked_keys) if revoked_keys is not None else None),
        clock_skew=clock_skew,
    )
    root_shown = os.fspath(root) if root is not None else "."
    notes: list[str] = []

    def finish(
        status: Status,
        reason: str | None = None,
        minfo: ManifestInfo | None = None,
        outcome: Outcome | None = None,
        mode: Mode = "full",
    ) -> Report:
        report = make_report(
            status=status,
            root=root_shown,
            reason=reason,
            mode=mode,
            manifest=minfo,
            problems=outcome.problems if outcome else None,
            tally=outcome.tally if outcome else None,
            notes=notes,
            elapsed=time.perf_counter() - t0,
            checked_at=checked_at,
            tool_version=__version__,
        )
        log_report(report)
        return report

    try:
        settings, _ = resolve_settings(overrides, use_config_file=use_config_file)
        root_shown = settings.root or "."
        root_real = check_root(root_shown)
        tm = load_trusted_manifest(settings, root_real)
        m, keys, minfo = tm.manifest, tm.keys, tm.info
        notes.extend(tm.notes)
        skip = relative_inside(root_real, (tm.manifest_path, tm.signature_path))
        snapshot = None
        cache = settings.cache_dir or default_cache_dir()
        if quick:
            snapshot, note = load_snapshot(cache, root_real, m.root_digest, len(m.entries))
            if note:
                notes.append(note)
        outcome = compare(m, keys, root_real, skip, settings.workers, snapshot, quick, progress)
    except Untrusted as exc:
        return finish("UNTRUSTED", str(exc))
    except IntegrityError as exc:  # configuration, keys, the root, the state: could not verify
        return finish("ERROR", str(exc))
    except OSError as exc:  # anything the layers below did not already turn into a message
        where = f" {exc.filename!r}" if exc.filename else ""
        return finish("ERROR", f"{exc.strerror or exc}{where}")
    if outcome.problems:
        return finish("FAILED", None, minfo, outcome, "quick" if snapshot else "full")
    try:
        note = record_verified(tm, rollback_key(settings))
    except ConfigError as exc:
        return finish("ERROR", str(exc), minfo, outcome)
    if note:
        notes.append(note)
    if quick and outcome.hashed and outcome.records is not None:
        # Every file now checks out: remember their stat so the next quick run can skip them.
        fresh = Snapshot(root_real, m.root_digest, started_ns, outcome.records)
        note = save_snapshot(cache, fresh)
        if note:
            notes.append(note)
    return finish("VERIFIED", None, minfo, outcome, "quick" if snapshot else "full")


class VerifyOptions(TypedDict, total=False):
    """The keyword arguments of :func:`verify_integrity`, for wrappers that pass them on."""

    manifest: str | os.PathLike[str] | None
    signature: str | os.PathLike[str] | None
    public_keys: str | Sequence[str] | None
    workers: int | None
    quick: bool
    cache_dir: str | os.PathLike[str] | None
    state_dir: str | os.PathLike[str] | None
    allow_rollback_to: str | int | None
    revoked_keys: str | Sequence[str] | None
    clock_skew: int | None
    use_config_file: bool
    progress: Callable[[int, int], None] | None


def ensure_integrity(root: str | os.PathLike[str] | None = None, **options: Unpack[VerifyOptions]) -> Report:
    """Like :func:`verify_integrity`, but raise NotVerifiedError unless the tree is VERIFIED."""
    report = verify_integrity(root, **options)
    if not report.integrity_verified:
        raise NotVerifiedError(report)
    return report

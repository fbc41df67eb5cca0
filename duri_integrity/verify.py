"""Verify a tree against a signed manifest and produce a complete report."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TypedDict, Unpack

from ._version import __version__
from .compare import DEFAULT_MAX_PROBLEMS, Outcome, compare
from .config import Settings, resolve_settings
from .errors import IntegrityError, NotVerifiedError, TrustAnchorInTree, UntrustedError
from .logs import log_report
from .manifest import Manifest
from .report import ManifestInfo, Mode, Report, Status, make_report
from .scan import not_warming, warm_metadata
from .settle import start_mark
from .snapshot import Snapshot, default_cache_dir, load_snapshot, save_snapshot
from .trust import TrustedManifest, TrustInputs, anchor_inodes, evaluate, load_inputs, now_utc, record_verified
from .walk import check_root, inside_root, relative_inside

__all__ = ["VerifyOptions", "ensure_integrity", "verify_integrity", "verify_settings"]


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
    max_problems: int | None = DEFAULT_MAX_PROBLEMS,
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
    ``progress(files_done, files_to_hash)``. ``max_problems`` bounds the problems
    listed in the report (the first in path order; ``None`` lists all, and memory then
    grows with them); the counts are exact either way.

    ``quick=True`` re-hashes only files whose stat changed since the last
    verified run (see :mod:`duri_integrity.snapshot`); it is weaker than a full
    check because it trusts file timestamps, and the report says which mode ran.
    """
    _check_limits(workers, max_problems)
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
    run = Run(os.fspath(root) if root is not None else ".")
    try:
        settings, run.config_file = resolve_settings(
            overrides, use_config_file=use_config_file, config_file=os.fspath(config_file) if config_file else None
        )
    except IntegrityError as exc:
        return run.finish("ERROR", str(exc), _error_code(exc))
    return verify_settings(settings, run, quick=quick, progress=progress, max_problems=max_problems)


def verify_settings(
    settings: Settings,
    run: Run,
    *,
    quick: bool = False,
    progress: Callable[[int, int], None] | None = None,
    started_ns: int | None = None,
    record: bool = True,
    max_problems: int | None = DEFAULT_MAX_PROBLEMS,
) -> Report:
    """The verification proper, from resolved settings. ``record=False`` leaves the rollback
    mark and the quick-mode snapshot untouched (``doctor`` checks; it does not deploy).
    ``started_ns`` (the quick-mode snapshot's time) defaults to when ``run`` began."""
    run.root = settings.root or "."
    begun = start_mark()  # a change to the tree from here on counts as during the run (settle.py)
    stop_warming = not_warming
    try:
        root_real = check_root(run.root)
        # From a cold cache the tree's metadata is read while the signature is checked (scan.py);
        # not when the caller chose the thread count (as no extra readers join then).
        if settings.workers is None:
            stop_warming = warm_metadata(root_real)
        inputs, tm = _trusted(settings, run, root_real)
        skip = relative_inside(root_real, (inputs.manifest_path, inputs.signature_path))
        cache = settings.cache_dir or default_cache_dir()
        snapshot = _snapshot(run, cache, root_real, tm.manifest) if quick else None
        run.mode = "quick" if snapshot else "full"
        outcome = compare(
            tm.manifest,
            tm.keys,
            root_real,
            skip,
            settings.workers,
            snapshot,
            quick,
            progress,
            max_problems=max_problems,
            anchors=inputs.anchors,
            root_path=run.root,
            started=begun,
            walked=stop_warming,
        )
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
    finally:
        stop_warming()
    if record and quick and outcome.hashed and outcome.records is not None:
        # Every file now checks out: remember their stat so the next quick run can skip them.
        when = started_ns or run.started_ns
        if note := save_snapshot(cache, Snapshot(root_real, tm.manifest.root_digest, when, outcome.records)):
            run.notes.append(note)
    return run.finish("VERIFIED", outcome=outcome)


def _trusted(settings: Settings, run: Run, root_real: str) -> tuple[TrustInputs, TrustedManifest]:
    """The trust pipeline's inputs and its verdict (raises an UntrustedError leaf if not trusted)."""
    inputs = _trust(settings, run, root_real)
    tm = evaluate(inputs, now_utc())
    inputs.data = b""  # the manifest's bytes (16 MB at 100,000 files) are not needed past this point
    run.minfo = tm.info
    run.notes.extend(tm.notes)
    if inputs.store is None:
        run.notes.append("rollback protection is off (state directory set to none)")
    return inputs, tm


def _trust(settings: Settings, run: Run, root_real: str) -> TrustInputs:
    """The trust pipeline's inputs, with the config file counted among the trust anchors."""
    if run.config_file is not None and inside_root(root_real, run.config_file) is not None:
        raise TrustAnchorInTree(
            f"config file {run.config_file!r} is inside the tree being verified; it must come from outside it"
        )
    inputs = load_inputs(settings, root_real)
    if run.config_file is not None:
        anchor_inodes([run.config_file], into=inputs.anchors)
    return inputs


def _snapshot(run: Run, cache: str, root_real: str, m: Manifest) -> Snapshot | None:
    snapshot, note = load_snapshot(cache, root_real, m.root_digest, len(m.entries))
    if note:
        run.notes.append(note)
    return snapshot


def _check_limits(workers: int | None, max_problems: int | None) -> None:
    if workers is not None and (not isinstance(workers, int) or not 1 <= workers <= 256):
        raise ValueError("workers must be an integer between 1 and 256")
    if max_problems is not None and (not isinstance(max_problems, int) or max_problems < 1):
        raise ValueError("max_problems must be a positive integer or None")


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
    """The arguments as settings; a wrong type (``os.fspath(False)``, a number where a path
    belongs...) is the caller's bug, a ValueError."""

    def path(p: str | os.PathLike[str] | None) -> str | None:
        return os.fspath(p) if p is not None else None

    def paths(p: str | Sequence[str] | None) -> list[str] | None:
        return [p] if isinstance(p, str) else ([os.fspath(k) for k in p] if p is not None else None)

    try:
        settings = Settings(
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
    except TypeError as exc:
        raise ValueError(f"invalid argument: {exc}") from None
    import msgspec

    try:  # the types, checked once: a wrong one is the caller's bug, a ValueError
        return msgspec.convert(msgspec.structs.asdict(settings), Settings)
    except msgspec.ValidationError as exc:
        raise ValueError(f"invalid argument: {exc}") from None


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

    def __init__(self, root: str, t0: float | None = None, checked_at: str | None = None) -> None:
        self.t0 = time.perf_counter() if t0 is None else t0
        self.started_ns = time.time_ns()
        """The wall clock when the run began (the quick-mode snapshot's time)."""
        if checked_at is None:
            checked_at = datetime.now(tz=UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        self.root, self.checked_at = root, checked_at
        self.config_file: str | None = None
        self.minfo: ManifestInfo | None = None
        self.notes: list[str] = []
        self.mode: Mode = "full"

    def finish(
        self, status: Status, reason: str | None = None, code: str | None = None, outcome: Outcome | None = None
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
            tally=outcome.tally if outcome else None,
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
    max_problems: int | None


def ensure_integrity(root: str | os.PathLike[str] | None = None, **options: Unpack[VerifyOptions]) -> Report:
    """Like :func:`verify_integrity`, but raise NotVerifiedError unless the tree is VERIFIED."""
    report = verify_integrity(root, **options)
    if not report.integrity_verified:
        raise NotVerifiedError(report)
    return report

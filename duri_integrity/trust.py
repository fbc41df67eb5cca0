"""Establishing trust in a manifest before anything in it is believed.

In order: trusted keys from outside the tree, the signature over the exact
manifest bytes, revocation, then decoding, the trusted comment, the clock
(expiry, creation in the future) and the rollback high-water mark.
"""

import os
from datetime import UTC, datetime, timedelta

from . import state as _state
from .config import SYSTEM_KEY_DIR, Settings, manifest_paths
from .errors import KeyFileError, ManifestError, SignatureError
from .files import UnreadableFile, read_file
from .keys import MAX_SIGNATURE_BYTES
from .logs import WARNING, log_event
from .manifest import MAX_MANIFEST_BYTES, Manifest, decode_manifest_keys
from .report import ManifestInfo
from .state import DISABLED, RollbackState, StateStore
from .walk import inside_root

__all__ = ["DEFAULT_CLOCK_SKEW", "SYSTEM_REVOKED_DIR", "TrustedManifest", "Untrusted", "load_trusted_manifest"]

DEFAULT_CLOCK_SKEW = 300
SYSTEM_REVOKED_DIR = "/etc/duri-integrity/revoked-keys.d"


class Untrusted(Exception):
    """The manifest cannot be trusted (status UNTRUSTED); the message says why."""


class TrustedManifest:
    """A manifest that passed every check, with what the rest of the run needs from it.

    (A plain class: a dataclass costs about a millisecond of every verify's start-up.)
    """

    __slots__ = (
        "info",
        "key_id",
        "keys",
        "manifest",
        "manifest_path",
        "notes",
        "previous",
        "rollback_approved",
        "signature_path",
        "store",
    )

    def __init__(
        self,
        manifest: Manifest,
        keys: list[str],
        info: ManifestInfo,
        manifest_path: str,
        signature_path: str,
        key_id: str,
        store: StateStore | None,
    ) -> None:
        self.manifest = manifest
        self.keys = keys
        self.info = info
        self.manifest_path = manifest_path
        self.signature_path = signature_path
        self.key_id = key_id
        self.store = store
        self.previous: RollbackState | None = None
        """The high-water mark before this run, when there was one."""
        self.rollback_approved = False
        self.notes: list[str] = []


def key_sources(settings: Settings) -> list[str]:
    sources = list(settings.public_key or ())
    if not sources and os.path.isdir(SYSTEM_KEY_DIR):
        sources = [SYSTEM_KEY_DIR]
    if not sources:
        raise KeyFileError(
            "no trusted public key configured (use --public-key, DURI_INTEGRITY_PUBLIC_KEY, "
            f"the config file, or {SYSTEM_KEY_DIR})"
        )
    return sources


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def state_store(settings: Settings) -> StateStore | None:
    configured = settings.state_dir
    if configured is not None and configured.strip().lower() in DISABLED:
        return None
    return StateStore(configured or _state.default_state_dir(), explicit=configured is not None)


def revoked_key_ids(settings: Settings) -> set[str]:
    """Key ids revoked by configuration, or by the system directory when none is configured."""
    from .keys import load_revoked_key_ids

    sources = list(settings.revoked_keys or ())
    if not sources and os.path.isdir(SYSTEM_REVOKED_DIR):
        sources = [SYSTEM_REVOKED_DIR]
    return load_revoked_key_ids(sources)


def read_signed(manifest_path: str, sig_path: str) -> tuple[bytes, bytes]:
    """The manifest's bytes and its signature's, each within its size limit; raise Untrusted."""
    try:
        return read_file(manifest_path, MAX_MANIFEST_BYTES, "manifest"), read_file(
            sig_path, MAX_SIGNATURE_BYTES, "signature"
        )
    except UnreadableFile as exc:
        raise Untrusted(str(exc)) from None


def clock_problem(m: Manifest, settings: Settings, now: datetime) -> str | None:
    """Why this host's clock and the manifest's times disagree, or None."""
    skew = timedelta(seconds=DEFAULT_CLOCK_SKEW if settings.clock_skew is None else settings.clock_skew)
    if m.created > now + skew:
        return (
            f"manifest created at {_iso(m.created)}, {(m.created - now).total_seconds():.0f} s in the future "
            f"(allowed clock skew {skew.total_seconds():.0f} s): check the clocks of the build host and this host"
        )
    if m.expires is not None and now - skew >= m.expires:
        return f"manifest expired at {_iso(m.expires)}"
    return None


def load_trusted_manifest(settings: Settings, root_real: str) -> TrustedManifest:
    """Return the manifest once every check passes; raise Untrusted or an IntegrityError otherwise."""
    from .keys import load_trusted_keys, parse_trusted_comment, verify_signature

    sources = key_sources(settings)
    for src in sources:
        if os.path.exists(src) and inside_root(root_real, src) is not None:
            raise Untrusted(f"trusted key {src!r} is inside the tree being verified; keys must come from outside it")
    trusted = load_trusted_keys(sources)
    if not len(trusted):
        raise KeyFileError(f"no public keys found in {', '.join(sources)}")
    revoked = revoked_key_ids(settings)
    manifest_path, sig_path = manifest_paths(settings, root_real)
    data, sig = read_signed(manifest_path, sig_path)
    try:
        info = verify_signature(data, sig, trusted)
        if info.key_id in revoked:
            raise Untrusted(f"signed by key {info.key_id}, which is revoked")
        m, keys = decode_manifest_keys(data)
    except (SignatureError, ManifestError) as exc:
        raise Untrusted(str(exc)) from None
    del data
    fields = parse_trusted_comment(info.trusted_comment)
    for name, value in (("root", m.root_digest), ("serial", str(m.serial)), ("release", m.release)):
        if name in fields and fields[name] != value:
            raise Untrusted(f"the signature's trusted comment says {name} {fields[name]!r}, the manifest {value!r}")
    problem = clock_problem(m, settings, datetime.now(tz=UTC))
    if problem:
        raise Untrusted(problem)
    tm = TrustedManifest(
        manifest=m,
        keys=keys,
        info=ManifestInfo(
            path=manifest_path,
            release=m.release,
            serial=m.serial,
            created=_iso(m.created),
            expires=_iso(m.expires) if m.expires else None,
            key_id=info.key_id,
            root_digest=m.root_digest,
            entries=len(m.entries),
        ),
        manifest_path=manifest_path,
        signature_path=sig_path,
        key_id=info.key_id,
        store=state_store(settings),
    )
    _check_rollback(tm, rollback_key(settings), settings.allow_rollback_to)
    return tm


def rollback_key(settings: Settings) -> str:
    """The root as configured, made absolute but not resolved: the high-water mark belongs to
    the place a service runs from (``/srv/app/current``), so pointing that symlink at an older
    release directory is caught as the rollback it is."""
    return os.path.abspath(settings.root or ".")


def _check_rollback(tm: TrustedManifest, root_key: str, approval: str | None) -> None:
    if tm.store is None:
        tm.notes.append("rollback protection is off (state directory set to none)")
        return
    prev = tm.previous = tm.store.read(root_key, tm.key_id)
    m = tm.manifest
    if prev is None or m.serial >= prev.serial:
        return
    shown = f"release {m.release!r} (serial {m.serial})" if m.release else f"serial {m.serial}"
    newest = f"release {prev.release!r} (serial {prev.serial})" if prev.release else f"serial {prev.serial}"
    if approval is not None and approval in (m.release, str(m.serial)) and approval:
        tm.rollback_approved = True
        message = f"rollback to {shown} approved by the operator; this host had verified {newest}"
        tm.notes.append(message)
        log_event(WARNING, message)
        return
    raise Untrusted(
        f"rollback refused: {shown} is older than {newest} already verified on this host; "
        f"to roll back on purpose, approve it with --allow-rollback-to {m.release or m.serial}"
    )


def record_verified(tm: TrustedManifest, root_key: str) -> str | None:
    """After a VERIFIED run: raise (or, for an approved rollback, lower) the high-water mark."""
    if tm.store is None:
        return None
    m = tm.manifest
    prev = tm.previous
    if prev is not None and not tm.rollback_approved and (prev.serial, prev.root_digest) == (m.serial, m.root_digest):
        return None  # nothing new to record
    return tm.store.record(
        root_key,
        tm.key_id,
        m.serial,
        m.release,
        m.root_digest,
        approved_from=tm.previous if tm.rollback_approved else None,
    )

"""Establishing trust in a manifest before anything in it is believed.

Two steps, kept apart as python-tuf keeps its trusted-metadata set apart from
loading: :func:`load_inputs` gathers what the decision needs (trusted and
revoked keys from outside the tree, the signed bytes, the host's deployment,
the rollback mark, the operator's approval), and :func:`evaluate` decides,
purely, from those inputs alone, in this order: the signature over the exact
manifest bytes, revocation, decoding, the trusted comment, the clock (expiry,
creation in the future), the deployment, and the rollback mark. Each refusal is
one :class:`~duri_integrity.errors.UntrustedError` leaf with a ``code``.
``verify`` and ``doctor`` run the same steps, so they cannot disagree.
"""

import os
from datetime import UTC, datetime, timedelta

from .config import Settings, manifest_paths, state_disabled, system_path
from .errors import (
    CommentMismatch,
    ConfigError,
    Expired,
    FromTheFuture,
    IntegrityError,
    KeyFileError,
    MalformedManifest,
    ManifestError,
    ManifestUnreadable,
    RevokedKey,
    RollbackRefused,
    TrustAnchorInTree,
    WrongDeployment,
)
from .files import read_file
from .keys import MAX_SIGNATURE_BYTES, SignatureInfo, TrustedKeys, key_files
from .logs import WARNING, log_event
from .manifest import MAX_MANIFEST_BYTES, Manifest, decode_manifest_keys
from .report import ManifestInfo
from .state import RollbackState, StateStore, check_against
from .walk import inside_root

__all__ = [
    "DEFAULT_CLOCK_SKEW",
    "TrustInputs",
    "TrustedManifest",
    "evaluate",
    "load_inputs",
    "parse_approval",
    "record_verified",
]

DEFAULT_CLOCK_SKEW = 300


class TrustInputs:
    """Everything :func:`evaluate` decides from. (Plain classes: a dataclass costs start-up time.)"""

    __slots__ = (
        "anchors",
        "approval",
        "data",
        "deployment",
        "manifest_path",
        "previous",
        "revoked",
        "signature",
        "signature_path",
        "skew",
        "store",
        "trusted",
    )

    def __init__(
        self,
        *,
        data: bytes,
        signature: bytes,
        trusted: TrustedKeys,
        revoked: set[str],
        deployment: str | None,
        previous: RollbackState | None,
        approval: tuple[str | None, int] | None,
        skew: int = DEFAULT_CLOCK_SKEW,
        store: StateStore | None = None,
        manifest_path: str = "",
        signature_path: str = "",
        anchors: dict[int, tuple[int, str]] | None = None,
    ) -> None:
        self.anchors = anchors or {}
        """inode -> (device, path) of the files that decided trust (see :func:`anchor_inodes`)."""
        self.data, self.signature = data, signature
        self.trusted, self.revoked = trusted, revoked
        self.deployment, self.previous, self.approval = deployment, previous, approval
        self.skew, self.store = skew, store
        self.manifest_path, self.signature_path = manifest_path, signature_path


class TrustedManifest:
    """A manifest that passed every check, with what the rest of the run needs from it."""

    __slots__ = ("info", "key_id", "keys", "manifest", "notes", "previous", "rollback_approved")

    def __init__(
        self, manifest: Manifest, keys: list[str], info: ManifestInfo, key_id: str, previous: RollbackState | None
    ) -> None:
        self.manifest, self.keys, self.info, self.key_id = manifest, keys, info, key_id
        self.previous = previous
        """The high-water mark before this run, when there was one."""
        self.rollback_approved = False
        self.notes: list[str] = []


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


# -- the pure steps -------------------------------------------------------------------------


def check_signature(data: bytes, signature: bytes, trusted: TrustedKeys, revoked: set[str]) -> SignatureInfo:
    """The signature over exactly ``data`` is by a trusted key that is not revoked."""
    from .keys import verify_signature

    info = verify_signature(data, signature, trusted)  # raises BadSignature or UnknownKey
    if info.key_id in revoked:
        raise RevokedKey(f"signed by key {info.key_id}, which is revoked")
    return info


def decode(data: bytes) -> tuple[Manifest, list[str]]:
    try:
        return decode_manifest_keys(data)
    except ManifestError as exc:
        raise MalformedManifest(str(exc)) from None


def check_comment(info: SignatureInfo, m: Manifest) -> None:
    """The signed trusted comment (what ``minisign -V`` shows) agrees with the manifest body."""
    from .keys import parse_trusted_comment

    fields = parse_trusted_comment(info.trusted_comment)
    pairs = (("deployment", m.deployment), ("root", m.root_digest), ("serial", str(m.serial)), ("release", m.release))
    for name, value in pairs:
        if name in fields and fields[name] != value:
            raise CommentMismatch(
                f"the signature's trusted comment says {name} {fields[name]!r}, the manifest {value!r}"
            )


def check_clock(m: Manifest, now: datetime, skew_seconds: int) -> None:
    """Not created in the future (beyond the skew) and not expired (the skew stretches expiry)."""
    skew = timedelta(seconds=skew_seconds)
    if m.created > now + skew:
        raise FromTheFuture(
            f"manifest created at {_iso(m.created)}, {(m.created - now).total_seconds():.0f} s in the future "
            f"(allowed clock skew {skew_seconds} s): check the clocks of the build host and this host"
        )
    if m.expires is not None and now - skew >= m.expires:
        raise Expired(f"manifest expired at {_iso(m.expires)}")


def check_deployment(m: Manifest, expected: str | None) -> None:
    if expected is not None and m.deployment != expected:
        raise WrongDeployment(f"the manifest is for deployment {m.deployment!r}, but this host runs {expected!r}")


def _shown(release: str, serial: int) -> str:
    return f"release {release!r} (serial {serial})" if release else f"serial {serial}"


def check_rollback(m: Manifest, previous: RollbackState | None, approval: tuple[str | None, int] | None) -> bool:
    """Not older than the mark (nor another tree under the same serial), unless it is the pinned
    approved release or the operator approves exactly this release now; True if approved now."""
    if previous is None:
        return False
    try:
        check_against(previous, m.serial, m.root_digest)
        return False
    except RollbackRefused:
        reused = m.serial == previous.serial or (
            m.serial == previous.approved_serial and m.root_digest != previous.approved_digest
        )
        if reused:
            raise RollbackRefused(
                f"serial {m.serial} was already verified on this host for a different tree; two releases "
                "may not share a serial, and no approval can tell them apart: rebuild with a higher --serial"
            ) from None
    if approval is not None and approval[1] == m.serial and approval[0] in (None, m.release):
        return True
    shown, newest = _shown(m.release, m.serial), _shown(previous.release, previous.serial)
    name = f"{m.release}@{m.serial}" if m.release else str(m.serial)
    raise RollbackRefused(
        f"rollback refused: {shown} is older than {newest} already verified on this host; "
        f"to roll back on purpose, approve exactly this release with --allow-rollback-to {name}"
    )


def evaluate(inputs: TrustInputs, now: datetime) -> TrustedManifest:
    """Decide, from the inputs alone, whether the manifest is trusted; raise an UntrustedError leaf if not."""
    info = check_signature(inputs.data, inputs.signature, inputs.trusted, inputs.revoked)
    m, keys = decode(inputs.data)
    check_comment(info, m)
    check_clock(m, now, inputs.skew)
    check_deployment(m, inputs.deployment)
    approved = check_rollback(m, inputs.previous, inputs.approval)
    tm = TrustedManifest(m, keys, manifest_info(m, inputs.manifest_path, info.key_id), info.key_id, inputs.previous)
    if approved:
        tm.rollback_approved = True
        prev = inputs.previous
        assert prev is not None
        message = (
            f"rollback to {_shown(m.release, m.serial)} approved by the operator; "
            f"this host had verified {_shown(prev.release, prev.serial)}"
        )
        tm.notes.append(message)
        log_event(WARNING, message)
    return tm


def manifest_info(m: Manifest, path: str, key_id: str) -> ManifestInfo:
    return ManifestInfo(
        path=path,
        deployment=m.deployment,
        release=m.release,
        serial=m.serial,
        created=_iso(m.created),
        expires=_iso(m.expires) if m.expires else None,
        key_id=key_id,
        root_digest=m.root_digest,
        entries=len(m.entries),
    )


# -- loading the inputs ---------------------------------------------------------------------


def parse_approval(text: str | None) -> tuple[str | None, int] | None:
    """``SERIAL`` or ``LABEL@SERIAL``: an approval names exactly one release, never a label alone."""
    if text is None:
        return None
    label, sep, serial = text.rpartition("@")
    # ASCII digits only: str.isdigit() also accepts "²", which int() then rejects with a traceback.
    if not (serial.isascii() and serial.isdigit()) or len(serial) > 19 or (sep and not label):
        raise ConfigError(
            f"--allow-rollback-to {text!r}: name exactly one release, by its serial or as LABEL@SERIAL "
            "(for example v1.4.1@1764201600); a label alone would approve every build carrying it"
        )
    return (label if sep else None), int(serial)


def _outside(root_real: str, sources: list[str], what: str) -> None:
    """Refuse a trust anchor that resolves (links followed) inside the tree it would vouch for."""
    from .keys import is_inline_key

    for src in sources:
        if is_inline_key(src):
            continue
        if inside_root(root_real, src) is not None:
            raise TrustAnchorInTree(
                f"{what} {src!r} resolves to {os.path.realpath(src)!r}, inside the tree being verified; "
                f"{what}s must come from outside it"
            )


def trusted_key_sources(settings: Settings) -> list[str]:
    sources = list(settings.public_key or ())
    system = system_path("trusted-keys.d")
    if not sources and os.path.isdir(system):
        sources = [system]
    if not sources:
        raise KeyFileError(
            "no trusted public key configured (use --public-key, DURI_INTEGRITY_PUBLIC_KEY, "
            f"the config file, or {system})"
        )
    return sources


def revoked_sources(settings: Settings) -> list[str]:
    """Configured revocations *and* the system directory: a revocation only ever adds up.

    (Trusted keys are the other way round: configuring some replaces the system directory,
    because trusting less is the safe direction.)"""
    sources = list(settings.revoked_keys or ())
    system = system_path("revoked-keys.d")
    if os.path.isdir(system) and system not in sources:
        sources.append(system)
    return sources


ANY_DEVICE = -1
"""Two anchors share an inode number on different devices: refuse that inode on any device."""


def anchor_inodes(paths: list[str], into: dict[int, tuple[int, str]] | None = None) -> dict[int, tuple[int, str]]:
    """inode -> (device, path) of each trust anchor: the walk refuses a tree that holds one, however
    it is reached (a bind mount or a hard link defeats any comparison of path strings). Added to
    ``into`` when given; an inode number two anchors share on different devices is kept for every
    device (fail closed), rather than one anchor replacing the other."""
    out: dict[int, tuple[int, str]] = {} if into is None else into
    for p in paths:
        try:
            st = os.stat(p)
        except (OSError, ValueError):
            continue  # reading it reports the problem
        have = out.get(st.st_ino)
        out[st.st_ino] = (st.st_dev, p) if have is None or have[0] == st.st_dev else (ANY_DEVICE, p)
    return out


def load_keys(settings: Settings, root_real: str) -> tuple[TrustedKeys, set[str]]:
    """Trusted keys and revoked key ids, each file resolved and checked to lie outside the tree."""
    trusted, ids, _ = _load_keys(settings, root_real)
    return trusted, ids


def _load_keys(settings: Settings, root_real: str) -> tuple[TrustedKeys, set[str], list[str]]:
    """:func:`load_keys`, and every file that decided trust (inline keys excepted). Each key
    directory is listed once, so the files checked, read and later refused in the tree are the same."""
    from .keys import is_inline_key, revoked_ids_from, trusted_keys_from

    sources = trusted_key_sources(settings)
    trusted_files = key_files(sources, "trusted-key", ".pub")
    _outside(root_real, sources + trusted_files, "trusted key")
    trusted = trusted_keys_from(trusted_files)
    if not len(trusted):
        raise KeyFileError(f"no public keys found in {', '.join(sources)}")
    revoked = revoked_sources(settings)
    revoked_files = key_files(revoked, "revoked-key")
    _outside(root_real, revoked + revoked_files, "revoked-key list")
    ids = revoked_ids_from(revoked_files)
    for rid in ids:  # a truncated id (as short git hashes are) would revoke nothing
        near = [tid for tid in trusted.key_ids if tid != rid and tid.startswith(rid)]
        if near:
            raise KeyFileError(f"revoked key id {rid} looks like a shortened {near[0]}: give every digit")
    return trusted, ids, [f for f in trusted_files + revoked_files if not is_inline_key(f)]


def open_store(settings: Settings) -> StateStore | None:
    """The rollback state store (checked to be private), or None when switched off explicitly."""
    if state_disabled(settings):
        return None
    from .state import default_state_dir  # looked up at each call: tests and embedders may replace it

    store = StateStore(settings.state_dir or default_state_dir())
    store.check()
    return store


def host_deployment(settings: Settings, store: StateStore | None) -> str | None:
    """The deployment this host runs. Required when rollback protection is on: marks belong to it."""
    if settings.deployment is None and store is not None:
        raise ConfigError(
            "this host does not say which deployment it runs, so a manifest for another service could be "
            "swapped in and rollback protection has nothing to key on: pass --deployment NAME "
            "(or DURI_INTEGRITY_DEPLOYMENT, or deployment in the config file), or --state-dir none"
        )
    return settings.deployment


def read_signed(manifest_path: str, sig_path: str) -> tuple[bytes, bytes]:
    """The manifest's bytes and its signature's, each bounded, non-blocking, regular files only."""
    try:
        return (
            read_file(manifest_path, MAX_MANIFEST_BYTES, "manifest"),
            read_file(sig_path, MAX_SIGNATURE_BYTES, "signature"),
        )
    except IntegrityError as exc:
        raise ManifestUnreadable(str(exc)) from None


def load_inputs(settings: Settings, root_real: str) -> TrustInputs:
    """Gather what :func:`evaluate` needs; raise ConfigError/KeyFileError (ERROR) or UntrustedError."""
    trusted, revoked, anchors = _load_keys(settings, root_real)
    store = open_store(settings)
    deployment = host_deployment(settings, store)
    approval = parse_approval(settings.allow_rollback_to)
    manifest_path, sig_path = manifest_paths(settings, root_real)
    data, sig = read_signed(manifest_path, sig_path)
    return TrustInputs(
        data=data,
        signature=sig,
        trusted=trusted,
        revoked=revoked,
        deployment=deployment,
        previous=store.read(deployment) if store is not None and deployment is not None else None,
        approval=approval,
        skew=DEFAULT_CLOCK_SKEW if settings.clock_skew is None else settings.clock_skew,
        store=store,
        manifest_path=manifest_path,
        signature_path=sig_path,
        anchors=anchor_inodes(anchors),
    )


def now_utc() -> datetime:
    return datetime.now(tz=UTC)


def record_verified(tm: TrustedManifest, store: StateStore | None) -> None:
    """After a VERIFIED run: raise (or, for an approved rollback, lower) the mark. Raises on failure."""
    if store is None:
        return
    m = tm.manifest
    store.record(
        m.deployment,
        serial=m.serial,
        release=m.release,
        root_digest=m.root_digest,
        key_id=tm.key_id,
        approved=tm.rollback_approved,
    )

"""What one release changes against another: a diff of two manifests.

Review a release before it ships: every added and missing entry, and every
change of content, mode, type or symlink target. Signatures are checked first
when trusted keys are given.

The change kinds are verify's problem kinds (:data:`~duri_integrity.report.PROBLEM_KINDS`),
with OLD in the manifest's place and NEW in the tree's: ``missing`` is in OLD and not
in NEW, ``added`` the reverse; one vocabulary in every command, in JSON and in text.
"""

import os

import msgspec

from .config import MANIFEST_NAME, signature_path_for
from .errors import ManifestError, SignatureError
from .files import UnreadableFile, read_file
from .manifest import MAX_MANIFEST_BYTES, Entry, File, Manifest, Symlink, decode_manifest_keys, display
from .report import PROBLEM_KINDS

__all__ = ["CHANGE_KINDS", "Change", "ManifestDiff", "diff_files", "diff_manifests", "load_manifest_for_diff"]

# The problem kinds a difference between two manifests can show, in verify's order.
CHANGE_KINDS = tuple(k for k in PROBLEM_KINDS if k not in ("unreadable", "unstable"))


class Change(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    kind: str
    """One of modified, missing, added, type_changed, mode_changed, symlink_changed."""
    old: str | None = None
    new: str | None = None


class Side(msgspec.Struct, kw_only=True):
    path: str
    release: str
    serial: int
    root_digest: str
    signed_by: str | None
    """Key id that signed it, or None when signatures were not checked."""


class ManifestDiff(msgspec.Struct, kw_only=True):
    old: Side
    new: Side
    changes: list[Change]
    counts: dict[str, int]
    exclude_changed: bool
    notes: list[str]


def _describe(e: Entry) -> str:
    if type(e) is File:
        return f"blake3:{e.blake3} size {e.size}"
    if type(e) is Symlink:
        return e.target if e.target is not None else display(os.fsdecode(e.target_b64 or b""))
    return e.kind


def diff_manifests(old: tuple[Manifest, list[str]], new: tuple[Manifest, list[str]]) -> list[Change]:
    """Changes from ``old`` to ``new`` (each a manifest with its entry keys), sorted by path."""
    before = dict(zip(old[1], old[0].entries, strict=True))
    after = dict(zip(new[1], new[0].entries, strict=True))
    changes: list[Change] = []
    for key, e in after.items():
        was = before.get(key)
        path = display(key)
        if was is None:
            changes.append(Change(path=path, kind="added", new=_describe(e)))
            continue
        if was.kind != e.kind:
            changes.append(Change(path=path, kind="type_changed", old=was.kind, new=e.kind))
            continue
        if was.mode != e.mode:
            changes.append(Change(path=path, kind="mode_changed", old=f"{was.mode:04o}", new=f"{e.mode:04o}"))
        if type(e) is File and type(was) is File and (was.blake3, was.size) != (e.blake3, e.size):
            changes.append(Change(path=path, kind="modified", old=_describe(was), new=_describe(e)))
        if type(e) is Symlink and type(was) is Symlink and (was.target, was.target_b64) != (e.target, e.target_b64):
            changes.append(Change(path=path, kind="symlink_changed", old=_describe(was), new=_describe(e)))
    changes.extend(
        Change(path=display(key), kind="missing", old=_describe(e)) for key, e in before.items() if key not in after
    )
    changes.sort(key=lambda c: (c.path, CHANGE_KINDS.index(c.kind)))
    return changes


def manifest_file(path: str) -> str:
    """``path`` itself, or for a release directory the manifest in it (``DIR/MANIFEST.json``)."""
    return os.path.join(path, MANIFEST_NAME) if os.path.isdir(path) else path


def load_manifest_for_diff(path: str, trusted: object | None) -> tuple[Manifest, list[str], str | None]:
    """Read a manifest; with trusted keys, check its ``.minisig`` over the exact bytes first."""
    from .keys import MAX_SIGNATURE_BYTES, TrustedKeys, verify_signature

    try:
        data = read_file(path, MAX_MANIFEST_BYTES, "manifest")
    except UnreadableFile as exc:
        raise ManifestError(str(exc)) from None
    signed_by = None
    if isinstance(trusted, TrustedKeys):
        try:
            sig = read_file(signature_path_for(path), MAX_SIGNATURE_BYTES, "signature")
        except UnreadableFile as exc:
            raise SignatureError(str(exc)) from None
        try:
            signed_by = verify_signature(data, sig, trusted).key_id
        except SignatureError as exc:
            raise SignatureError(f"{path}: {exc}") from None
    m, keys = decode_manifest_keys(data)
    return m, keys, signed_by


def diff_files(old_path: str, new_path: str, trusted: object | None = None) -> ManifestDiff:
    """Load both manifests (files or release directories; signatures checked when keys are given) and diff them."""
    old_path, new_path = manifest_file(old_path), manifest_file(new_path)
    old_m, old_k, old_by = load_manifest_for_diff(old_path, trusted)
    new_m, new_k, new_by = load_manifest_for_diff(new_path, trusted)
    changes = diff_manifests((old_m, old_k), (new_m, new_k))
    counts = {k: sum(1 for c in changes if c.kind == k) for k in CHANGE_KINDS}
    notes = [] if trusted is not None else ["signatures not checked: give --public-key to check them"]
    if new_m.serial <= old_m.serial:
        notes.append(f"the new manifest's serial {new_m.serial} is not above the old one's {old_m.serial}")

    def side(path: str, m: Manifest, by: str | None) -> Side:
        return Side(path=path, release=m.release, serial=m.serial, root_digest=m.root_digest, signed_by=by)

    return ManifestDiff(
        old=side(old_path, old_m, old_by),
        new=side(new_path, new_m, new_by),
        changes=changes,
        counts=counts,
        exclude_changed=old_m.exclude != new_m.exclude,
        notes=notes,
    )

"""Build a manifest of a tree, write it, and sign it."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from . import scan, speedups
from ._version import __version__
from .config import OWN_FILES, signature_path_for
from .errors import IntegrityError, ManifestError, TreeError
from .exclude import Excluder
from .files import replace_file
from .hashing import StatLike, hash_for_build
from .keys import load_secret_key, make_trusted_comment, sign_bytes
from .keyscan import ENTRY_LIMIT, RecordingExcluder, excluded_secret_keys
from .manifest import (
    FORMAT,
    FORMAT_VERSION,
    PLAIN_TYPES,
    Entry,
    File,
    Manifest,
    Symlink,
    compute_root_digest,
    display,
    encode_manifest,
    make_entry_path,
    utc_now,
)
from .settle import Mark, changed_since, settled, start_mark
from .walk import Walk, WalkError, check_root, inside_root, kind_of, relative_inside

__all__ = [
    "BuildResult",
    "build_manifest",
    "sign_manifest",
    "signature_for",
    "write_atomic",
]

_MAX_LISTED = 10


class BuildResult(NamedTuple):
    manifest: Manifest
    data: bytes
    """The exact encoded manifest bytes (what gets written and signed)."""
    warnings: list[str]


def build_manifest(
    root: str,
    *,
    deployment: str,
    exclude: Sequence[str] = (),
    release: str = "",
    serial: int | None = None,
    created: datetime | None = None,
    expires_in: timedelta | None = None,
    workers: int | None = None,
    skip: Sequence[str] = (),
    secret_key_paths: Sequence[str] = (),
) -> BuildResult:
    """Walk and hash ``root``; return the manifest and its exact bytes.

    ``deployment`` names the service the release is for; hosts are told which
    deployment they run and refuse a manifest for another. Raises TreeError if any
    object cannot be read (a manifest must be complete) or if the tree holds a
    minisign secret key; ManifestError if a label is not one the verifier accepts.
    """
    check_labels(deployment, release)
    begun = start_mark()  # a change to the tree from here on counts as during the build (settle.py)
    root_real = check_root(root)
    warnings = code_exclusion_warnings(RecordingExcluder(exclude))
    written = relative_inside(root_real, skip)
    skipped = written | set(OWN_FILES)
    for key_path in secret_key_paths:
        rel = inside_root(root_real, key_path)
        if rel is not None and rel not in skipped:
            raise TreeError(f"the signing key {key_path!r} is inside the tree being built; move it out")
    # MANIFEST.json and its signature at the root are left out whatever manifest this build
    # writes; those it does not overwrite ship as they are, so they are looked at for keys too.
    shipped = sorted(set(OWN_FILES) - written)
    read = _TreeReader(root, root_real, exclude, (skipped, shipped), workers, secret_key_paths)
    entries, problems, more_warnings, patterns = settled(read.attempt, root_real, begun)
    warnings += more_warnings
    if problems:
        more = f" (and {len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
        raise TreeError(
            f"cannot build a complete manifest: {len(problems)} problem(s): " + "; ".join(problems[:_MAX_LISTED]) + more
        )
    when = created or utc_now()
    manifest = Manifest(
        format=FORMAT,
        version=FORMAT_VERSION,
        tool=f"duri-integrity {__version__}",
        deployment=deployment,
        release=release,
        created=when,
        serial=int(when.timestamp()) if serial is None else serial,
        expires=when + expires_in if expires_in is not None else None,
        exclude=patterns,
        root_digest=compute_root_digest(patterns, entries),
        entries=entries,
    )
    return BuildResult(manifest, encode_manifest(manifest), warnings)


_Row = tuple[bytes, str, StatLike, str | None]


class _Tree(NamedTuple):
    entries: list[Entry]
    problems: list[str]
    warnings: list[str]
    patterns: list[str]
    """The exclusion patterns as the manifest records them."""


class _TreeReader:
    """One look at the tree, from a start mark to the end-of-run check (settle.settled may ask twice)."""

    def __init__(
        self,
        root: str,
        root_real: str,
        exclude: Sequence[str],
        left_out: tuple[set[str], list[str]],
        workers: int | None,
        keys: Sequence[str],
    ) -> None:
        """``left_out``: what the walk skips (the tool's own files), and which of them ship unchanged."""
        self.root, self.root_real, self.exclude = root, root_real, exclude
        self.skipped, self.shipped = left_out
        self.workers, self.keys = workers, keys

    def attempt(self, mark: Mark) -> tuple[_Tree, bool]:
        root_real = self.root_real
        excluder = RecordingExcluder(self.exclude)
        rows, problems = _walk(root_real, excluder, self.skipped)
        warnings = _excluded_part(root_real, excluder, self.keys, self.shipped)
        entries = _entries(root_real, rows, self.workers, problems, warnings)
        unplaced = False
        if not problems:
            changed, unplaced = _changed_during_build(self.root, root_real, mark, rows)
            problems += changed
        return _Tree(entries, problems, warnings, excluder.patterns), unplaced


def _changed_during_build(root: str, root_real: str, mark: Mark, rows: list[_Row]) -> tuple[list[str], bool]:
    """One instant for the whole tree: everything listed, each path before the directory holding
    it, then the root, must be unchanged since ``mark`` (and the same inode), after the last read,
    and ``root`` must still lead to ``root_real`` (settle.py); a manifest never mixes two moments."""
    # Rows are in path order, a directory before what it holds: every other entry first, then
    # the directories deepest first, then the root.
    last_first = rows[::-1]
    leaves = [(rel, st.st_ino) for _, rel, st, _ in last_first if not stat.S_ISDIR(st.st_mode)]
    dirs = [(rel, st.st_ino) for _, rel, st, _ in last_first if stat.S_ISDIR(st.st_mode)]
    paths = [*(rel for rel, _ in leaves), *(rel for rel, _ in dirs), ""]
    inodes = [*(ino for _, ino in leaves), *(ino for _, ino in dirs), 0]
    changed, unplaced = changed_since(root_real, mark, paths, inodes, root, leaves=len(leaves))
    return [f"{display(paths[pos] or '.')}: unstable: {why}" for pos, why in changed], unplaced


def _walk(root_real: str, excluder: Excluder, skipped: set[str]) -> tuple[list[_Row], list[str]]:
    """Every object with its lstat (and link target), in canonical order (by path bytes); problems.
    Through the C scanner when there is one (10 against 17 ms for 3,229 entries), else the Python walk."""
    problems: list[str] = []
    rows: list[_Row] = []
    fsencode, add = os.fsencode, rows.append

    def found(rel: str, st: StatLike, target: str | None) -> None:
        add((fsencode(rel), rel, st, target))

    def error(err: WalkError) -> None:
        problems.append(f"{display(err.path)}: {err.message}")

    if speedups.can_scan():
        scan.listing(root_real, skipped, excluder, found, error)
    else:
        for f in Walk(root_real, excluder, skipped, stat_files=True):
            if isinstance(f, WalkError):
                error(f)
            elif f.st is not None:  # always: stat_files=True
                found(f.path, f.st, f.target)
    rows.sort(key=lambda r: r[0])
    return rows, problems


def _entries(
    root_real: str, rows: list[_Row], workers: int | None, problems: list[str], warnings: list[str]
) -> list[Entry]:
    """The manifest entries for the walked rows, hashing the files; problems and warnings appended."""
    file_rows = [(rel, st) for _, rel, st, _ in rows if stat.S_ISREG(st.st_mode)]
    hashed = iter(hash_for_build(root_real, file_rows, workers))
    entries: list[Entry] = []
    for _, rel, st, link in rows:
        perm, kind = stat.S_IMODE(st.st_mode), kind_of(st.st_mode)
        warnings += _mode_warnings(rel, kind, perm)
        path, path_b64 = make_entry_path(rel)
        if kind == "file":
            res = next(hashed)
            if res.digest is None:
                problems.append(f"{display(rel)}: {res.problem}: {res.detail}")
            elif res.secret_key:
                problems.append(f"{display(rel)}: looks like a minisign secret key; keys must never ship in a release")
            else:
                entries.append(File(path=path, path_b64=path_b64, mode=perm, size=st.st_size, blake3=res.digest))
        elif kind == "symlink":
            if leaves_tree(rel, link or ""):
                warnings.append(f"{display(rel)}: symlink to {display(link or '')!r} points outside the tree")
            target, target_b64 = make_entry_path(link or "")
            entries.append(Symlink(path=path, path_b64=path_b64, mode=perm, target=target, target_b64=target_b64))
        elif kind == "unknown":
            problems.append(f"{display(rel)}: unknown file type {stat.S_IFMT(st.st_mode):o}")
        else:
            entries.append(PLAIN_TYPES[kind](path=path, path_b64=path_b64, mode=perm))
    return entries


def _mode_warnings(rel: str, kind: str, perm: int) -> list[str]:
    if kind in ("symlink", "unknown"):
        return []
    out = []
    if perm & stat.S_IWOTH and not (kind == "dir" and perm & stat.S_ISVTX):
        out.append(f"{display(rel)}: world-writable ({perm:04o})")
    if kind == "file" and perm & (stat.S_ISUID | stat.S_ISGID):
        out.append(f"{display(rel)}: setuid/setgid ({perm:04o})")
    return out


_CODE_SAMPLES = (
    ("pkg/__pycache__", True),
    ("pkg/__pycache__/mod.cpython-311.pyc", False),
    ("pkg/mod.pyc", False),
    ("pkg/_speedups.cpython-311-x86_64-linux-gnu.so", False),
    ("pkg/lib.so", False),
    ("site-packages/extra.pth", False),
    ("pkg/mod.py", False),
    ("sitecustomize.py", False),
)
"""Paths an interpreter loads as code: excluding any of them lets code go unchecked."""


def code_exclusion_warnings(excluder: Excluder) -> list[str]:
    """A warning for each kind of code the exclusion patterns would leave unchecked.

    CPython prefers a ``__pycache__/*.pyc`` whose header says "unchecked hash" over
    the ``.py`` beside it, so excluded bytecode is a place to hide code in a tree
    that still verifies. Compile bytecode at build time instead, so it is covered.
    """
    if not excluder:
        return []
    # Asked of the plain patterns: sample paths must not be recorded as left out of this tree.
    hit = sorted({rel for rel, is_dir in _CODE_SAMPLES if Excluder.excluded(excluder, rel, is_dir)})
    if not hit:
        return []
    return [
        "the exclusion patterns leave code unchecked (for example "
        + ", ".join(hit[:3])
        + "): an interpreter loads it, so an attacker can hide code there and the tree still verifies; "
        "compile bytecode at build time and keep it in the manifest instead (docs/threat-model.md)"
    ]


def _excluded_part(
    root_real: str, excluder: RecordingExcluder, secret_key_paths: Sequence[str], shipped: Sequence[str] = ()
) -> list[str]:
    """Refuse a tree whose excluded part holds a secret key or the signing key itself: excluded files
    are not hashed, but they ship with the release all the same, as do the tool's own files at the
    root that this build does not overwrite (``shipped``). Warn about code left out (an attacker
    can change or add it and the tree still verifies), and when the look was cut short."""
    left_out = [*excluder.seen, *((rel, False) for rel in shipped)]
    scan = excluded_secret_keys(root_real, left_out, secret_key_paths)
    if scan.found:
        raise TreeError(
            f"excluded from the manifest but a minisign secret key (or the signing key itself): "
            f"{', '.join(display(p) for p in scan.found)}; excluded files still ship with the release, "
            "and keys must never ship: move them out of the tree"
        )
    warnings = []
    if scan.code:
        warnings.append(
            f"excluded from the manifest but loadable as code: {', '.join(display(p) for p in scan.code[:3])}"
            + (" ..." if len(scan.code) > 3 else "")
            + "; an attacker can change or add such files and the tree still verifies (docs/threat-model.md)"
        )
    if not (scan.complete and not excluder.missed):
        if scan.unread:
            why = f"{display(scan.unread[0])} could not be listed or read" + (" (and more)" if scan.unread[1:] else "")
        elif excluder.missed:
            why = f"over {excluder.LIMIT:,} paths were excluded"
        else:
            why = f"it holds over {ENTRY_LIMIT:,} entries"
        warnings.append(
            "the excluded part of the tree could not be checked fully for minisign secret keys or links to "
            f"the signing key ({why}); make sure no signing key is in it"
        )
    return warnings


def leaves_tree(rel: str, target: str) -> bool:
    """True when a symlink at ``rel`` with ``target`` points outside the tree (judged by its text)."""
    if target.startswith("/"):
        return True
    depth = rel.count("/")
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def check_labels(deployment: str, release: str) -> None:
    """Refuse a deployment name or release label the verifier would refuse (same rules as decoding)."""
    import re

    from .manifest import DEPLOYMENT_PATTERN, check_release

    if not re.fullmatch(DEPLOYMENT_PATTERN, deployment):
        raise ManifestError(
            f"deployment {deployment!r} is not a valid name (letters, digits, '.', '_', '-'; "
            "up to 100 characters, starting with a letter or digit)"
        )
    check_release(release)  # before the walk: a bad label fails at once, in words, not after hashing


def write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write via a temporary file in the same directory and rename, so readers never see half a file."""
    try:
        replace_file(path, data, mode)
    except OSError as exc:
        raise IntegrityError(f"cannot write {path!r}: {exc.strerror or exc}") from None


def signature_for(data: bytes, manifest: Manifest, secret_key: Any, file_name: str) -> bytes:
    """The .minisig text for a manifest's exact bytes; its trusted comment names release, serial, root."""
    comment = make_trusted_comment(
        file_name, manifest.deployment, manifest.release, manifest.serial, manifest.root_digest
    )
    return sign_bytes(data, secret_key, comment)


def sign_manifest(
    manifest_path: str,
    secret_key_path: str,
    *,
    password: str | None = None,
    allow_insecure_key: bool = False,
    signature_path: str | None = None,
) -> str:
    """Sign an existing manifest file's exact bytes; return the signature file's path."""
    from .files import UnreadableFile, read_file
    from .manifest import MAX_MANIFEST_BYTES, decode_manifest

    try:
        data = read_file(manifest_path, MAX_MANIFEST_BYTES, "manifest")
    except UnreadableFile as exc:
        raise ManifestError(str(exc)) from None
    # Refuse to vouch for bytes that are not a valid manifest.
    m = decode_manifest(data)
    sk = load_secret_key(secret_key_path, password, allow_insecure_permissions=allow_insecure_key)
    try:
        sig = signature_for(data, m, sk, os.path.basename(manifest_path))
    finally:
        sk.wipe()
    out = signature_path or signature_path_for(manifest_path)
    write_atomic(out, sig)
    return out

"""The stat snapshot behind quick mode.

After a verification that found the tree intact, the (device, inode, size,
mtime, ctime) of every regular file is kept in a cache file outside the tree,
tied to the manifest's root digest: one fixed-size record per manifest entry,
in the manifest's order, so a 100,000-file snapshot is 4 MB of bytes rather
than 100,000 Python objects. A quick run re-hashes only files whose stat
differs, or whose timestamps were too close to the snapshot to be trusted (the
"racily clean" case: a write in the same timestamp tick as the snapshot would
leave mtime unchanged).

The snapshot is authenticated with a keyed BLAKE3 MAC (the key lives beside it,
mode 0600), so a corrupted or edited snapshot is ignored with a note and the
run falls back to hashing everything. That protects against accidents and
against other users, not against the verifier's own user: whoever can write the
cache directory as that user can forge a snapshot, so a cache directory that
group, others or another user can write is refused (every file is hashed).

Quick mode trusts the filesystem's timestamps. It is weaker than a full check
against anyone who can set ctime (root, raw access to the disk), and against a
writer holding a shared writable mapping of a file: a store to a page that is
already dirty changes the content without updating mtime or ctime again. Run
full verifications periodically (docs/threat-model.md).
"""

import os
import struct

import msgspec
from blake3 import blake3

from .errors import IntegrityError
from .files import UnreadableFile, check_private_dir, read_file, replace_file

__all__ = [
    "RACY_NS",
    "RECORD",
    "Snapshot",
    "default_cache_dir",
    "load_snapshot",
    "save_snapshot",
    "snapshot_path",
]

RACY_NS = 2_000_000_000
"""Files changed less than this long before the snapshot are re-hashed (coarse timestamps)."""
_FORMAT = "duri-integrity-snapshot/2"
RECORD = struct.Struct("<QQQqq")
"""One file's (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns); all zeros for "not known"."""
_MAX_BYTES = 64 << 20


class _Header(msgspec.Struct, kw_only=True):
    format: str
    root: str
    root_digest: str
    taken_ns: int
    entries: int


class Snapshot:
    """One record per manifest entry, in the manifest's order (it is tied to one root digest)."""

    def __init__(self, root: str, root_digest: str, taken_ns: int, records: bytes | bytearray) -> None:
        self.root = root
        self.root_digest = root_digest
        self.taken_ns = taken_ns
        self.records = records

    def settled_before(self) -> int:
        """Files whose mtime and ctime are both before this (ns) cannot hide a same-tick write."""
        return self.taken_ns - RACY_NS


_header_decoder = msgspec.json.Decoder(_Header)


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "duri-integrity")


def snapshot_path(cache_dir: str, root_real: str, root_digest: str) -> str:
    name = blake3(f"{root_real}\x00{root_digest}".encode(errors="surrogateescape")).hexdigest()[:32]
    return os.path.join(cache_dir, f"snapshot-{name}.bin")


def _key(cache_dir: str, create: bool) -> bytes | None:
    """The MAC key: 32 random bytes in a private file beside the snapshots, made on first use."""
    path = os.path.join(cache_dir, "snapshot.key")
    try:
        key = read_file(path, 32, "snapshot key", follow_symlinks=False, private=True)
    except UnreadableFile as exc:
        if not exc.missing or not create:
            return None
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return _key(cache_dir, create=False)
        key = os.urandom(32)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        return key
    except IntegrityError:  # another user's, or writable by others
        return None
    return key if len(key) == 32 else None


def _mac(key: bytes, body: bytes | memoryview) -> bytes:
    return blake3(body, key=key).hexdigest().encode()


def _private_cache(cache_dir: str) -> str | None:
    """None when the cache directory is safe to trust, else why it is not (quick mode then hashes all)."""
    try:
        check_private_dir(cache_dir, "quick-mode cache directory", create=True)
    except IntegrityError as exc:
        return str(exc)
    return None


def load_snapshot(cache_dir: str, root_real: str, root_digest: str, entries: int) -> tuple[Snapshot | None, str | None]:  # noqa: PLR0911 - each way a snapshot can be unusable returns its own note
    """Return the snapshot for this root and manifest, or None with the reason it was not used.

    The cache directory must be writable by no one but this user or root: whoever can
    write it can forge a snapshot (the MAC key lives there) and make quick mode skip files.
    """
    unsafe = _private_cache(cache_dir)
    if unsafe:
        return None, f"{unsafe}: no snapshot used, every file was hashed"
    path = snapshot_path(cache_dir, root_real, root_digest)
    try:
        data = read_file(path, _MAX_BYTES, "snapshot", follow_symlinks=False, private=True)
    except UnreadableFile as exc:
        if exc.missing:
            return None, "no snapshot yet: every file was hashed"
        return None, f"{exc}: every file was hashed"
    except IntegrityError as exc:
        return None, f"{exc}: every file was hashed"
    import hmac  # only here: hashlib's OpenSSL set-up costs ~4 ms of every verify's start-up

    key = _key(cache_dir, create=False)
    mac, _, body = data.partition(b"\n")
    if key is None or not hmac.compare_digest(mac, _mac(key, body)):
        return None, f"snapshot {path} ignored: it does not check out (edited or corrupt)"
    header_line, _, records = body.partition(b"\n")
    try:
        header = _header_decoder.decode(header_line)
    except msgspec.MsgspecError:
        return None, f"snapshot {path} ignored: unreadable header"
    if (
        header.format != _FORMAT
        or header.root != root_real
        or header.root_digest != root_digest
        or header.entries != entries
        or len(records) != RECORD.size * entries
    ):
        return None, f"snapshot {path} ignored: it belongs to another tree or manifest"
    return Snapshot(root_real, root_digest, header.taken_ns, records), None


def save_snapshot(cache_dir: str, snapshot: Snapshot) -> str | None:
    """Write the snapshot atomically; return a note if it could not be written (never raises)."""
    unsafe = _private_cache(cache_dir)
    if unsafe:
        return f"snapshot not saved: {unsafe}"
    path = snapshot_path(cache_dir, snapshot.root, snapshot.root_digest)
    header = _Header(
        format=_FORMAT,
        root=snapshot.root,
        root_digest=snapshot.root_digest,
        taken_ns=snapshot.taken_ns,
        entries=len(snapshot.records) // RECORD.size,
    )
    try:
        key = _key(cache_dir, create=True)
        if key is None:
            return f"snapshot not saved: {cache_dir}/snapshot.key is not a private file of this user"
        body = msgspec.json.encode(header) + b"\n" + bytes(snapshot.records)
        replace_file(path, _mac(key, body) + b"\n" + body, 0o600)
    except OSError as exc:
        return f"snapshot not saved in {cache_dir}: {exc.strerror or exc}"
    return None

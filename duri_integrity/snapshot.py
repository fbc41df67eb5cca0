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
run falls back to hashing everything. Quick mode trusts the filesystem's
timestamps: it is weaker than a full check against anyone who can set ctime
(root, or raw access to the disk).
"""

import os
import stat
import struct

import msgspec
from blake3 import blake3

from .files import replace_file

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
    path = os.path.join(cache_dir, "snapshot.key")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        if not create:
            return None
        key = os.urandom(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            return _key(cache_dir, create=False)
        try:
            os.write(fd, key)
        finally:
            os.close(fd)
        return key
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            return None
        key = os.read(fd, 33)
    finally:
        os.close(fd)
    return key if len(key) == 32 else None


def _mac(key: bytes, body: bytes | memoryview) -> bytes:
    return blake3(body, key=key).hexdigest().encode()


def load_snapshot(cache_dir: str, root_real: str, root_digest: str, entries: int) -> tuple[Snapshot | None, str | None]:
    """Return the snapshot for this root and manifest, or None with the reason it was not used."""
    path = snapshot_path(cache_dir, root_real, root_digest)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None, "no snapshot yet: every file was hashed"
    except OSError as exc:
        return None, f"snapshot {path} unreadable ({exc.strerror}): every file was hashed"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return None, f"snapshot {path} ignored: not a private file of this user"
        data = os.read(fd, _MAX_BYTES + 1)
    finally:
        os.close(fd)
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
    path = snapshot_path(cache_dir, snapshot.root, snapshot.root_digest)
    header = _Header(
        format=_FORMAT,
        root=snapshot.root,
        root_digest=snapshot.root_digest,
        taken_ns=snapshot.taken_ns,
        entries=len(snapshot.records) // RECORD.size,
    )
    try:
        os.makedirs(cache_dir, mode=0o700, exist_ok=True)
        key = _key(cache_dir, create=True)
        if key is None:
            return f"snapshot not saved: {cache_dir}/snapshot.key is not a private file of this user"
        body = msgspec.json.encode(header) + b"\n" + bytes(snapshot.records)
        replace_file(path, _mac(key, body) + b"\n" + body, 0o600)
    except OSError as exc:
        return f"snapshot not saved in {cache_dir}: {exc.strerror or exc}"
    return None

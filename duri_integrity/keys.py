"""Keys and detached signatures in the minisign formats.

Signatures are checked over the exact manifest bytes before anything parses
those bytes. Keys are matched by key id, so several trusted keys can coexist.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import re
import time
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from . import speedups
from .errors import BadSignature, IntegrityError, KeyFileError, UnknownKey
from .files import check_file_dirs, check_owner_and_mode, read_file
from .signing import SigningKey, load_secret_key, sign_bytes

__all__ = [
    "MAX_SIGNATURE_BYTES",
    "PublicKey",
    "SignatureInfo",
    "SigningKey",
    "TrustedKeys",
    "format_key_id",
    "generate_keypair",
    "is_inline_key",
    "key_files",
    "load_public_key",
    "load_revoked_key_ids",
    "load_secret_key",
    "load_trusted_keys",
    "looks_like_secret_key",
    "parse_public_key",
    "parse_trusted_comment",
    "revoked_ids_from",
    "sign_bytes",
    "trusted_keys_from",
    "verify_signature",
]

try:  # hashlib's own BLAKE2 module, without hashlib's ~3 ms of OpenSSL set-up at start-up
    from _blake2 import blake2b as _blake2b
except ImportError:  # pragma: no cover - other Python implementations
    from hashlib import blake2b as _blake2b

_MAX_KEY_FILE = 4096
MAX_SIGNATURE_BYTES = 16384
"""A minisign signature file is well under this, trusted comment included."""


def format_key_id(key_id: bytes) -> str:
    """Render a key id exactly as the minisign tool prints it: the little-endian 64-bit number
    in upper-case hex, without leading zeros (``printf("%" PRIX64)``)."""
    return f"{int.from_bytes(key_id, 'little'):X}"


class SignatureInfo(NamedTuple):
    key_id: str
    trusted_comment: str


class PublicKey(NamedTuple):
    """A minisign public key: 8-byte key id and 32-byte Ed25519 key."""

    key_id: bytes
    key: bytes


class TrustedKeys:
    """Trusted public keys by key id."""

    def __init__(self, keys: Mapping[bytes, PublicKey]) -> None:
        self._keys = dict(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, key_id: bytes) -> PublicKey | None:
        return self._keys.get(key_id)

    @property
    def key_ids(self) -> list[str]:
        return sorted(format_key_id(k) for k in self._keys)


def _read_small(path: str, limit: int, what: str, *, private: bool = False) -> bytes:
    try:
        return read_file(path, limit, what, private=private)
    except IntegrityError as exc:
        raise KeyFileError(str(exc)) from None


def _b64(line: bytes | str, length: int, what: str) -> bytes:
    try:
        raw = base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None
    if len(raw) != length:
        raise ValueError(f"{what} has the wrong length")
    return raw


def parse_public_key(text: bytes | str) -> PublicKey:
    """Parse a minisign public key: the two-line file, or its base64 line alone."""
    lines = text.splitlines() if isinstance(text, bytes) else text.encode().splitlines()
    if len(lines) == 2:
        if not lines[0].startswith(b"untrusted comment: "):
            raise ValueError("the first line is not an 'untrusted comment:' line")
        lines = lines[1:]
    if len(lines) != 1:
        raise ValueError("a public key has two lines")
    raw = _b64(lines[0].strip(), 42, "the key")
    if raw[:2] != b"Ed":
        raise ValueError("not an Ed25519 minisign key")
    return PublicKey(raw[2:10], raw[10:])


def is_inline_key(text: str) -> bool:
    """True when ``text`` is, by its form alone, a minisign public key's base64 line.

    Whether a value is a key or a path is decided here by syntax and never by what
    exists on disk: a file planted under a key's name must not decide the trusted key.
    """
    if len(text) != 56 or not text.startswith("RW"):
        return False
    try:
        return base64.b64decode(text, validate=True)[:2] == b"Ed"
    except (binascii.Error, ValueError):
        return False


def load_public_key(source: str, *, what: str = "public key") -> PublicKey:
    """Load a public key given inline (its base64 line) or as a ``.pub`` file.

    A key file must be a regular file that no one but its owner (this user or root)
    can write: whoever can replace a trusted key decides what is trusted.
    """
    if is_inline_key(source):
        return parse_public_key(source)
    _check_location(source, what)
    data = _read_small(source, _MAX_KEY_FILE, what, private=True)
    if looks_like_secret_key(data):
        raise KeyFileError(f"{source!r} is a secret key, not a public key: give the .pub file instead")
    try:
        return parse_public_key(data)
    except ValueError as exc:
        raise KeyFileError(f"not a minisign public key: {source!r} ({exc})") from None


SECRET_KEY_HEAD = 4096
"""How much of a file's start :func:`looks_like_secret_key` needs: minisign 0.11 takes a
comment line of about 1,020 bytes at most, then the key's base64 line (212 characters)."""
_SECRET_KEY_BYTES = 158
"""A minisign secret key decoded: "Ed", the KDF ("Sc" or none), "B2", salt, limits, key id, key, checksum."""
_SECRET_KEY_LINE = 212
"""Its base64 line: 158 bytes are 212 characters with their one "=" of padding."""


def looks_like_secret_key(head: bytes | bytearray | memoryview) -> bool:
    """True if ``head`` (a file's first bytes) holds a minisign secret key's base64 line.

    minisign 0.11 loads any first line (not only "untrusted comment:", and after a UTF-8
    BOM) followed by the key's base64 line, and ignores whatever follows it; but a key
    pasted lower down, after a comment line, behind ``KEY=`` or inside JSON is the key all
    the same and must not ship. So the line is looked for anywhere in ``head``, whatever comes
    before it (a URL's "/", a name without "=", a decoy "RW..." running into it) or after it:
    211 base64 characters that, with an "=", decode to a whole secret key (158 bytes, "Ed" ...
    "B2"), not because they start like one. That structure, not a word boundary, keeps other
    base64 from being taken for a key. A key wrapped over several lines, compressed or
    otherwise re-encoded is not recognised.
    """
    head = head[:SECRET_KEY_HEAD]
    # Build asks this of every file it hashes. Both searches are linear in the head whatever it
    # holds (4 KiB of "RW" repeated included): the fixed characters of a key line turn away
    # every other start before its base64 run is counted. The extension's is ~0.1 us for 4 KiB,
    # the regular expression's ~1.5 us.
    find = speedups.find_key_line
    at = find(head, 0) if find is not None else _find_key_line(head, 0)
    while at >= 0:
        if _is_key_line(bytes(head[at : at + _SECRET_KEY_LINE - 1]) + b"="):  # every match is checked
            return True
        at = find(head, at + 1) if find is not None else _find_key_line(head, at + 1)
    return False


_KEY_LINE = rb"RW[QRST][A-Za-z0-9+/]{2}[EUk0]Iy[A-Za-z0-9+/]{203}"
"""A secret key's base64 line without its "=": "Ed" is "RW" and one of "QRST" (the low bits of
"d"), "B2" at bytes 4 and 5 is one of "EUk0" and then "Iy" at characters 5 to 7; 211 characters
in all. Exactly the lines :func:`_is_key_line` accepts once an "=" is added."""


@functools.cache
def _key_line_pattern() -> re.Pattern[bytes]:
    """:data:`_KEY_LINE` compiled on first use: with the extension only the tests need it, and
    compiling it cost every start-up 0.2 ms."""
    return re.compile(_KEY_LINE)


def _find_key_line(head: bytes | bytearray | memoryview, start: int) -> int:
    m = _key_line_pattern().search(head, start)
    return -1 if m is None else m.start()


def _is_key_line(line: bytes) -> bool:
    """Whether one line decodes to a whole secret key (only a 212-character line starting with
    "RW", the base64 of "Ed", can)."""
    if len(line) != _SECRET_KEY_LINE or not line.startswith(b"RW"):
        return False
    try:
        raw = base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(raw) == _SECRET_KEY_BYTES and raw[:2] == b"Ed" and raw[4:6] == b"B2"


def _check_location(path: str, what: str) -> None:
    """The directories holding a key or revocation file, as named and as resolved, must be writable
    by no one but root and its owner: whoever can replace the file (or a link to it) decides trust."""
    try:
        check_file_dirs(path, what)
    except IntegrityError as exc:
        raise KeyFileError(str(exc)) from None


def key_files(sources: Iterable[str], what: str, suffix: str = "") -> list[str]:
    """Each source as given (inline keys too), or, for a directory, its entries ending in
    ``suffix`` (every entry when it is empty), sorted."""
    files: list[str] = []
    for src in sources:
        if is_inline_key(src) or not os.path.isdir(src):
            files.append(src)
            continue
        try:
            check_owner_and_mode(os.stat(src), src, f"{what} directory")
            names = sorted(os.listdir(src))
        except OSError as exc:
            raise KeyFileError(f"cannot list {what} directory {src!r}: {exc.strerror}") from None
        except IntegrityError as exc:
            raise KeyFileError(str(exc)) from None
        files += [os.path.join(src, n) for n in names if n.endswith(suffix)]
    return files


def load_trusted_keys(sources: Iterable[str]) -> TrustedKeys:
    """Load keys given inline, as files, or as directories of ``*.pub`` files.

    Other names in a trusted-key directory are not read: leaving one out can only
    trust less. (A revocation directory is the opposite; see below.)
    """
    return trusted_keys_from(key_files(sources, "trusted-key", ".pub"))


def trusted_keys_from(files: Iterable[str]) -> TrustedKeys:
    """The keys in ``files`` as :func:`key_files` listed them (so a caller lists each directory once)."""
    keys = [load_public_key(path, what="trusted key") for path in files]
    return TrustedKeys({pk.key_id: pk for pk in keys})


def load_revoked_key_ids(sources: Iterable[str]) -> set[str]:
    """Key ids (as minisign prints them) from public keys, directories of them, or id lists.

    Every file is parsed by its content, whatever its name: a public key (the
    two-line ``.pub`` file or its base64 line) or an id list, one key id per line
    as minisign prints it (hex, at most 16 digits; leading zeros optional; ``#``
    starts a comment). A file that is neither is an error, never skipped.
    """
    # Every entry of a revocation directory is read, whatever its name (``leaked-key``,
    # ``REVOKED.TXT``): skipping one would silently keep trusting a revoked key.
    return revoked_ids_from(key_files(sources, "revoked-key"))


def revoked_ids_from(files: Iterable[str]) -> set[str]:
    """The revoked key ids in ``files`` as :func:`key_files` listed them."""
    revoked: set[str] = set()
    for path in files:
        if is_inline_key(path):
            revoked.add(format_key_id(parse_public_key(path).key_id))
            continue
        _check_location(path, "revoked-key list")
        data = _read_small(path, 1 << 20, "revoked-key list", private=True)
        if looks_like_secret_key(data):
            raise KeyFileError(f"{path!r} is a secret key: revoke a key by its .pub file or its key id")
        try:
            revoked.add(format_key_id(parse_public_key(data).key_id))
        except ValueError:  # not a public key: it must be an id list
            revoked |= _parse_id_list(path, data)
    return revoked


_MIN_KEY_ID_DIGITS = 12
"""minisign prints key ids without leading zeros; fewer than 12 digits happens for one key in 65,536."""


def _parse_id_list(path: str, data: bytes) -> set[str]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: neither a public key nor a list of key ids (not UTF-8 text)") from None
    ids: set[str] = set()
    for n, line in enumerate(text.splitlines(), 1):
        item = line.split("#", 1)[0].strip()
        if not item:
            continue
        if not 0 < len(item) <= 16 or any(c not in "0123456789abcdefABCDEF" for c in item):
            raise KeyFileError(f"{path}:{n}: {item[:40]!r} is neither a key id (up to 16 hex digits) nor a public key")
        if len(item) < _MIN_KEY_ID_DIGITS:
            # Most likely a truncated id (as short git hashes are), which would revoke nothing.
            raise KeyFileError(
                f"{path}:{n}: {item!r} is shorter than a key id: give all its hex digits as minisign prints "
                "them (leading zeros may be written out to 16 digits)"
            )
        ids.add(format_key_id(int(item, 16).to_bytes(8, "little")))
    return ids


def _write_new(path: str, data: bytes, mode: int, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    target = path
    if force:
        target = f"{path}.tmp{os.getpid()}"
    try:
        fd = os.open(target, flags, mode)
    except FileExistsError:
        raise KeyFileError(f"{path!r} already exists (use --force to replace it)") from None
    except OSError as exc:
        raise KeyFileError(f"cannot create {path!r}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, mode)  # the umask must not loosen or tighten what we asked for
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if force:
        os.replace(target, path)


def generate_keypair(
    secret_key_path: str, public_key_path: str, *, password: str | None = None, force: bool = False
) -> str:
    """Write a new minisign key pair; return its key id. The secret key file is mode 0600."""
    import minisign

    kp = minisign.KeyPair.generate()
    sk, pk = kp.secret_key, kp.public_key
    try:
        if password:
            sk.encrypt(password)
        key_id = parse_public_key(pk.to_base64()).key_id
        sk.untrusted_comment = f"minisign secret key {format_key_id(key_id)}"
        pk.untrusted_comment = f"minisign public key {format_key_id(key_id)}"
        _write_new(secret_key_path, bytes(sk) + b"\n", 0o600, force)
        _write_new(public_key_path, bytes(pk) + b"\n", 0o644, force)
    finally:
        sk.wipe()
    return format_key_id(key_id)


def verify_signature(data: bytes, signature: bytes, trusted: TrustedKeys) -> SignatureInfo:
    """Check a minisign signature over exactly ``data`` against the trusted keys.

    Parsed here rather than with py-minisign: this runs in every ``verify``
    process, and importing py-minisign (serialization, scrypt) costs about
    30 ms of start-up that Ed25519 verification alone does not need.
    """
    if len(signature) > MAX_SIGNATURE_BYTES:
        raise BadSignature("signature file is too large to be a minisign signature")
    lines = signature.splitlines()
    try:
        if len(lines) != 4:
            raise ValueError("a signature has four lines")
        if not lines[0].startswith(b"untrusted comment: ") or not lines[2].startswith(b"trusted comment: "):
            raise ValueError("comment lines are missing")
        sig = _b64(lines[1], 74, "the signature")
        global_sig = _b64(lines[3], 64, "the global signature")
        trusted_comment = lines[2][len(b"trusted comment: ") :].decode("utf-8")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadSignature(f"malformed signature ({exc})") from None
    algorithm, key_id, sig_bytes = sig[:2], sig[2:10], sig[10:]
    if algorithm not in (b"ED", b"Ed"):
        raise BadSignature(f"malformed signature (unknown algorithm {algorithm!r})")
    pk = trusted.get(key_id)
    if pk is None:
        raise UnknownKey(
            f"signed by key {format_key_id(key_id)}, which is not a trusted key "
            f"(trusted: {', '.join(trusted.key_ids) or 'none'})"
        )
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    message = _blake2b(data).digest() if algorithm == b"ED" else data
    try:
        verifier = Ed25519PublicKey.from_public_bytes(pk.key)
        verifier.verify(sig_bytes, message)
        verifier.verify(global_sig, sig_bytes + lines[2][len(b"trusted comment: ") :])
    except (InvalidSignature, ValueError):
        raise BadSignature(
            f"signature by key {format_key_id(key_id)} does not match the manifest or its trusted comment"
        ) from None
    return SignatureInfo(format_key_id(key_id), trusted_comment)


def make_trusted_comment(file_name: str, deployment: str, release: str, serial: int, root_digest: str) -> str:
    """What ``minisign -V`` shows and the verifier cross-checks against the manifest body."""
    fields = [f"timestamp:{int(time.time())}", f"file:{file_name}", "hashed", f"deployment:{deployment}"]
    if release:
        fields.append(f"release:{release}")
    fields += [f"serial:{serial}", f"root:{root_digest}"]
    return "\t".join(fields)


def parse_trusted_comment(comment: str) -> dict[str, str]:
    """Tab-separated ``key:value`` fields; anything else is kept under its own text."""
    out: dict[str, str] = {}
    for part in comment.split("\t"):
        k, sep, v = part.partition(":")
        out[k] = v if sep else ""
    return out

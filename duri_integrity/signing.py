"""Signing with a minisign secret key: loading (and if needed decrypting) it, and signing bytes.

Signing is done with ``cryptography`` directly: minisign's signatures are plain Ed25519 over the
data's BLAKE2b-512, and its unencrypted key files are a fixed layout, so the build path does not
import py-minisign (about 40-50 ms of start-up). py-minisign is used only to decrypt a
password-protected key (scrypt with minisign's parameters) and, in :mod:`keys`, to generate keys.
The output is byte for byte what py-minisign writes (Ed25519 is deterministic).
"""

from __future__ import annotations

import base64
import binascii

from .errors import IntegrityError, KeyFileError
from .files import read_file

try:  # hashlib's own BLAKE2 module, without hashlib's ~3 ms of OpenSSL set-up at start-up
    from _blake2 import blake2b as _blake2b
except ImportError:  # pragma: no cover - other Python implementations
    from hashlib import blake2b as _blake2b

__all__ = ["SigningKey", "load_secret_key", "sign_bytes"]

_MAX_KEY_FILE = 4096

_SECRET_KEY_FILE_BYTES = 158

OPSLIMIT_MAX = 33_554_432
MEMLIMIT_MAX = 1_073_741_824
"""The most a password-protected key may ask of scrypt: what ``minisign -G`` itself writes
(libsodium's ``crypto_pwhash_scryptsalsa208sha256_OPSLIMIT_SENSITIVE`` and ``_MEMLIMIT_SENSITIVE``;
minisign only ever lowers them). The key file stores these limits, so without a bound whoever hands
us a key file decides how much memory and time deriving its key takes (up to 2**64 operations)."""
_UNTRUSTED = b"untrusted comment: "
_TRUSTED_MAX = 8192 - len("trusted comment: ")
"""minisign's limit on a trusted comment (its line, prefix included, fits 8,192 bytes)."""


class SigningKey:
    """A minisign secret key, decrypted: its key id and Ed25519 seed (zeroed by :meth:`wipe`)."""

    __slots__ = ("_seed", "key_id")

    def __init__(self, key_id: bytes, seed: bytearray) -> None:
        self.key_id = key_id
        self._seed = seed

    def sign(self, message: bytes) -> bytes:
        """The Ed25519 signature of ``message`` (deterministic: the same bytes py-minisign makes)."""
        if not any(self._seed):
            raise KeyFileError("cannot sign: the secret key has been wiped")
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return Ed25519PrivateKey.from_private_bytes(bytes(self._seed)).sign(message)

    def wipe(self) -> None:
        self._seed[:] = bytes(len(self._seed))


def load_secret_key(path: str, password: str | None = None, *, allow_insecure_permissions: bool = False) -> SigningKey:
    """Load (and if needed decrypt) a minisign secret key, refusing one others can read."""
    try:
        # The one reader: regular file, no blocking, size limit, and (unless allowed otherwise)
        # owner and mode checked on the descriptor that is read, not on an earlier stat.
        data = read_file(path, _MAX_KEY_FILE, "secret key", secret=not allow_insecure_permissions)
    except IntegrityError as exc:
        raise KeyFileError(str(exc)) from None
    try:
        raw = bytearray(_secret_key_bytes(data))
        if not _plain_key_checks_out(raw):
            if raw[2:4] != b"Sc":
                raise ValueError("corrupt key: its checksum does not match")
            if password is None:
                raise KeyFileError(f"secret key {path!r} is encrypted and no password was given")
            _check_kdf_limits(raw)
            raw = _decrypt(data, password)
        return _signing_key(raw)
    except ValueError as exc:
        raise KeyFileError(f"cannot use secret key {path!r}: {exc}") from None


def _secret_key_bytes(data: bytes) -> bytes:
    """The decoded key line of a minisign secret key file (as minisign and py-minisign read it)."""
    lines = data.splitlines()
    if len(lines) != 2:
        raise ValueError("invalid number of lines")
    if not lines[0].startswith(_UNTRUSTED):
        raise ValueError("invalid comment prefix")
    try:
        raw = base64.b64decode(lines[1], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("invalid base64 encoding") from None
    if len(raw) != _SECRET_KEY_FILE_BYTES:
        raise ValueError("invalid encoded length")
    if raw[:2] != b"Ed" or raw[2:4] not in (b"\0\0", b"Sc") or raw[4:6] != b"B2":
        raise ValueError("unsupported key algorithm")
    return raw


def _plain_key_checks_out(raw: bytearray) -> bool:
    """Whether the key part is in the clear: its BLAKE2b-256 checksum (minisign's) matches, or, for
    a key stored without a KDF, is all zeros (as ``minisign -G -W`` writes it; minisign does not
    check it then). The public half is checked against the seed either way (:func:`_signing_key`)."""
    keynum = raw[54:]  # key id (8), seed (32), public key (32), checksum (32)
    if raw[2:4] == b"\0\0" and not any(keynum[72:]):
        return True
    return _blake2b(raw[:2] + keynum[:72], digest_size=32).digest() == keynum[72:]


def _check_kdf_limits(raw: bytearray) -> None:
    """Refuse scrypt limits above minisign's own before deriving anything (the layout after "EdScB2":
    salt (32), opslimit and memlimit (little-endian 64-bit), then the encrypted key part)."""
    opslimit = int.from_bytes(raw[38:46], "little")
    memlimit = int.from_bytes(raw[46:54], "little")
    if opslimit > OPSLIMIT_MAX or memlimit > MEMLIMIT_MAX:
        raise ValueError(
            f"its password key derivation asks for more than minisign's own limits (opslimit {opslimit:,}, "
            f"memlimit {memlimit:,} bytes; at most {OPSLIMIT_MAX:,} and {MEMLIMIT_MAX:,}): "
            "not a key minisign or duri-integrity made"
        )


def _decrypt(data: bytes, password: str) -> bytearray:
    """The key line of a password-protected key, decrypted: the one format py-minisign is needed for
    (scrypt with minisign's parameters)."""
    import minisign

    try:
        sk = minisign.SecretKey.from_bytes(data)
        try:
            sk.decrypt(password)
            return bytearray(base64.b64decode(sk.to_base64()))
        finally:
            sk.wipe()
    except minisign.Error as exc:
        raise ValueError(str(exc)) from None
    except MemoryError:  # scrypt could not get the memory the key's (bounded) limits ask for
        raise ValueError(
            "not enough memory to derive the key from the password "
            f"(a key minisign makes needs up to {MEMLIMIT_MAX >> 20:,} MiB)"
        ) from None


def _signing_key(raw: bytearray) -> SigningKey:
    """The key id and seed of a decrypted key line, once its public half is the seed's."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key_id, seed, public = bytes(raw[54:62]), bytearray(raw[62:94]), bytes(raw[94:126])
        derived = Ed25519PrivateKey.from_private_bytes(bytes(seed)).public_key()
        if derived.public_bytes_raw() != public:  # not public_bytes(): its enums import ~15 ms of serialization
            seed[:] = bytes(32)
            raise ValueError("corrupt key: its public half is not its secret half's")
        return SigningKey(key_id, seed)
    finally:
        raw[:] = bytes(len(raw))


def sign_bytes(data: bytes, secret_key: SigningKey, trusted_comment: str) -> bytes:
    """Sign data (BLAKE2b-prehashed Ed25519, minisign's default); return the .minisig text.

    Byte for byte what py-minisign's ``SecretKey.sign(prehash=True)`` writes (Ed25519 is
    deterministic): the signature over the data's BLAKE2b-512, then the global signature over
    that signature and the trusted comment.
    """
    if any(c != "\t" and not " " <= c < "\x7f" for c in trusted_comment):
        raise KeyFileError("cannot sign: the trusted comment has a line break or an unprintable character")
    if len(trusted_comment) > _TRUSTED_MAX:
        raise KeyFileError("cannot sign: trusted comment too long")
    sig = secret_key.sign(_blake2b(data).digest())
    comment = trusted_comment.encode()
    global_sig = secret_key.sign(sig + comment)
    return b"\n".join(
        (
            _UNTRUSTED + b"signature from duri-integrity secret key",
            base64.b64encode(b"ED" + secret_key.key_id + sig),
            b"trusted comment: " + comment,
            base64.b64encode(global_sig),
            b"",
        )
    )

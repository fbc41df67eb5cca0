"""The manifest: a msgspec model, its exact byte encoding, and strict decoding.

Decoding is only ever done on bytes whose signature has already been checked
(see :mod:`duri_integrity.keys`); it still trusts nothing: every path, type,
size and digest is validated, because a valid signature proves who wrote the
manifest, not that the writer was careful.
"""

import itertools
import operator
import os
from datetime import UTC, datetime
from typing import Annotated, ClassVar

import msgspec
from blake3 import blake3

from .errors import ConfigError, ManifestError

__all__ = [
    "DEPLOYMENT_PATTERN",
    "FORMAT",
    "FORMAT_VERSION",
    "MAX_ENTRIES",
    "MAX_MANIFEST_BYTES",
    "PLAIN_TYPES",
    "BlockDevice",
    "CharDevice",
    "Dir",
    "Entry",
    "Fifo",
    "File",
    "Manifest",
    "Socket",
    "Symlink",
    "check_release",
    "compute_root_digest",
    "decode_manifest",
    "decode_manifest_keys",
    "display",
    "encode_manifest",
    "make_entry_path",
    "utc_now",
]

FORMAT = "duri-integrity-manifest"
FORMAT_VERSION = 2
"""Version 2 added the signed ``deployment`` name; version 1 manifests are refused (rebuild them)."""
# Bounds that keep a hostile (even validly signed) manifest from exhausting memory.
MAX_MANIFEST_BYTES = 64 << 20
MAX_ENTRIES = 300_000
_ROOT_DIGEST_CONTEXT = "duri-integrity 2026-11 manifest root digest v1"

Mode = Annotated[int, msgspec.Meta(ge=0, le=0o7777)]
Size = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
# \Z, not $: "$" also matches before a final newline, which let "v1\n" through (and broke minisign's comment).
Release = Annotated[str, msgspec.Meta(max_length=200, pattern=r"^[\x20-\x7e]*\Z")]
Created = Annotated[datetime, msgspec.Meta(tz=True)]
DEPLOYMENT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z"
Deployment = Annotated[str, msgspec.Meta(pattern=DEPLOYMENT_PATTERN)]
"""The service or deployment a release belongs to: a host is told which one it runs."""


class _EntryBase(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    omit_defaults=True,
    forbid_unknown_fields=True,
    gc=False,
    tag_field="type",
):
    """Fields every entry has. Exactly one of ``path``/``path_b64`` is set."""

    kind: ClassVar[str]
    path: str | None = None
    """POSIX path relative to the root, when its bytes are valid UTF-8."""
    path_b64: bytes | None = None
    """The exact path bytes (base64 in JSON), only when they are not valid UTF-8."""
    mode: Mode
    """Permission bits including setuid, setgid and sticky (st_mode & 0o7777)."""


class File(_EntryBase, frozen=True, kw_only=True, tag="file"):
    kind: ClassVar[str] = "file"
    size: Size
    blake3: str
    """Lowercase hex BLAKE3-256 of the content."""


class Dir(_EntryBase, frozen=True, kw_only=True, tag="dir"):
    kind: ClassVar[str] = "dir"


class Symlink(_EntryBase, frozen=True, kw_only=True, tag="symlink"):
    kind: ClassVar[str] = "symlink"
    target: str | None = None
    """The link target exactly as stored, when valid UTF-8."""
    target_b64: bytes | None = None
    """The exact target bytes, when not valid UTF-8."""


class Fifo(_EntryBase, frozen=True, kw_only=True, tag="fifo"):
    kind: ClassVar[str] = "fifo"


class Socket(_EntryBase, frozen=True, kw_only=True, tag="socket"):
    kind: ClassVar[str] = "socket"


class CharDevice(_EntryBase, frozen=True, kw_only=True, tag="char_device"):
    kind: ClassVar[str] = "char_device"


class BlockDevice(_EntryBase, frozen=True, kw_only=True, tag="block_device"):
    kind: ClassVar[str] = "block_device"


Entry = File | Dir | Symlink | Fifo | Socket | CharDevice | BlockDevice
PLAIN_TYPES: dict[str, type[Dir | Fifo | Socket | CharDevice | BlockDevice]] = {
    cls.kind: cls for cls in (Dir, Fifo, Socket, CharDevice, BlockDevice)
}
"""Entry classes that carry nothing beyond path and mode, by type name."""


class Manifest(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    # Required, never defaulted: omit_defaults would otherwise drop them from the bytes.
    format: str
    version: int
    tool: str
    deployment: Deployment = ""
    """Required from version 2 on (checked after the version, so a version 1 manifest gets that message)."""
    release: Release = ""
    created: Created
    serial: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
    expires: Created | None = None
    exclude: list[str] = []
    root_digest: str
    entries: list[Entry]


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Manifest)


def _is_lower_hex(text: str, unit: int) -> bool:
    """True if text is a whole number of ``unit``-digit lowercase hex strings (C-speed checks only)."""
    if len(text) % unit or text != text.lower():
        return False
    try:
        return len(bytes.fromhex(text)) * 2 == len(text)  # fromhex skips spaces; the length catches them
    except ValueError:
        return False


def _bad_path(path: str) -> bool:
    w = "/" + path + "/"
    return "//" in w or "/./" in w or "/../" in w


def make_entry_path(rel: str) -> tuple[str | None, bytes | None]:
    """Split a walk path or link target (str, surrogateescape) into the manifest's str/base64 pair."""
    try:
        rel.encode("utf-8")
        return rel, None
    except UnicodeEncodeError:
        return None, os.fsencode(rel)


def compute_root_digest(exclude: list[str], entries: list[Entry]) -> str:
    """BLAKE3 (derive-key mode) over the canonical JSON of the exclusions and entries.

    The canonical bytes are ``{"exclude":[...],"entries":[...]}`` as msgspec encodes
    them; they are fed to the hasher in slices so a large manifest is never
    encoded twice over in memory.
    """
    hasher = blake3(derive_key_context=_ROOT_DIGEST_CONTEXT)
    hasher.update(b'{"exclude":' + _encoder.encode(exclude) + b',"entries":[')
    step = 4096
    for k in range(0, len(entries), step):
        if k:
            hasher.update(b",")
        hasher.update(_encoder.encode(entries[k : k + step])[1:-1])
    hasher.update(b"]}")
    return hasher.hexdigest()


def encode_manifest(m: Manifest) -> bytes:
    """Encode with one entry per line, so manifests diff and grep well."""
    header = _encoder.encode(msgspec.structs.replace(m, entries=[]))
    assert header.endswith(b'"entries":[]}')
    # Build-side check: the header must pass the very decoder verify uses (release label,
    # serial and time bounds), so nothing is written or signed that verify would refuse.
    try:
        _decoder.decode(header)
    except msgspec.ValidationError as exc:
        raise _fail(str(exc)) from None
    if len(m.entries) > MAX_ENTRIES:
        raise _fail(f"{len(m.entries):,} entries is over the limit of {MAX_ENTRIES:,}")
    if not m.entries:
        return header + b"\n"
    body = b",\n".join(_encoder.encode(e) for e in m.entries)
    data = header[:-2] + b"\n" + body + b"\n]}\n"
    if len(data) > MAX_MANIFEST_BYTES:
        raise _fail(f"{len(data):,} bytes is over the {MAX_MANIFEST_BYTES:,}-byte limit")
    return data


def _fail(msg: str) -> ManifestError:
    return ManifestError(f"invalid manifest: {msg}")


def decode_manifest(data: bytes, *, max_entries: int = MAX_ENTRIES) -> Manifest:
    """Decode and validate manifest bytes; raise ManifestError with a precise reason."""
    return decode_manifest_keys(data, max_entries=max_entries)[0]


_last: list[tuple[int, bytes, int, Manifest, list[str]]] = []
"""The last manifest decoded and validated: a long-lived caller verifies the same bytes again and
again. One entry, keyed by the length and BLAKE3 of its bytes rather than the bytes themselves,
which a 100,000-file manifest makes 16 MB held for the whole run."""


def decode_manifest_keys(data: bytes, *, max_entries: int = MAX_ENTRIES) -> tuple[Manifest, list[str]]:
    """Like :func:`decode_manifest`, also returning each entry's path as the walk spells it.

    Decoding identical bytes again returns the same (immutable) Manifest and a fresh key
    list without re-validating: the result depends on nothing but the bytes and the limit.
    Signature checks are not cached here: callers check the bytes before decoding them.
    """
    data = bytes(data)  # the caller's object if it is bytes already; a copy of anything mutable
    digest = blake3(data).digest()
    last = _last[0] if _last else None
    if last is not None and last[2] == max_entries and last[0] == len(data) and last[1] == digest:
        return last[3], list(last[4])
    m, keys = _decode_manifest_keys(data, max_entries)
    _last[:] = [(len(data), digest, max_entries, m, keys)]
    return m, list(keys)


def _decode_manifest_keys(data: bytes, max_entries: int) -> tuple[Manifest, list[str]]:  # noqa: C901, PLR0912 - one refusal per rule, in order, each with its own message
    if len(data) > MAX_MANIFEST_BYTES:
        raise _fail(f"{len(data):,} bytes is over the {MAX_MANIFEST_BYTES:,}-byte limit")
    # Every entry is a JSON object, so it needs a "{": counting them bounds the entries before
    # decoding allocates one object each (braces inside names only make the bound looser).
    if data.count(b"{") > 2 * max_entries + 1:
        raise _fail(f"more than {max_entries:,} entries (the limit)")
    try:
        m = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise _fail(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise _fail(f"not valid JSON ({exc})") from None
    except UnicodeDecodeError as exc:  # msgspec lets this through for an unknown field's name
        raise _fail(f"not valid UTF-8 at byte {exc.start} ({exc.reason})") from None
    except RecursionError:
        raise _fail("nested too deeply") from None
    if m.format != FORMAT:
        raise _fail(f"format is {m.format!r}, expected {FORMAT!r}")
    if m.version != FORMAT_VERSION:
        raise _fail(f"format version {m.version} is not supported (this tool reads {FORMAT_VERSION}; rebuild it)")
    if not m.deployment:
        raise _fail("it names no deployment")
    if len(m.entries) > max_entries:
        raise _fail(f"{len(m.entries):,} entries is over the limit of {max_entries:,}")
    if m.created.utcoffset() != UTC.utcoffset(None):
        raise _fail("created must be in UTC")
    keys = _validate_entries(m.entries)
    from .exclude import Excluder

    try:
        Excluder(m.exclude)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    if len(m.root_digest) != 64 or not _is_lower_hex(m.root_digest, 64):
        raise _fail("root_digest must be 64 lowercase hex digits")
    if compute_root_digest(m.exclude, m.entries) != m.root_digest:
        raise _fail("root_digest does not match the entries")
    return m, keys


def _b64_key(i: int, e: Entry) -> str:
    if e.path is not None:
        if e.path_b64 is not None:
            raise _fail(f"entry {i} has both path and path_b64")
        return e.path
    if e.path_b64 is None:
        raise _fail(f"entry {i} has no path")
    try:
        e.path_b64.decode("utf-8")
    except UnicodeDecodeError:
        return os.fsdecode(e.path_b64)
    raise _fail(f"entry {i}: path_b64 is valid UTF-8, it must be given as path")


def _validate_entries(entries: list[Entry]) -> list[str]:
    """Check the structural rules; return each entry's key (walk spelling of its path).

    Written as whole-list passes rather than one Python loop per entry: this runs on
    every verification, and a 3,000-entry manifest must validate in about a millisecond.
    """
    n = len(entries)
    keys: list[str] = [e.path for e in entries]  # type: ignore[misc]
    raw_paths = None in keys or [e.path_b64 for e in entries].count(None) != n
    if raw_paths:
        keys = [_b64_key(i, e) for i, e in enumerate(entries)]
    # With every path wrapped in "/", an empty, absolute, trailing-slash, "." or ".." path
    # shows up as "//", "/./" or "/../": substring searches instead of a regex per path,
    # over slices so a large manifest is not copied whole.
    for k in range(0, n, 8192):
        wrapped = "/" + "/".join(keys[k : k + 8192]) + "/"
        if "//" in wrapped or "/./" in wrapped or "/../" in wrapped or "\x00" in wrapped:
            culprit = next(p for p in keys[k : k + 8192] if "\x00" in p or _bad_path(p))
            raise _fail(f"path {display(culprit)!r} is absolute, empty, has a NUL byte, or a '.' or '..' component")
    digests = [e.blake3 for e in entries if type(e) is File]
    for k in range(0, len(digests), 8192):
        if not _is_lower_hex("".join(digests[k : k + 8192]), 64):
            raise _fail("every blake3 value must be 64 lowercase hex digits")
    del digests
    for e in entries:
        if type(e) is Symlink:
            if (e.target is None) == (e.target_b64 is None):
                raise _fail(f"symlink entry {display(e.path or '')!r} needs exactly one of target and target_b64")
            if not (e.target or e.target_b64) or "\x00" in (e.target or "") or b"\x00" in (e.target_b64 or b""):
                raise _fail(f"symlink entry {display(e.path or '')!r} has an empty or NUL-containing target")
    order: list[str] | list[bytes] = [os.fsencode(k) for k in keys] if raw_paths else keys
    # Strictly increasing means sorted and free of duplicates, checked pairwise at C speed.
    if not all(map(operator.lt, order, itertools.islice(order, 1, None))):  # type: ignore[arg-type]
        first = next(i for i in range(1, n) if not order[i - 1] < order[i])  # type: ignore[operator]
        what = "duplicate path" if order[first - 1] == order[first] else "entries not sorted by path at"
        raise _fail(f"{what} {display(keys[first])!r}")
    dirs = {k for k, e in zip(keys, entries, strict=True) if type(e) is Dir}
    orphans = {k.rpartition("/")[0] for k in keys} - dirs - {""}
    if orphans:
        parent = min(orphans)
        child = next(k for k in keys if k.rpartition("/")[0] == parent)
        raise _fail(f"{display(child)!r} is listed but its parent {display(parent)!r} is not a directory entry")
    return keys


def display(path: str) -> str:
    """A printable, JSON-safe spelling of a walk path (undecodable bytes as \\xNN)."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# --- Build-side checks: what build signs, verify must accept (same model, same bounds). ---

_MAX_SERIAL = 2**63 - 1


def check_release(label: str) -> str:
    """Return ``label`` if the manifest model accepts it as a release; else raise ManifestError.

    The check is the decoder's own (:data:`Release`), so build can never sign a label
    that verify would refuse.
    """
    try:
        return msgspec.convert(label, Release)
    except msgspec.ValidationError:
        pass
    if len(label) > 200:
        raise ManifestError(f"a release label is at most 200 characters, not {len(label):,}")
    bad = next(c for c in label if not " " <= c <= "~")
    raise ManifestError(
        f"a release label is printable ASCII (letters, digits, punctuation, spaces); "
        f"{bad!a} at position {label.index(bad) + 1} is not"
    )


def utc_now() -> datetime:
    """Now in UTC, to the second; honours SOURCE_DATE_EPOCH for reproducible builds.

    SOURCE_DATE_EPOCH must be a whole number of seconds from 0 up to the largest
    serial: the default serial is the creation time, and verify refuses a negative one.
    """
    sde = os.environ.get("SOURCE_DATE_EPOCH")
    if sde:
        try:
            seconds = int(sde) if sde.isascii() and sde.isdigit() else -1
            if not 0 <= seconds <= _MAX_SERIAL:
                raise ValueError
            return datetime.fromtimestamp(seconds, tz=UTC)
        except (ValueError, OverflowError, OSError):
            raise ManifestError(
                f"SOURCE_DATE_EPOCH={sde[:40]!r} is not a Unix time (whole seconds since 1970, not negative)"
            ) from None
    return datetime.now(tz=UTC).replace(microsecond=0)

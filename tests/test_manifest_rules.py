"""Manifest decoding rule by rule: each check names the entry it refuses, and the root digest at scale."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from blake3 import blake3

from duri_integrity import manifest as mf
from duri_integrity.errors import ManifestError
from duri_integrity.manifest import Dir, Entry, File, Manifest, Symlink

CREATED = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
DIGEST = "0123456789abcdef" * 4


def _manifest(entries: list[Entry], **kw: Any) -> Manifest:  # kw: fields to override, some wrong on purpose
    exclude: list[str] = kw.pop("exclude", [])
    fields: dict[str, Any] = {
        "format": mf.FORMAT,
        "version": mf.FORMAT_VERSION,
        "tool": "t",
        "deployment": "svc",
        "created": CREATED,
        "serial": 1,
        "exclude": exclude,
        "entries": entries,
        "root_digest": mf.compute_root_digest(exclude, entries),
    }
    fields.update(kw)
    return Manifest(**fields)


def _decode(entries: list[Entry], **kw: object) -> tuple[Manifest, list[str]]:
    return mf.decode_manifest_keys(mf.encode_manifest(_manifest(entries, **kw)))


def _files(*paths: str) -> list[Entry]:
    return [File(path=p, mode=0o644, size=0, blake3=DIGEST) for p in paths]


@pytest.mark.parametrize(
    "bad",
    ["a//b", "a/", "/a", "./a", "a/./b", "a/.", ".", "../a", "a/../b", "a/..", "..", "", "a\x00b"],
)
def test_each_bad_path_is_refused_and_named(bad: str) -> None:
    """An empty, absolute, trailing-slash, '.', '..' or NUL path is refused, naming that very path."""
    entries = _files("a", bad) if bad != "a" else _files(bad)
    with pytest.raises(ManifestError, match="is absolute, empty, has a NUL byte") as err:
        _decode(entries)
    assert f"path {bad!r}" in str(err.value)


@pytest.mark.parametrize("bad", ["/a", "./a", ".", "..", "../a", "", "a/"])
def test_bad_path_first_or_alone_is_refused(bad: str) -> None:
    """A bad path is refused wherever it is, including as the very first entry."""
    with pytest.raises(ManifestError, match="is absolute, empty, has a NUL byte"):
        _decode([*_files(bad), *_files("zz")])
    with pytest.raises(ManifestError, match="is absolute, empty, has a NUL byte"):
        _decode(_files(bad))


@pytest.mark.parametrize("good", ["...", ".hidden", "a..b", "..a", "a.", "b/.c", "b/..d", "b/c.."])
def test_dotted_names_that_are_not_components_are_fine(good: str) -> None:
    """Names that merely contain dots are ordinary paths."""
    entries: list[Entry] = [Dir(path="b", mode=0o755), *_files(good)] if good.startswith("b/") else _files(good)
    entries.sort(key=lambda e: os.fsencode(e.path or ""))
    m, keys = _decode(entries)
    assert good in keys and m.entries == entries


def test_bad_path_among_many_is_found_in_a_later_slice() -> None:
    """Paths are checked in slices of 8,192: the first of the second slice is still found and named."""
    entries = _files(*(f"f{i:05d}" for i in range(8192))) + _files("z/../x")
    with pytest.raises(ManifestError, match=r"path 'z/\.\./x'"):
        _decode(entries)


def _reference_root_digest(exclude: list[str], entries: list[Entry]) -> str:
    """The root digest as documented: BLAKE3 derive-key over the whole canonical JSON at once."""
    enc = msgspec.json.Encoder()
    canonical = b'{"exclude":' + enc.encode(exclude) + b',"entries":' + enc.encode(entries) + b"}"
    return blake3(canonical, derive_key_context="duri-integrity 2026-11 manifest root digest v1").hexdigest()


@pytest.mark.parametrize("n", [0, 1, 4095, 4096, 4097, 8192, 9001])
def test_root_digest_is_the_same_whatever_the_slicing(n: int) -> None:
    """compute_root_digest feeds slices of 4,096 entries; the digest equals the one-shot definition."""
    entries = _files(*(f"f{i:05d}" for i in range(n)))
    assert mf.compute_root_digest(["*.pyc"], entries) == _reference_root_digest(["*.pyc"], entries)


def test_large_manifest_round_trips_and_a_late_change_is_caught() -> None:
    """A 5,000-entry manifest decodes; changing its last entry without the digest is refused."""
    entries = _files(*(f"f{i:05d}" for i in range(5000)))
    m, keys = _decode(entries)
    assert len(keys) == 5000 and m.root_digest == _reference_root_digest([], entries)
    changed = mf.encode_manifest(_manifest(entries)).replace(b'"f04999","mode":420', b'"f04999","mode":416')
    with pytest.raises(ManifestError, match="root_digest does not match"):
        mf.decode_manifest(changed)


def test_entry_limit_is_exact() -> None:
    """max_entries entries decode; one more is refused."""
    entries = _files("a", "b", "c")
    assert len(_decode(entries)[1]) == 3
    data = mf.encode_manifest(_manifest(entries))
    assert len(mf.decode_manifest(data, max_entries=3).entries) == 3
    with pytest.raises(ManifestError, match="3 entries is over the limit of 2"):
        mf.decode_manifest(data, max_entries=2)
    with pytest.raises(ManifestError, match="more than 1 entries"):
        mf.decode_manifest(data, max_entries=1)


def test_manifest_size_limit_is_exact() -> None:
    """Bytes beyond MAX_MANIFEST_BYTES are refused first; exactly the limit passes on to the next check."""
    data = b"{{" + b" " * (mf.MAX_MANIFEST_BYTES - 2)
    with pytest.raises(ManifestError, match="over the 67,108,864-byte limit"):
        mf.decode_manifest(data + b" ", max_entries=0)
    with pytest.raises(ManifestError, match="more than 0 entries"):
        mf.decode_manifest(data, max_entries=0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"root_digest": DIGEST.upper()}, "64 lowercase hex"),
        ({"root_digest": DIGEST[:-2]}, "64 lowercase hex"),
        ({"root_digest": DIGEST[:-2] + " 0"}, "64 lowercase hex"),
        ({"root_digest": "g" * 64}, "64 lowercase hex"),
        ({"root_digest": DIGEST}, "does not match"),
        ({"created": datetime(2026, 11, 27, 13, tzinfo=timezone(timedelta(hours=1)))}, "created must be in UTC"),
        ({"deployment": ""}, "names no deployment"),
    ],
)
def test_header_rules(changes: dict[str, object], message: str) -> None:
    """root_digest must be 64 lowercase hex digits and match; created must be UTC; a deployment is named."""
    data = mf.encode_manifest(msgspec.structs.replace(_manifest(_files("a")), **changes))
    with pytest.raises(ManifestError, match=message):
        mf.decode_manifest(data)


@pytest.mark.parametrize(
    ("digest", "ok"),
    [(DIGEST, True), (DIGEST.upper(), False), (DIGEST[:-1] + "g", False), (DIGEST[:-1], False), ("", True)],
)
def test_file_digests_must_be_lowercase_hex(digest: str, ok: bool) -> None:
    """Every file's blake3 is 64 lowercase hex digits (an empty list of files is trivially fine)."""
    entries: list[Entry] = [File(path="a", mode=0o644, size=0, blake3=digest)] if digest else [Dir(path="a", mode=0)]
    if ok:
        assert _decode(entries)[1] == ["a"]
    else:
        with pytest.raises(ManifestError, match="64 lowercase hex"):
            _decode(entries)


def test_file_digest_check_spans_slices() -> None:
    """A bad digest as the first of the second slice of 8,192 files is still found."""
    entries = _files(*(f"f{i:05d}" for i in range(8193)))
    entries[-1] = File(path="f08192", mode=0o644, size=0, blake3="A" * 64)
    with pytest.raises(ManifestError, match="64 lowercase hex"):
        _decode(entries)


@pytest.mark.parametrize(
    ("link", "message"),
    [
        (Symlink(path="l", mode=0o777), "exactly one of target"),
        (Symlink(path="l", mode=0o777, target="x", target_b64=b"x"), "exactly one of target"),
        (Symlink(path="l", mode=0o777, target=""), "empty or NUL"),
        (Symlink(path="l", mode=0o777, target_b64=b""), "empty or NUL"),
        (Symlink(path="l", mode=0o777, target="a\x00b"), "empty or NUL"),
        (Symlink(path="l", mode=0o777, target_b64=b"a\x00\xff"), "empty or NUL"),
    ],
)
def test_symlink_targets(link: Symlink, message: str) -> None:
    """A symlink has exactly one non-empty, NUL-free target."""
    with pytest.raises(ManifestError, match=f"symlink entry 'l' {'needs' if 'exactly' in message else 'has'}"):
        _decode([link])
    with pytest.raises(ManifestError, match=message):
        _decode([link])


def test_good_symlinks_decode() -> None:
    """A text target and a raw-bytes target both decode unchanged."""
    links: list[Entry] = [Symlink(path="a", mode=0o777, target="x"), Symlink(path="b", mode=0o777, target_b64=b"\xff")]
    assert _decode(links)[0].entries == links


def test_raw_paths_keep_their_bytes_and_order() -> None:
    """Non-UTF-8 paths decode to the walk's surrogate spelling and are ordered by bytes."""
    entries: list[Entry] = [
        File(path="a", mode=0o644, size=0, blake3=DIGEST),
        File(path_b64=b"b\xff", mode=0o644, size=0, blake3=DIGEST),
        File(path="c", mode=0o644, size=0, blake3=DIGEST),
    ]
    assert _decode(entries)[1] == ["a", os.fsdecode(b"b\xff"), "c"]
    with pytest.raises(ManifestError, match="both path and path_b64"):
        _decode([File(path="a", path_b64=b"\xff", mode=0o644, size=0, blake3=DIGEST)])
    with pytest.raises(ManifestError) as err:
        _decode(list(reversed(entries)))
    assert str(err.value).endswith("entries not sorted by path at 'b\\\\xff'")


@pytest.mark.parametrize(
    ("paths", "message"),
    [
        (["a", "a"], "duplicate path 'a'"),
        (["a", "c", "b"], "entries not sorted by path at 'b'"),
        (["b", "a"], "entries not sorted by path at 'a'"),
    ],
)
def test_order_is_strict(paths: list[str], message: str) -> None:
    """Entries are strictly increasing by path bytes; the first offender is named."""
    with pytest.raises(ManifestError, match=message):
        _decode(_files(*paths))


def test_every_parent_must_be_a_directory_entry() -> None:
    """A file under a path that is not listed as a directory is refused, naming the first such parent."""
    with pytest.raises(ManifestError, match="'b/x' is listed but its parent 'b' is not a directory"):
        _decode([*_files("a"), *_files("b"), *_files("b/x")])
    with pytest.raises(ManifestError, match="'m/x' is listed but its parent 'm'"):
        _decode([*_files("m/x"), *_files("z/y")])
    ok = [Dir(path="d", mode=0o755), Dir(path="d/e", mode=0o755), *_files("d/e/f")]
    assert _decode(ok)[1] == ["d", "d/e", "d/e/f"]


def test_encoding_is_one_entry_per_line() -> None:
    """The header comes first, then one entry per line; an empty manifest is one line."""
    empty = mf.encode_manifest(_manifest([]))
    assert empty.endswith(b'"entries":[]}\n') and empty.count(b"\n") == 1
    two = mf.encode_manifest(_manifest(_files("a", "b")))
    lines = two.split(b"\n")
    assert lines[0].endswith(b'"entries":[') and lines[1].endswith(b"},") and lines[3] == b"]}" and lines[4] == b""
    assert mf.decode_manifest(two) == _manifest(_files("a", "b"))


def test_make_entry_path_and_display() -> None:
    """UTF-8 names stay text; other bytes go to path_b64 and display as \\xNN."""
    raw = os.fsdecode(b"caf\xe9")
    assert mf.make_entry_path("café") == ("café", None)
    assert mf.make_entry_path(raw) == (None, b"caf\xe9")
    assert mf.display(raw) == "caf\\xe9" and mf.display("café") == "café"


def test_utc_now_honours_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    """SOURCE_DATE_EPOCH fixes the build time; a bad value is refused; otherwise now, to the second."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1764201600")
    assert mf.utc_now() == datetime(2025, 11, 27, tzinfo=UTC)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "soon")
    with pytest.raises(ManifestError, match="not a Unix time"):
        mf.utc_now()
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    now = mf.utc_now()
    assert now.microsecond == 0 and now.tzinfo is UTC


# The patterns end in "\Z": "$" would also match before one trailing newline ("v1\n" decoded
# while build's fullmatch refused it).
@pytest.mark.parametrize(
    ("release", "ok"),
    [
        ("v1.4.2 (rc)", True),
        ("x" * 200, True),
        ("x" * 201, False),
        ("v1\tx", False),
        ("vé", False),
        ("v1\n", False),
    ],
)
def test_release_labels_are_short_printable_ascii(release: str, ok: bool) -> None:
    """A release label is at most 200 printable ASCII characters; anything else is refused."""
    data = msgspec.json.encode(_manifest(_files("a"), release=release))  # encode_manifest refuses the bad ones
    if ok:
        assert mf.decode_manifest(data).release == release
    else:
        with pytest.raises(ManifestError, match="release"):
            mf.decode_manifest(data)


@pytest.mark.parametrize(
    ("deployment", "ok"),
    [
        ("svc-1.a_b", True),
        ("x" * 100, True),
        ("x" * 101, False),
        ("-svc", False),
        ("s/v", False),
        ("svc\n", False),
    ],
)
def test_deployment_names(deployment: str, ok: bool) -> None:
    """A deployment is 1-100 letters, digits, '.', '_', '-', starting with a letter or digit."""
    data = msgspec.json.encode(_manifest(_files("a"), deployment=deployment))
    if ok:
        assert mf.decode_manifest(data).deployment == deployment
    else:
        with pytest.raises(ManifestError, match="deployment"):
            mf.decode_manifest(data)


def test_decoded_manifest_and_entries_are_immutable() -> None:
    """Nothing can change a manifest or any entry after its digest was checked."""
    m, _ = _decode([Dir(path="d", mode=0o755), *_files("d/f")])
    with pytest.raises(AttributeError):
        m.serial = 2  # type: ignore[misc]  # mypy knows it is frozen; the test checks that it is at run time
    for entry in [
        *m.entries,
        Symlink(path="l", mode=0, target="x"),
        *(c(path="p", mode=0) for c in mf.PLAIN_TYPES.values()),
    ]:
        with pytest.raises(AttributeError):
            entry.mode = 0o777  # type: ignore[misc]  # frozen, as above


def test_entry_kinds_are_their_wire_names() -> None:
    """Each entry class's kind is the "type" it is written with, and PLAIN_TYPES maps every plain one."""
    names = {"dir", "fifo", "socket", "char_device", "block_device"}
    assert set(mf.PLAIN_TYPES) == names
    for kind, cls in mf.PLAIN_TYPES.items():
        assert cls.kind == kind
        assert msgspec.json.decode(msgspec.json.encode(cls(path="p", mode=0)))["type"] == kind
    assert (File.kind, Symlink.kind) == ("file", "symlink")


def test_empty_manifest_fits_a_zero_entry_limit() -> None:
    """The header's own brace does not count as an entry: an empty manifest decodes with max_entries=0."""
    data = mf.encode_manifest(_manifest([]))
    assert mf.decode_manifest(data, max_entries=0).entries == []

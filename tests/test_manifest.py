"""The manifest model, its exact encoding and strict decoding."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from duri_integrity.build import build_manifest
from duri_integrity.errors import ManifestError
from duri_integrity.manifest import (
    Dir,
    Entry,
    File,
    Symlink,
    compute_root_digest,
    decode_manifest,
    encode_manifest,
)

from .conftest import NON_UTF8_NAME


def test_build_is_deterministic(tree: Path) -> None:
    """Building the same tree twice gives the same entries, root digest and bytes."""
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    a = build_manifest(str(tree), deployment="svc", created=when)
    b = build_manifest(str(tree), deployment="svc", created=when, workers=1)
    assert a.manifest.entries == b.manifest.entries
    assert a.manifest.root_digest == b.manifest.root_digest
    assert a.data == b.data


def _path_bytes(e: Entry) -> bytes:
    if e.path is not None:
        return os.fsencode(e.path)
    assert e.path_b64 is not None, "exactly one of path and path_b64 is set"
    return e.path_b64


def test_entries_sorted_by_path_bytes_and_complete(tree: Path) -> None:
    """Every object appears once, sorted by its path bytes, with the right fields per type."""
    m = build_manifest(str(tree), deployment="svc").manifest
    keys = [_path_bytes(e) for e in m.entries]
    assert keys == sorted(keys)
    by_path = {e.path: e for e in m.entries if e.path}
    assert by_path["bin/run"].mode == 0o755
    empty = by_path["data/empty"]
    assert isinstance(empty, File) and empty.size == 0
    link = by_path["link-inside"]
    assert isinstance(link, Symlink) and link.target == "app/main.py"
    dangling = by_path["link-dangling"]
    assert isinstance(dangling, Symlink) and dangling.target == "does/not/exist"
    assert by_path["link-dir"].kind == "symlink"  # never followed
    assert by_path["empty-dir"].kind == "dir"
    assert not any(e.path and e.path.startswith("link-dir/") for e in m.entries)


def test_non_utf8_names_round_trip_exactly(tree: Path) -> None:
    """A name that is not UTF-8 is stored as exact bytes and decodes back to the same bytes."""
    res = build_manifest(str(tree), deployment="svc")
    raw = [e.path_b64 for e in res.manifest.entries if e.path_b64 is not None]
    assert b"data/" + os.fsencode(NON_UTF8_NAME) in raw
    assert b"data/dir-\xff" in raw
    again = decode_manifest(res.data)
    assert again == res.manifest


def test_one_entry_per_line_and_header_first(tree: Path) -> None:
    """The encoding puts the header on the first line and one entry on each following line."""
    res = build_manifest(str(tree), deployment="svc", release="v9")
    lines = res.data.splitlines()
    assert lines[0].startswith(b'{"format":"duri-integrity-manifest","version":2,')
    assert len(lines) == len(res.manifest.entries) + 2
    assert json.loads(res.data)["release"] == "v9"


def test_root_digest_golden_value() -> None:
    """The root digest's definition is pinned: a change to it would break pinned release notes."""
    from blake3 import blake3

    entries: list[Entry] = [
        Dir(path="a", mode=0o755),
        File(path="a/f", mode=0o644, size=3, blake3="00" * 32),
        Symlink(path_b64=b"\xff", mode=0o777, target="a/f"),
    ]
    canonical = (
        b'{"exclude":["*.pyc"],"entries":[{"type":"dir","path":"a","mode":493},'
        b'{"type":"file","path":"a/f","mode":420,"size":3,"blake3":"' + b"0" * 64 + b'"},'
        b'{"type":"symlink","path_b64":"/w==","mode":511,"target":"a/f"}]}'
    )
    context = "duri-integrity 2026-11 manifest root digest v1"
    expected = blake3(canonical, derive_key_context=context).hexdigest()
    assert compute_root_digest(["*.pyc"], entries) == expected
    assert expected == "2d289a32c36e8d6079ce887ea106292892639fbcbc4345aaf3f5cf56d7edf08f"


def _manifest_dict(tree: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(build_manifest(str(tree), deployment="svc").data)
    return data


def _encode(d: dict[str, Any], fix_digest: bool = True) -> bytes:
    """Re-encode a (possibly hostile) manifest dict, keeping root_digest consistent if asked."""
    if fix_digest:
        import msgspec

        try:
            entries = msgspec.convert(d["entries"], list[Entry])
            d["root_digest"] = compute_root_digest(d.get("exclude", []), entries)
        except (msgspec.ValidationError, TypeError):
            pass  # the entries are malformed on purpose; the decoder must say so first
    return json.dumps(d).encode()


def test_valid_manifest_round_trips(tree: Path) -> None:
    """decode(encode(m)) == m."""
    m = build_manifest(str(tree), deployment="svc").manifest
    assert decode_manifest(encode_manifest(m)) == m


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(format="other"), "format"),
        (lambda d: d.update(version=1), "version 1"),
        (lambda d: d.pop("deployment"), "names no deployment"),
        (lambda d: d.update(deployment="a b"), "deployment"),
        (lambda d: d.update(surprise=1), "unknown field"),
        (lambda d: next(e for e in d["entries"] if e["type"] == "file").update(size="big"), "Expected `int"),
        (lambda d: d["entries"][0].update(mode=0o10000), "mode"),
        (lambda d: d["entries"].append({"path": "../etc/passwd", "type": "dir", "mode": 493}), "'..'"),
        (lambda d: d["entries"].append({"path": "/etc", "type": "dir", "mode": 493}), "absolute"),
        (lambda d: d["entries"].append({"path": "zz/./x", "type": "dir", "mode": 493}), "'.'"),
        (lambda d: d["entries"].append({"path": "zz//x", "type": "dir", "mode": 493}), "empty"),
        (lambda d: d["entries"].append({"path": "zz\u0000x", "type": "dir", "mode": 493}), "NUL"),
        (lambda d: d["entries"].append(dict(d["entries"][-1])), "duplicate"),
        (lambda d: d["entries"].reverse(), "not sorted"),
        (lambda d: d["entries"].append({"path": "zzz/orphan", "type": "fifo", "mode": 420}), "parent"),
        (lambda d: d["entries"].append({"path": "zzz", "type": "file", "mode": 420}), "missing required field `size`"),
        (lambda d: d["entries"].append({"path": "zzz", "type": "dir", "mode": 493, "size": 1}), "unknown field `size`"),
        (lambda d: d["entries"].append({"path": "zzz", "type": "symlink", "mode": 511}), "target"),
        (lambda d: d["entries"].append({"path": "zzz", "type": "door", "mode": 511}), "Invalid value 'door'"),
        (
            lambda d: d["entries"].append({"path": "zzz", "type": "file", "mode": 420, "size": 1, "blake3": "AB" * 32}),
            "hex",
        ),
        (
            lambda d: d["entries"].append({"path_b64": base64.b64encode(b"zzz").decode(), "type": "dir", "mode": 493}),
            "valid UTF-8",
        ),
        (lambda d: d["entries"].append({"type": "dir", "mode": 493}), "no path"),
        (lambda d: d.update(created="2026-01-01T00:00:00"), "timezone"),
        (lambda d: d.update(exclude=["a\u0000"]), "exclude pattern"),
    ],
)
def test_bad_manifests_raise_precise_errors(tree: Path, mutate: Any, message: str) -> None:
    """Each kind of malformed manifest is refused with a reason that names the problem."""
    d = _manifest_dict(tree)
    mutate(d)
    with pytest.raises(ManifestError) as err:
        decode_manifest(_encode(d))
    assert message.lower() in str(err.value).lower()


def test_root_digest_mismatch_is_refused(tree: Path) -> None:
    """A manifest whose root_digest does not match its entries is refused."""
    d = _manifest_dict(tree)
    d["root_digest"] = "0" * 64
    with pytest.raises(ManifestError, match="root_digest does not match"):
        decode_manifest(_encode(d, fix_digest=False))


@pytest.mark.parametrize("data", [b"", b"{", b"not json", b"[]", b"\xff\xfe", b'{"format": 1}'])
def test_garbage_is_refused(data: bytes) -> None:
    """Truncated or non-JSON input gives ManifestError, never another exception."""
    with pytest.raises(ManifestError):
        decode_manifest(data)


def test_truncated_manifest_is_refused(tree: Path) -> None:
    """Any truncation of a real manifest is refused."""
    data = build_manifest(str(tree), deployment="svc").data
    for cut in (1, len(data) // 2, len(data) - 3):
        with pytest.raises(ManifestError):
            decode_manifest(data[:cut])


def test_entry_limit(tree: Path) -> None:
    """A manifest with more entries than the limit is refused before anything else is done."""
    data = build_manifest(str(tree), deployment="svc").data
    with pytest.raises(ManifestError, match="more than 3 entries"):
        decode_manifest(data, max_entries=3)


@pytest.mark.parametrize("release", ["v1\n", "v\u00e9", "x" * 201])
def test_build_refuses_a_bad_release_label_before_walking(tmp_path: Path, release: str) -> None:
    """build_manifest checks the release label first (before the root), saying what is wrong with it."""
    with pytest.raises(ManifestError, match=r"^a release label is (printable ASCII|at most 200)"):
        build_manifest(str(tmp_path / "no-such-root"), deployment="svc", release=release)

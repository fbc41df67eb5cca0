"""Manifests that are validly signed (by a trusted test key) but hostile."""

from __future__ import annotations

import contextlib
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from duri_integrity.keys import load_secret_key, make_trusted_comment, sign_bytes

from .conftest import Signed


def _sign_raw(s: Signed, data: bytes) -> None:
    s.manifest.write_bytes(data)
    comment = make_trusted_comment("MANIFEST.json", "svc", "", 1, "0" * 64)
    s.signature.write_bytes(
        sign_bytes(data, load_secret_key(str(s.keys.secret)), comment.split("\trelease")[0].split("\tserial")[0])
    )


def _doc(s: Signed) -> dict[str, Any]:
    d: dict[str, Any] = json.loads(s.manifest.read_bytes())
    return d


def _entries_digest(d: dict[str, Any]) -> None:
    import msgspec

    from duri_integrity.manifest import Entry, compute_root_digest

    with contextlib.suppress(msgspec.ValidationError, TypeError):  # malformed on purpose: the decoder says so
        entries = msgspec.convert(d["entries"], list[Entry])
        d["root_digest"] = compute_root_digest(d.get("exclude", []), entries)


def _dir(path: str) -> dict[str, Any]:
    return {"type": "dir", "path": path, "mode": 0o755}


HOSTILE: dict[str, tuple[Any, str]] = {
    "traversal": (lambda d: d["entries"].insert(0, _dir("../../etc")), "'..' component"),
    "absolute": (lambda d: d["entries"].insert(0, _dir("/etc")), "absolute"),
    "nul": (lambda d: d["entries"].append(_dir("zz\u0000z")), "NUL"),
    "duplicate": (lambda d: d["entries"].append(dict(d["entries"][-1])), "duplicate path"),
    "file and dir at one path": (
        lambda d: d["entries"].extend(
            [_dir("zzz"), {"type": "file", "path": "zzz", "mode": 420, "size": 1, "blake3": "0" * 64}]
        ),
        "duplicate path",
    ),
    "absurd size": (
        lambda d: d["entries"].append({"type": "file", "path": "zzz", "mode": 420, "size": 2**64, "blake3": "0" * 64}),
        "size",
    ),
    "negative mode": (lambda d: d["entries"].append({"type": "dir", "path": "zzz", "mode": -1}), "mode"),
    "orphan": (lambda d: d["entries"].append({"type": "fifo", "path": "nodir/x", "mode": 420}), "parent"),
    "wrong root digest": (lambda d: d.update(root_digest="f" * 64), "root_digest"),
    "unknown field": (lambda d: d.update(extra={"a": [[[[[]]]]]}), "unknown field"),
    "nested junk": (lambda d: d.update(exclude=[[[[[[["x"]]]]]]]), "Expected `str`"),
    "future version": (lambda d: d.update(version=99), "version 99"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_manifest_is_untrusted(signed: Signed, case: str) -> None:
    """Each hostile manifest is UNTRUSTED with a reason naming the problem."""
    mutate, reason = HOSTILE[case]
    d = _doc(signed)
    mutate(d)
    if case != "wrong root digest":
        _entries_digest(d)
    _sign_raw(signed, json.dumps(d).encode())
    r = signed.verify()
    assert r.status == "UNTRUSTED", r.summary
    assert reason.lower() in r.summary.lower()


def test_a_million_entries_is_refused_in_bounded_memory(signed: Signed) -> None:
    """A signed manifest with a million entries is refused before it is decoded."""
    head = _doc(signed)
    head["entries"] = []
    prefix = json.dumps(head).encode()[:-3]
    body = b",".join(b'{"type":"dir","path":"d%07d","mode":493}' % i for i in range(1_000_000))
    _sign_raw(signed, prefix + b"[" + body + b"]}")
    tracemalloc.start()
    try:
        r = signed.verify()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status == "UNTRUSTED" and "more than 300,000 entries" in r.summary
    assert peak < 150 * 2**20  # the 45 MB of bytes read, not a million objects


def test_oversized_manifest_is_refused(signed: Signed) -> None:
    """A manifest over the byte limit is refused without being parsed."""
    from duri_integrity.manifest import MAX_MANIFEST_BYTES

    _sign_raw(signed, b" " * (MAX_MANIFEST_BYTES + 10))
    r = signed.verify()
    assert r.status == "UNTRUSTED" and "limit" in r.summary


def test_deep_paths_are_bounded(signed: Signed, tmp_path: Path) -> None:
    """A valid manifest describing a 2,000-level directory chain that is not there is simply FAILED."""
    d = _doc(signed)
    chain = ["zz"]
    for _ in range(1999):
        chain.append(chain[-1] + "/zz")
    d["entries"] += [_dir(p) for p in chain]
    _entries_digest(d)
    _sign_raw(signed, json.dumps(d).encode())
    r = signed.verify()
    assert r.status == "FAILED" and r.counts["missing"] == 2000


def test_manifest_paths_are_never_opened(signed: Signed, tmp_path: Path) -> None:
    """Files are found by walking the root, never by opening a path the manifest names:
    an entry for a file that exists only outside the tree is just missing."""
    outside = signed.root.parent / "outside-secret.txt"
    outside.write_text("secret\n")
    d = _doc(signed)
    d["entries"].append({"type": "file", "path": "zzz-secret", "mode": 420, "size": 7, "blake3": "0" * 64})
    _entries_digest(d)
    _sign_raw(signed, json.dumps(d).encode())
    (signed.root / "zzz-secret").symlink_to(outside)
    r = signed.verify()
    assert {(p.path, p.kind) for p in r.problems} == {("zzz-secret", "type_changed")}

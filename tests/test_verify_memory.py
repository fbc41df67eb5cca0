"""What a verification keeps in memory: nothing of the manifest's bytes, no large index between runs."""

from __future__ import annotations

import pytest

from duri_integrity import manifest, scan

from .conftest import Signed


def test_a_large_manifests_index_is_rebuilt_each_run_and_still_finds_every_change(
    signed: Signed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above the cache size the path index is not kept between runs; every run still finds every change."""
    monkeypatch.setattr(scan, "INDEX_CACHE_ENTRIES", 1)
    monkeypatch.setattr(scan, "_index_cache", [])
    assert signed.verify().status == "VERIFIED"
    assert scan._index_cache == []
    assert signed.verify().status == "VERIFIED"
    (signed.root / "app" / "main.py").write_bytes(b"print('changed')\n")
    (signed.root / "app" / "extra.py").write_bytes(b"")
    r = signed.verify()
    assert r.status == "FAILED"
    assert {(p.path, p.kind) for p in r.problems} == {("app/main.py", "modified"), ("app/extra.py", "added")}


def test_a_small_manifests_index_is_kept_for_the_next_run(signed: Signed, monkeypatch: pytest.MonkeyPatch) -> None:
    """At or below the cache size the index of the last manifest is kept (a long-lived caller's saving)."""
    monkeypatch.setattr(scan, "_index_cache", [])
    assert signed.verify().status == "VERIFIED"
    [(kept_for, index)] = scan._index_cache
    assert signed.verify().status == "VERIFIED"
    assert scan._index_cache[0][1] is index and len(index) == len(kept_for.entries)


def test_the_decode_cache_holds_no_copy_of_the_manifest_bytes(signed: Signed) -> None:
    """The decoded-manifest cache is keyed by length and BLAKE3, not by 16 MB of bytes at 100,000 files."""
    assert signed.verify().status == "VERIFIED"
    data = signed.manifest.read_bytes()
    [entry] = manifest._last
    assert not any(isinstance(part, bytes) and len(part) >= len(data) for part in entry)
    assert len(data) in entry

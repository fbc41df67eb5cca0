"""pytest-benchmark suite (nox -s bench): the hot paths over the 3,000-file, ~100 MB tree."""

from __future__ import annotations

import pytest

from duri_integrity import verify_integrity
from duri_integrity.build import build_manifest
from duri_integrity.keys import load_trusted_keys, verify_signature
from duri_integrity.manifest import decode_manifest

from .conftest import Bench


def _verify(b: Bench, **kw: object):  # type: ignore[no-untyped-def]
    r = verify_integrity(
        b.tree, manifest=b.manifest, public_keys=str(b.public), deployment="bench", use_config_file=False, **kw
    )
    assert r.status == "VERIFIED", r.summary
    return r


def test_verify_full(benchmark: pytest.FixtureRequest, bench: Bench) -> None:
    """verify_integrity in-process: signature, decode, full walk, hash every file, compare."""
    benchmark(_verify, bench)  # type: ignore[operator]


def test_verify_quick(benchmark: pytest.FixtureRequest, bench: Bench) -> None:
    """verify_integrity(quick=True) on the unchanged tree, snapshot already taken."""
    _verify(bench, quick=True, cache_dir=str(bench.cache))
    r = benchmark(_verify, bench, quick=True, cache_dir=str(bench.cache))  # type: ignore[operator]
    assert r.mode == "quick" and r.counts["hashed"] == 0


def test_build(benchmark: pytest.FixtureRequest, bench: Bench) -> None:
    """build_manifest in-process: walk with lstat, hash every file, encode."""
    benchmark(build_manifest, str(bench.tree), deployment="bench")  # type: ignore[operator]


def test_decode_manifest(benchmark: pytest.FixtureRequest, bench: Bench) -> None:
    """Decode and validate the 3,000-entry manifest."""
    data = bench.manifest.read_bytes()
    m = benchmark(decode_manifest, data)  # type: ignore[operator]
    assert len(m.entries) > 3000


def test_signature_check(benchmark: pytest.FixtureRequest, bench: Bench) -> None:
    """Ed25519 over the BLAKE2b prehash of the manifest bytes."""
    data = bench.manifest.read_bytes()
    sig = (bench.manifest.parent / "MANIFEST.json.minisig").read_bytes()
    keys = load_trusted_keys([str(bench.public)])
    benchmark(verify_signature, data, sig, keys)  # type: ignore[operator]

"""pytest-benchmark suite (nox -s bench): the hot paths over the 3,000-file, ~100 MB tree."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from duri_integrity import verify_integrity
from duri_integrity.build import build_manifest
from duri_integrity.keys import load_trusted_keys, looks_like_secret_key, verify_signature
from duri_integrity.manifest import decode_manifest

from .conftest import Bench

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture  # the [dev] extra: Any where it is not installed

    from duri_integrity.report import Report


def _verify(b: Bench, **kw: Any) -> Report:  # kw: verify_integrity keywords, checked by the call
    r = verify_integrity(
        b.tree, manifest=b.manifest, public_keys=str(b.public), deployment="bench", use_config_file=False, **kw
    )
    assert r.status == "VERIFIED", r.summary
    return r


def test_verify_full(benchmark: BenchmarkFixture, bench: Bench) -> None:
    """verify_integrity in-process: signature, decode, full walk, hash every file, compare."""
    benchmark(_verify, bench)


def test_verify_quick(benchmark: BenchmarkFixture, bench: Bench) -> None:
    """verify_integrity(quick=True) on the unchanged tree, snapshot already taken."""
    _verify(bench, quick=True, cache_dir=str(bench.cache))
    r = benchmark(_verify, bench, quick=True, cache_dir=str(bench.cache))
    assert r.mode == "quick" and r.counts["hashed"] == 0


def test_build(benchmark: BenchmarkFixture, bench: Bench) -> None:
    """build_manifest in-process: walk with lstat, hash every file, encode."""
    benchmark(build_manifest, str(bench.tree), deployment="bench")


def test_decode_manifest(benchmark: BenchmarkFixture, bench: Bench) -> None:
    """Decode and validate the 3,000-entry manifest."""
    data = bench.manifest.read_bytes()
    m = benchmark(decode_manifest, data)
    assert len(m.entries) > 3000


def test_signature_check(benchmark: BenchmarkFixture, bench: Bench) -> None:
    """Ed25519 over the BLAKE2b prehash of the manifest bytes."""
    data = bench.manifest.read_bytes()
    sig = (bench.manifest.parent / "MANIFEST.json.minisig").read_bytes()
    keys = load_trusted_keys([str(bench.public)])
    benchmark(verify_signature, data, sig, keys)


@pytest.mark.parametrize("head", ["text", "RW repeated"])
def test_secret_key_check(benchmark: BenchmarkFixture, head: str) -> None:
    """build's secret-key check of one file's first 4 KiB: ordinary text, and the worst case for the
    search (4 KiB of "RW", a key line's first two characters, over and over)."""
    data = {"text": b"import os\n" * 410, "RW repeated": b"RW" * 2048}[head]
    assert benchmark(looks_like_secret_key, data) is False

"""Fixtures for the pytest-benchmark suite: the generated tree, a key pair, a signed manifest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.treegen import CACHE, make_tree


@dataclass
class Bench:
    tree: Path
    manifest: Path
    public: Path
    secret: Path
    cache: Path


@pytest.fixture(scope="session", autouse=True)
def _state_in_cache() -> None:
    """Rollback state like a real host keeps it, but in the cache rather than /var/lib."""
    import os

    os.environ["DURI_INTEGRITY_STATE_DIR"] = str(CACHE / "state")


@pytest.fixture(scope="session")
def bench() -> Bench:
    from duri_integrity.build import build_manifest, sign_manifest, write_atomic
    from duri_integrity.keys import generate_keypair

    tree = make_tree(3000)
    work = CACHE / "pytest-bench"
    work.mkdir(parents=True, exist_ok=True)
    sk, pk = work / "b.key", work / "b.pub"
    generate_keypair(str(sk), str(pk), force=True)
    manifest = work / "MANIFEST.json"
    write_atomic(str(manifest), build_manifest(str(tree), deployment="bench").data)
    sign_manifest(str(manifest), str(sk))
    return Bench(tree, manifest, pk, sk, work / "cache")

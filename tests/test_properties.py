"""Properties over many generated cases."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duri_integrity import verify_integrity
from duri_integrity.build import build_manifest
from duri_integrity.manifest import decode_manifest

from .conftest import Signed, build_and_sign, new_keys
from .strategies import byte_flip, component_bytes, file_contents

_SIZES = [1, 2, 100, 2047, 2048, 4096, 70_000, (1 << 20) + 3]


@pytest.fixture(scope="module")
def flip_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Signed, list[Path]]:
    base = tmp_path_factory.mktemp("flip")
    root = base / "tree"
    files: list[Path] = []
    for i, size in enumerate(_SIZES):
        p = root / f"d{i % 3}" / f"f{i}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(size))
        files.append(p)
    keys = new_keys(base / "keys")
    return build_and_sign(root, keys), files


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flip=byte_flip(_SIZES))
def test_flipping_any_byte_fails_naming_that_file(
    flip_tree: tuple[Signed, list[Path]], flip: tuple[int, int, int]
) -> None:
    """Flipping any bit pattern of any byte of any file gives FAILED naming exactly that file."""
    signed, files = flip_tree
    index, offset, mask = flip
    path: Path = files[index]
    original = path.read_bytes()
    changed = bytearray(original)
    changed[offset] ^= mask
    try:
        path.write_bytes(bytes(changed))
        r = verify_integrity(signed.root, public_keys=[str(signed.keys.public)], use_config_file=False)
    finally:
        path.write_bytes(original)
    assert r.status == "FAILED"
    assert [(p.path, p.kind) for p in r.problems] == [(str(path.relative_to(signed.root)), "modified")]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(component_bytes, min_size=1, max_size=6, unique=True), content=file_contents)
def test_any_file_names_round_trip(
    tmp_path_factory: pytest.TempPathFactory, names: list[bytes], content: bytes
) -> None:
    """Any legal file names (arbitrary bytes) survive build -> encode -> decode -> verify."""
    base = tmp_path_factory.mktemp("names")
    root = os.fsencode(base / "t")
    os.mkdir(root)
    for name in names:
        with open(root + b"/" + name, "wb") as f:
            f.write(content)
    res = build_manifest(os.fsdecode(root), deployment="svc")
    assert decode_manifest(res.data) == res.manifest
    assert len(res.manifest.entries) == len(names)
    signed = build_and_sign(Path(os.fsdecode(root)), new_keys(base / "keys"))
    r = signed.verify(state_dir="none")  # every example is another tree of one deployment, in the same second
    assert r.status == "VERIFIED", r.summary

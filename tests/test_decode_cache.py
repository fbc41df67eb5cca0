"""The decoded-manifest cache: identical bytes only, one entry, never in place of the signature check."""

from __future__ import annotations

from pathlib import Path

import pytest

from duri_integrity import manifest
from duri_integrity.errors import ManifestError
from duri_integrity.manifest import decode_manifest_keys

from .conftest import Signed


def test_identical_bytes_reuse_the_decoded_manifest(signed: Signed) -> None:
    """The same bytes give the same Manifest object and an equal, separate key list."""
    data = signed.manifest.read_bytes()
    m1, k1 = decode_manifest_keys(data)
    k1.append("caller's own change")
    m2, k2 = decode_manifest_keys(bytes(bytearray(data)))  # equal bytes, another object
    assert m2 is m1 and k2 == k1[:-1]


def test_other_bytes_are_decoded_again_and_failures_are_not_cached(signed: Signed) -> None:
    """One byte more is a fresh decode (here: refused); the good bytes then still decode."""
    data = signed.manifest.read_bytes()
    m1, _ = decode_manifest_keys(data)
    with pytest.raises(ManifestError):
        decode_manifest_keys(data[:-3] + b"}}\n")
    with pytest.raises(ManifestError):
        decode_manifest_keys(data, max_entries=1)  # the limit is part of the key
    assert decode_manifest_keys(data)[0] == m1
    assert len(manifest._last) == 1


def test_signature_is_checked_on_every_verification(signed: Signed, tmp_path: Path) -> None:
    """After a VERIFIED run has cached the manifest, the same bytes with a bad signature are UNTRUSTED."""
    assert signed.verify().status == "VERIFIED"
    sig = signed.signature.read_bytes().splitlines()
    sig[1] = sig[1][:-8] + (b"AAAAAAAA" if not sig[1].endswith(b"AAAAAAAA") else b"BBBBBBBB")
    signed.signature.write_bytes(b"\n".join(sig) + b"\n")
    assert signed.verify().status == "UNTRUSTED"

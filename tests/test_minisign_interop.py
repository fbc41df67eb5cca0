"""Interoperability with the real minisign binary, both ways."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from duri_integrity import verify_integrity
from duri_integrity.build import build_manifest, write_atomic

from .conftest import Signed

pytestmark = pytest.mark.minisign


def test_minisign_verifies_our_signature(signed: Signed, minisign_bin: str) -> None:
    """`minisign -Vm MANIFEST -p KEY.pub` accepts a signature made by duri-integrity."""
    out = subprocess.run(
        [minisign_bin, "-Vm", str(signed.manifest), "-p", str(signed.keys.public)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "Signature and comment signature verified" in out.stdout + out.stderr
    assert "release:v1.0.0" in out.stdout


def test_minisign_rejects_our_signature_after_edit(signed: Signed, minisign_bin: str) -> None:
    """minisign itself refuses the signature once the manifest bytes change."""
    signed.manifest.write_bytes(signed.manifest.read_bytes().replace(b'"mode":493', b'"mode":511', 1))
    out = subprocess.run(
        [minisign_bin, "-Vm", str(signed.manifest), "-p", str(signed.keys.public)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode != 0


def test_we_accept_minisign_signed_manifest(tree: Path, tmp_path: Path, minisign_bin: str) -> None:
    """A manifest signed by `minisign -S` with a `minisign -G -W` key verifies with duri-integrity."""
    kdir = tmp_path / "mkeys"
    kdir.mkdir()
    pk, sk = kdir / "m.pub", kdir / "m.key"
    subprocess.run([minisign_bin, "-G", "-W", "-p", str(pk), "-s", str(sk)], check=True, capture_output=True)
    manifest = tree / "MANIFEST.json"
    res = build_manifest(str(tree), deployment="svc", skip=(str(manifest), str(manifest) + ".minisig"))
    write_atomic(str(manifest), res.data)
    subprocess.run([minisign_bin, "-S", "-m", str(manifest), "-s", str(sk)], check=True, capture_output=True)
    report = verify_integrity(tree, public_keys=[str(pk)], use_config_file=False)
    assert report.status == "VERIFIED", report.to_json()
    assert report.manifest is not None
    key_line = pk.read_text().splitlines()[0]
    assert key_line == f"untrusted comment: minisign public key {report.manifest.key_id}"  # minisign's spelling


def test_our_public_key_works_with_minisign_signatures(signed: Signed, tmp_path: Path, minisign_bin: str) -> None:
    """Our keygen's secret key file is readable by minisign for signing (-S), unencrypted."""
    data = tmp_path / "file.txt"
    data.write_text("hello\n")
    out = subprocess.run(
        [minisign_bin, "-S", "-m", str(data), "-s", str(signed.keys.secret)],
        capture_output=True,
        text=True,
        check=False,
        input="",
    )
    assert out.returncode == 0, out.stderr
    out = subprocess.run(
        [minisign_bin, "-Vm", str(data), "-p", str(signed.keys.public)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr

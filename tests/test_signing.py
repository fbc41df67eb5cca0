"""Signing with cryptography directly (signing.py): py-minisign's bytes, minisign's keys, no py-minisign import."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import minisign
import pytest

from duri_integrity.errors import KeyFileError
from duri_integrity.keys import generate_keypair, load_trusted_keys, verify_signature
from duri_integrity.signing import load_secret_key, sign_bytes

from .conftest import Keys

COMMENT = "timestamp:1700000000\tfile:MANIFEST.json\thashed\tdeployment:svc\tserial:7\troot:abc"


def _py_minisign(key_file: Path, password: str | None, data: bytes, comment: str) -> bytes:
    sk = minisign.SecretKey.from_bytes(key_file.read_bytes())
    if password is not None:
        sk.decrypt(password)
    sig = sk.sign(
        data, prehash=True, untrusted_comment="signature from duri-integrity secret key", trusted_comment=comment
    )
    return bytes(sig) + b"\n"


@pytest.mark.parametrize("password", [None, "correct horse"])
def test_signatures_are_byte_identical_to_py_minisign(tmp_path: Path, password: str | None) -> None:
    """Our signature of some bytes is exactly what py-minisign writes with the same key and comments."""
    sk_path, pk_path = tmp_path / "k.key", tmp_path / "k.pub"
    generate_keypair(str(sk_path), str(pk_path), password=password)
    for data in (b"", b"manifest bytes", os.urandom(100_000)):
        ours = sign_bytes(data, load_secret_key(str(sk_path), password), COMMENT)
        assert ours == _py_minisign(sk_path, password, data, COMMENT)
        assert verify_signature(data, ours, load_trusted_keys([str(pk_path)])).trusted_comment == COMMENT


@pytest.mark.minisign
@pytest.mark.parametrize("encrypted", [False, True])
def test_keys_made_by_minisign_sign_what_minisign_verifies(tmp_path: Path, minisign_bin: str, encrypted: bool) -> None:
    """A key from `minisign -G` (with -W, or password-protected) signs bytes that `minisign -Vm` accepts."""
    sk_path, pk_path, data = tmp_path / "m.key", tmp_path / "m.pub", tmp_path / "MANIFEST.json"
    args = [minisign_bin, "-G", "-p", str(pk_path), "-s", str(sk_path)]
    subprocess.run(args if encrypted else [*args, "-W"], input=b"pw\npw\n", check=True, capture_output=True, timeout=60)
    data.write_bytes(b'{"format":"duri-integrity-manifest"}\n')
    key = load_secret_key(str(sk_path), "pw" if encrypted else None)
    (tmp_path / "MANIFEST.json.minisig").write_bytes(sign_bytes(data.read_bytes(), key, COMMENT))
    out = subprocess.run(
        [minisign_bin, "-Vm", str(data), "-p", str(pk_path)], capture_output=True, text=True, check=False, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "Signature and comment signature verified" in out.stdout + out.stderr and COMMENT in out.stdout


def _rewrite_key(keys: Keys, at: int) -> None:
    """Flip one byte of the decoded key line at offset ``at`` and write the key file back."""
    lines = keys.secret.read_bytes().splitlines()
    raw = bytearray(base64.b64decode(lines[1]))
    raw[at] ^= 1
    keys.secret.write_bytes(lines[0] + b"\n" + base64.b64encode(bytes(raw)) + b"\n")


@pytest.mark.parametrize(
    ("at", "why"),
    [(60, "checksum"), (100, "checksum"), (0, "unsupported key algorithm"), (2, "unsupported key algorithm")],
)
def test_a_damaged_key_is_refused(keys: Keys, at: int, why: str) -> None:
    """A flipped byte in the key id, the seed or an algorithm field: refused, never a signature that fails later."""
    _rewrite_key(keys, at)
    with pytest.raises(KeyFileError, match=why):
        load_secret_key(str(keys.secret))


def test_a_key_whose_public_half_is_not_its_own_is_refused(keys: Keys) -> None:
    """A key file whose stored public key does not belong to its seed (checksum recomputed) is refused."""
    from _blake2 import blake2b

    lines = keys.secret.read_bytes().splitlines()
    raw = bytearray(base64.b64decode(lines[1]))
    raw[100] ^= 1  # inside the public half
    raw[126:158] = blake2b(bytes(raw[:2] + raw[54:126]), digest_size=32).digest()
    keys.secret.write_bytes(lines[0] + b"\n" + base64.b64encode(bytes(raw)) + b"\n")
    with pytest.raises(KeyFileError, match="public half"):
        load_secret_key(str(keys.secret))


def test_encrypted_keys_need_the_right_password(tmp_path: Path) -> None:
    """A password-protected key: refused without a password and with a wrong one, usable with the right one."""
    sk_path = tmp_path / "k.key"
    generate_keypair(str(sk_path), str(tmp_path / "k.pub"), password="right")
    with pytest.raises(KeyFileError, match="encrypted and no password"):
        load_secret_key(str(sk_path))
    with pytest.raises(KeyFileError, match="wrong password"):
        load_secret_key(str(sk_path), "wrong")
    assert load_secret_key(str(sk_path), "right").key_id


@pytest.mark.parametrize("comment", ["two\nlines", "carriage\rreturn", "bell\x07", "naïve", "x" * 8176])
def test_trusted_comments_minisign_cannot_carry_are_refused(keys: Keys, comment: str) -> None:
    """Line breaks, unprintable or non-ASCII characters and over-long trusted comments: KeyFileError, no signature."""
    with pytest.raises(KeyFileError, match="cannot sign"):
        sign_bytes(b"data", load_secret_key(str(keys.secret)), comment)
    assert sign_bytes(b"data", load_secret_key(str(keys.secret)), "x" * 8175)  # minisign's limit exactly


def test_a_wiped_key_cannot_sign(keys: Keys) -> None:
    """After wipe() the seed is zeroed and signing is refused."""
    sk = load_secret_key(str(keys.secret))
    sk.wipe()
    with pytest.raises(KeyFileError, match="wiped"):
        sign_bytes(b"data", sk, "c")


def test_build_and_sign_does_not_import_py_minisign(tree: Path, keys: Keys) -> None:
    """`duri-integrity build -s KEY` (unencrypted key) signs without importing py-minisign (its start-up cost)."""
    out = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "duri_integrity",
            "build",
            str(tree),
            "-d",
            "svc",
            "-s",
            str(keys.secret),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "duri_integrity.signing" in imported and "cryptography" in imported
    assert not {m for m in imported if m == "minisign" or m.startswith("minisign.")}
    assert (tree / "MANIFEST.json.minisig").exists()

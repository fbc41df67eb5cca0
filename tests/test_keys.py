"""Key files and detached signatures (library side; interop lives in test_minisign_interop)."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from duri_integrity.errors import KeyFileError, SignatureError
from duri_integrity.keys import (
    generate_keypair,
    load_public_key,
    load_secret_key,
    load_trusted_keys,
    parse_trusted_comment,
    sign_bytes,
    verify_signature,
)

from .conftest import Keys, new_keys


def test_keygen_writes_private_secret_key(keys: Keys) -> None:
    """The secret key file is created 0600 and the public key is a two-line minisign key."""
    assert stat.S_IMODE(keys.secret.stat().st_mode) == 0o600
    lines = keys.public.read_text().splitlines()
    assert lines[0] == f"untrusted comment: minisign public key {keys.key_id}"
    assert lines[1].startswith("RW") and len(lines[1]) == 56


def test_keygen_refuses_to_overwrite(keys: Keys) -> None:
    """An existing key is never silently replaced; --force replaces it."""
    with pytest.raises(KeyFileError, match="already exists"):
        generate_keypair(str(keys.secret), str(keys.public))
    new_id = generate_keypair(str(keys.secret), str(keys.public), force=True)
    assert new_id != keys.key_id
    assert stat.S_IMODE(keys.secret.stat().st_mode) == 0o600


def test_sign_and_verify_round_trip(keys: Keys) -> None:
    """A signature made with the secret key verifies with the public key and carries its comment."""
    sk = load_secret_key(str(keys.secret))
    sig = sign_bytes(b"payload", sk, "release:v1\tserial:3")
    info = verify_signature(b"payload", sig, load_trusted_keys([str(keys.public)]))
    assert info.key_id == keys.key_id
    assert parse_trusted_comment(info.trusted_comment) == {"release": "v1", "serial": "3"}


def test_wrong_key_is_named(keys: Keys, tmp_path: Path) -> None:
    """A signature from an untrusted key names that key id and the trusted ones."""
    other = new_keys(tmp_path / "other", "o")
    sig = sign_bytes(b"x", load_secret_key(str(other.secret)), "c")
    with pytest.raises(SignatureError, match=other.key_id):
        verify_signature(b"x", sig, load_trusted_keys([str(keys.public)]))


def test_edited_data_comment_or_signature_fail(keys: Keys) -> None:
    """Changing the data, the trusted comment or the signature bytes breaks verification."""
    trusted = load_trusted_keys([str(keys.public)])
    sig = sign_bytes(b"data", load_secret_key(str(keys.secret)), "serial:1")
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(b"datA", sig, trusted)
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(b"data", sig.replace(b"serial:1", b"serial:2"), trusted)
    lines = sig.splitlines()
    raw = bytearray(base64.b64decode(lines[1]))
    raw[-1] ^= 1
    lines[1] = base64.b64encode(bytes(raw))
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(b"data", b"\n".join(lines), trusted)


@pytest.mark.parametrize("sig", [b"", b"garbage", b"a\nb\nc\nd\n", b"x" * 20000])
def test_malformed_signature(keys: Keys, sig: bytes) -> None:
    """A malformed signature file is a SignatureError, not a crash."""
    with pytest.raises(SignatureError):
        verify_signature(b"data", sig, load_trusted_keys([str(keys.public)]))


def test_public_key_inline_and_directory(keys: Keys, tmp_path: Path) -> None:
    """Keys load from a file, from the inline base64 line, and from a directory of .pub files."""
    line = keys.public.read_text().splitlines()[1]
    assert load_public_key(line) == load_public_key(str(keys.public))
    other = new_keys(tmp_path / "keys", "second")
    ring = load_trusted_keys([str(tmp_path / "keys")])
    assert sorted(ring.key_ids) == sorted([keys.key_id, other.key_id])


@pytest.mark.parametrize("content", ["", "one line", "untrusted comment: x\nnot-base64!!\n", "a\nb\nc\n"])
def test_malformed_public_key(tmp_path: Path, content: str) -> None:
    """A malformed public key file is a KeyFileError naming the file."""
    p = tmp_path / "bad.pub"
    p.write_text(content)
    with pytest.raises(KeyFileError, match=r"bad\.pub"):
        load_public_key(str(p))


def test_missing_key_files(tmp_path: Path) -> None:
    """Missing key files give KeyFileError with the path."""
    with pytest.raises(KeyFileError, match=r"nope\.pub"):
        load_public_key(str(tmp_path / "nope.pub"))
    with pytest.raises(KeyFileError, match=r"nope\.key"):
        load_secret_key(str(tmp_path / "nope.key"))


def test_secret_key_readable_by_others_is_refused(keys: Keys) -> None:
    """A secret key readable by group or others is refused unless explicitly allowed."""
    keys.secret.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_secret_key(str(keys.secret))
    load_secret_key(str(keys.secret), allow_insecure_permissions=True).wipe()


def test_encrypted_secret_key(tmp_path: Path) -> None:
    """An encrypted key needs its password; a wrong or missing password is a clear error."""
    sk, pk = tmp_path / "e.key", tmp_path / "e.pub"
    generate_keypair(str(sk), str(pk), password="correct horse")
    with pytest.raises(KeyFileError, match="no password"):
        load_secret_key(str(sk))
    with pytest.raises(KeyFileError, match="wrong password"):
        load_secret_key(str(sk), "wrong")
    key = load_secret_key(str(sk), "correct horse")
    sig = sign_bytes(b"d", key, "c")
    verify_signature(b"d", sig, load_trusted_keys([str(pk)]))


@pytest.mark.parametrize("prehash", [True, False])
def test_signatures_from_py_minisign_verify(keys: Keys, prehash: bool) -> None:
    """Signatures made by py-minisign, prehashed (ED) or legacy (Ed), verify with our parser."""
    import minisign

    sk = minisign.SecretKey.from_bytes(keys.secret.read_bytes())
    sig = sk.sign(b"content", prehash=prehash, trusted_comment="t")
    info = verify_signature(b"content", bytes(sig), load_trusted_keys([str(keys.public)]))
    assert info.trusted_comment == "t"
    with pytest.raises(SignatureError):
        verify_signature(b"content!", bytes(sig), load_trusted_keys([str(keys.public)]))


def test_key_ids_are_spelled_as_minisign_prints_them() -> None:
    """Key ids render like minisign's printf("%" PRIX64): upper-case hex, no leading zeros."""
    from duri_integrity.keys import format_key_id

    assert format_key_id(bytes.fromhex("80aa2b3afc7ebf78")) == "78BF7EFC3A2BAA80"
    assert format_key_id(bytes.fromhex("13f7ba28ef6fd40c")) == "CD46FEF28BAF713"
    assert format_key_id(bytes(7) + b"\x01") == "100000000000000"


def test_revocation_list_accepts_ids_with_or_without_leading_zeros(tmp_path: Path) -> None:
    """'0CD46FEF28BAF713' and 'cd46fef28baf713' name the same key."""
    from duri_integrity.keys import load_revoked_key_ids

    lst = tmp_path / "revoked.list"
    lst.write_text("0CD46FEF28BAF713\ncd46fef28baf713  # same key\n")
    assert load_revoked_key_ids([str(lst)]) == {"CD46FEF28BAF713"}
    lst.write_text("12345678901234567\n")
    with pytest.raises(KeyFileError, match="up to 16 hex digits"):
        load_revoked_key_ids([str(lst)])


def test_secret_key_detection_needs_a_whole_key(keys: Keys) -> None:
    """A file is a secret key only if a line decodes to a whole minisign secret key, not if it starts like one."""
    from duri_integrity.keys import looks_like_secret_key

    line = keys.secret.read_bytes().splitlines()[1]
    assert looks_like_secret_key(keys.secret.read_bytes())
    assert looks_like_secret_key(line)  # the bare base64 line
    assert looks_like_secret_key(b"\xef\xbb\xbfany comment\r\n" + line + b"\ntrailing junk" * 1000)
    assert not looks_like_secret_key(b"RWQAAEIy")  # the prefix alone (a Hypothesis find)
    assert not looks_like_secret_key(line[:-8] + b"\n")  # a truncated key
    assert not looks_like_secret_key(keys.public.read_bytes())


def test_secret_key_found_anywhere_in_the_first_4_kib(keys: Keys) -> None:
    """A key line pasted after other lines, behind a prefix, inside JSON or without its padding is found."""
    from duri_integrity.keys import SECRET_KEY_HEAD, looks_like_secret_key

    whole = keys.secret.read_bytes()
    line = whole.splitlines()[1]
    for text in (
        b"\n" + whole,
        b"# prod signing key\n" + whole,
        b"a\nb\n" + line + b"\n",
        b"MINISIGN_KEY=" + line + b"\n",
        b'{"key": "' + line + b'"}',
        b"x\n" + line.rstrip(b"=") + b"\n",
        line.rstrip(b"="),
        b"x" * (SECRET_KEY_HEAD - len(line) - 1) + b"\n" + line,
    ):
        assert looks_like_secret_key(text), text[:40]
    assert not looks_like_secret_key(b"x" * (SECRET_KEY_HEAD - 100) + b"\n" + line)  # past the 4 KiB looked at
    assert not looks_like_secret_key(bytes(range(256)) * 16)


def test_secret_key_found_glued_to_base64_text(keys: Keys) -> None:
    """A key line right after a letter, digit, "+" or "/" (a URL, a name without "="), after a decoy
    "RW..." that runs into it, or with more base64 after it, is found (an outside attack shipped those)."""
    from duri_integrity.keys import looks_like_secret_key

    line = keys.secret.read_bytes().splitlines()[1]
    bare = line.rstrip(b"=")
    for text in (
        b"ab" + line,
        b"https://vault.example/keys/" + line + b"\n",
        b"MINISIGN_KEY" + bare + b"\n",
        b"a+" + line,
        b"9" + bare,
        b"KEY=RW" + b"A" * 50 + line,  # the decoy's 211 characters cover the key's start
        b"RW" * 30 + line,
        bare + b"QUFBQUFB",  # no "=", more base64 after it
    ):
        assert looks_like_secret_key(text), text[:40]
    assert not looks_like_secret_key(b"RW" * 2048)  # the worst case for the search: no key in it
    assert not looks_like_secret_key(line[:100] + line[101:])  # a character short

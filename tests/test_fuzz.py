"""Fuzzing with a bounded budget: hostile bytes never raise anything but the package's own errors."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duri_integrity.config import resolve_settings
from duri_integrity.errors import ConfigError, KeyFileError, ManifestError, SignatureError
from duri_integrity.exclude import Excluder
from duri_integrity.keys import TrustedKeys, load_trusted_keys, parse_public_key, verify_signature
from duri_integrity.manifest import decode_manifest

from .strategies import mutated, toml_text

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
SEED_MANIFEST = (
    b'{"format":"duri-integrity-manifest","version":2,"tool":"duri-integrity 0.1.0","deployment":"svc","release":"v1",'
    b'"created":"2026-11-26T00:00:00Z","serial":1,"exclude":["*.pyc"],"root_digest":"' + b"0" * 64 + b'",'
    b'"entries":[\n{"type":"dir","path":"a","mode":493},\n'
    b'{"type":"file","path":"a/b","mode":420,"size":3,"blake3":"' + b"1" * 64 + b'"},\n'
    b'{"type":"symlink","path_b64":"/w==","mode":511,"target":"a/b"}\n]}\n'
)


@FUZZ
@given(data=st.one_of(st.binary(max_size=512), mutated(SEED_MANIFEST)))
def test_manifest_decoder_raises_only_manifest_error(data: bytes) -> None:
    """decode_manifest raises ManifestError or nothing."""
    with contextlib.suppress(ManifestError):
        decode_manifest(data)


# The trusted keys, a signature of SEED_MANIFEST by them, and the public key file's bytes.
Sample = tuple[TrustedKeys, bytes, bytes]


@pytest.fixture(scope="module")
def signed_sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    from duri_integrity.keys import generate_keypair, load_secret_key, sign_bytes

    d = tmp_path_factory.mktemp("fuzzkeys")
    generate_keypair(str(d / "k.key"), str(d / "k.pub"))
    sig = sign_bytes(SEED_MANIFEST, load_secret_key(str(d / "k.key")), "serial:1")
    return load_trusted_keys([str(d / "k.pub")]), sig, (d / "k.pub").read_bytes()


@FUZZ
@given(edit=st.data())
def test_signature_parser_raises_only_signature_error(signed_sample: Sample, edit: st.DataObject) -> None:
    """verify_signature raises SignatureError or returns; a mutated signature never verifies."""
    trusted, sig, _ = signed_sample
    bad = edit.draw(st.one_of(st.binary(max_size=400), mutated(sig)))
    try:
        verify_signature(SEED_MANIFEST, bad, trusted)
    except SignatureError:
        return
    # A mutation may only survive if it left the signed parts intact (e.g. the untrusted comment).
    assert bad.splitlines()[1:] == sig.splitlines()[1:]


@FUZZ
@given(edit=st.data())
def test_public_key_parser(
    signed_sample: Sample, edit: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """parse_public_key raises ValueError or returns; loading a file raises only KeyFileError."""
    _, _, pub = signed_sample
    text = edit.draw(st.one_of(st.binary(max_size=200), mutated(pub)))
    with contextlib.suppress(ValueError):
        parse_public_key(text)
    path = tmp_path_factory.mktemp("pub") / "k.pub"
    path.write_bytes(text)
    with contextlib.suppress(KeyFileError):
        load_trusted_keys([str(path)])


@FUZZ
@given(text=toml_text, env_workers=st.one_of(st.none(), st.text(max_size=5)))
def test_config_loader_raises_only_config_error(
    text: str, env_workers: str | None, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Any config file text and environment value gives settings or a ConfigError."""
    d = tmp_path_factory.mktemp("cfg")
    (d / "duri-integrity.toml").write_text(text, encoding="utf-8", errors="surrogateescape")
    env = {"DURI_INTEGRITY_WORKERS": env_workers} if env_workers is not None else {}
    old = os.getcwd()
    os.chdir(d)
    try:
        resolve_settings(env=env)
    except ConfigError:
        pass
    finally:
        os.chdir(old)


@FUZZ
@given(patterns=st.lists(st.text(max_size=30), max_size=5), path=st.text(min_size=1, max_size=30))
def test_exclude_patterns_raise_only_config_error(patterns: list[str], path: str) -> None:
    """Any pattern list compiles or raises ConfigError, and matching never raises."""
    try:
        ex = Excluder(patterns)
    except ConfigError:
        return
    ex.excluded(path, False)
    ex.excluded(path, True)


@FUZZ
@given(blob=st.binary(max_size=300))
def test_snapshot_and_state_files_never_crash(blob: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Garbage in the quick-mode snapshot is ignored with a note; garbage state is a ConfigError."""
    from duri_integrity.snapshot import load_snapshot, snapshot_path
    from duri_integrity.state import StateStore

    d = tmp_path_factory.mktemp("cache")
    (d / "snapshot.key").write_bytes(os.urandom(32))
    os.chmod(d / "snapshot.key", 0o600)
    Path(snapshot_path(str(d), "/r", "0" * 64)).write_bytes(blob)
    snap, note = load_snapshot(str(d), "/r", "0" * 64, 3)
    assert snap is None and note
    store = StateStore(str(d))
    Path(store.path("svc")).write_bytes(blob)
    os.chmod(store.path("svc"), 0o600)
    with contextlib.suppress(ConfigError):
        store.read("svc")

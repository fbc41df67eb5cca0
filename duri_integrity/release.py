"""Build and sign a release as one operation: what the CLI, the demo and the benchmarks use.

The signing key is loaded (and decrypted) once, before any hashing, so a bad key
or password fails fast; the manifest bytes that are written are exactly the bytes
that are signed; both files are replaced atomically, the signature last, so a
reader never pairs a new signature with an old manifest.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import NamedTuple

from .build import build_manifest, signature_for, write_atomic
from .config import MANIFEST_NAME, signature_path_for
from .manifest import Manifest

__all__ = ["Release", "build_and_sign"]


class Release(NamedTuple):
    manifest: Manifest
    manifest_path: str
    signature_path: str | None
    """None when no secret key was given (an unsigned manifest was written)."""
    warnings: list[str]


def build_and_sign(
    root: str,
    *,
    deployment: str,
    secret_key: str | None,
    manifest_path: str | None = None,
    signature_path: str | None = None,
    password: str | None = None,
    allow_insecure_key: bool = False,
    exclude: Sequence[str] = (),
    release: str = "",
    serial: int | None = None,
    created: datetime | None = None,
    expires_in: timedelta | None = None,
    workers: int | None = None,
) -> Release:
    """Build the manifest of ``root`` for ``deployment``, sign it with ``secret_key``, write both.

    Without ``secret_key`` only the manifest is written, and a signature left over
    from an earlier build is reported in the warnings (it no longer matches).
    Raises the package's errors (TreeError, KeyFileError, ManifestError, ...).
    """
    from .keys import load_secret_key

    manifest_path = manifest_path or os.path.join(root, MANIFEST_NAME)
    sig_path = signature_path or signature_path_for(manifest_path)
    sk = load_secret_key(secret_key, password, allow_insecure_permissions=allow_insecure_key) if secret_key else None
    try:
        result = build_manifest(
            root,
            deployment=deployment,
            exclude=exclude,
            release=release,
            serial=serial,
            created=created,
            expires_in=expires_in,
            workers=workers,
            skip=(manifest_path, sig_path),
            secret_key_paths=(secret_key,) if secret_key else (),
        )
        signature = signature_for(result.data, result.manifest, sk, os.path.basename(manifest_path)) if sk else None
    finally:
        if sk is not None:
            sk.wipe()
    warnings = list(result.warnings)
    write_atomic(manifest_path, result.data)
    if signature is not None:
        write_atomic(sig_path, signature)
    elif os.path.lexists(sig_path):
        warnings.append(f"{sig_path} is from an earlier build and does not match; sign the new manifest")
    return Release(result.manifest, manifest_path, sig_path if signature is not None else None, warnings)

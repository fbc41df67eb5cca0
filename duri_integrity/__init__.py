"""duri-integrity: build, sign and verify signed manifests of deployment trees.

The public API is imported lazily so that ``import duri_integrity`` (and the
CLI's start-up) pays only for what is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

__all__ = [
    "ConfigError",
    "IntegrityError",
    "KeyFileError",
    "ManifestError",
    "NotVerifiedError",
    "Report",
    "SignatureError",
    "TreeError",
    "__version__",
    "build_and_sign",
    "build_manifest",
    "ensure_integrity",
    "generate_keypair",
    "sign_manifest",
    "verify_integrity",
]

if TYPE_CHECKING:
    from .build import build_manifest, sign_manifest
    from .errors import (
        ConfigError,
        IntegrityError,
        KeyFileError,
        ManifestError,
        NotVerifiedError,
        SignatureError,
        TreeError,
    )
    from .keys import generate_keypair
    from .release import build_and_sign
    from .report import Report
    from .verify import ensure_integrity, verify_integrity

_WHERE = {
    "build_and_sign": "release",
    "build_manifest": "build",
    "sign_manifest": "build",
    "generate_keypair": "keys",
    "Report": "report",
    "verify_integrity": "verify",
    "ensure_integrity": "verify",
    "ConfigError": "errors",
    "IntegrityError": "errors",
    "KeyFileError": "errors",
    "ManifestError": "errors",
    "NotVerifiedError": "errors",
    "SignatureError": "errors",
    "TreeError": "errors",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'duri_integrity' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

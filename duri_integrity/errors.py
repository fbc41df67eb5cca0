"""The package's exception tree: one root, a few leaves by cause.

Leaves that describe bad input also inherit ``ValueError`` so that callers who
only know the builtin can still catch them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .report import Report

__all__ = [
    "BadSignature",
    "CommentMismatch",
    "ConfigError",
    "Expired",
    "FromTheFuture",
    "IntegrityError",
    "KeyFileError",
    "MalformedManifest",
    "ManifestError",
    "ManifestUnreadable",
    "NotVerifiedError",
    "RevokedKey",
    "RollbackRefused",
    "SignatureError",
    "TreeError",
    "TrustAnchorInTree",
    "UnknownKey",
    "UntrustedError",
    "WrongDeployment",
]


class IntegrityError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(IntegrityError, ValueError):
    """A configuration file, environment variable or option is invalid."""


class KeyFileError(IntegrityError, ValueError):
    """A key file is missing, unreadable, malformed, or unsafe to use."""


class ManifestError(IntegrityError, ValueError):
    """A manifest is missing, unreadable, or not a valid manifest."""


class SignatureError(IntegrityError):
    """A signature is missing, malformed, from an untrusted key, or does not verify."""


class UntrustedError(IntegrityError):
    """The manifest cannot be trusted (status UNTRUSTED). ``code`` is the machine-readable reason.

    Raised by the trust pipeline (:mod:`duri_integrity.trust`) as one of a few leaves by cause.
    """

    code = "untrusted"


class ManifestUnreadable(UntrustedError):
    code = "manifest_unreadable"


class RevokedKey(UntrustedError):
    code = "revoked_key"


class MalformedManifest(UntrustedError):
    code = "malformed_manifest"


class CommentMismatch(UntrustedError):
    code = "trusted_comment_mismatch"


class Expired(UntrustedError):
    code = "expired"


class FromTheFuture(UntrustedError):
    code = "created_in_future"


class WrongDeployment(UntrustedError):
    code = "wrong_deployment"


class RollbackRefused(UntrustedError):
    code = "rollback_refused"


class TrustAnchorInTree(UntrustedError):
    """A trusted key, revocation list or config file that lies inside the tree it would vouch for."""

    code = "trust_anchor_in_tree"


class BadSignature(UntrustedError, SignatureError):
    code = "bad_signature"


class UnknownKey(UntrustedError, SignatureError):
    code = "untrusted_key"


class TreeError(IntegrityError):
    """The tree cannot be walked or read as a whole (for example the root is missing)."""


class NotVerifiedError(IntegrityError):
    """Raised by :func:`duri_integrity.ensure_integrity` when the tree is not VERIFIED."""

    def __init__(self, report: Report) -> None:
        super().__init__(f"{report.status}: {report.summary}")
        self.report = report

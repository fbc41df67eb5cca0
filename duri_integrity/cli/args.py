"""Command-line input helpers: global options, passwords, durations, build inputs.

Kept apart from :mod:`duri_integrity.cli` so the command definitions stay readable.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import click

__all__ = [
    "EXIT_CODE_HELP",
    "check_build_inputs",
    "config_option",
    "deployment_option",
    "finite",
    "logging_options",
    "not_empty",
    "parse_duration",
    "password_option",
    "read_password",
    "verify_kwargs",
    "verify_options",
    "workers_option",
]


def _configure_logging(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """--log-format / --log-level, before or after the command name (the later one wins)."""
    if value is None:
        return
    meta = ctx.meta.setdefault("duri_integrity.logging", {})
    meta[param.name] = value
    from ..logs import configure_cli_logging

    configure_cli_logging(meta.get("log_format") or "text", meta.get("log_level") or "info")


def logging_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--log-level",
        type=click.Choice(["debug", "info", "warning", "error"]),
        expose_value=False,
        callback=_configure_logging,
        help="Least severe log record written [default: info once --log-format is given].",
    )(f)
    return click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        expose_value=False,
        callback=_configure_logging,
        help="Write log records to stderr, as text or one JSON object per line [default: no log records].",
    )(f)


def read_password(password_file: str | None, *, confirm: bool = False, allow_readable: bool = False) -> str | None:
    """The secret key's password: --password-file, DURI_INTEGRITY_PASSWORD, or a prompt on a terminal.

    None when there is none to be had (no file, no variable, no terminal). ``confirm``
    (keygen) asks twice. A password file is held to the secret key's rules: owned by this
    user or root, writable by no one else, and readable by no one else unless
    ``allow_readable`` (``--allow-insecure-key``, the key's own escape hatch).
    """
    from ..errors import KeyFileError

    if password_file:
        from ..files import read_file

        data = read_file(password_file, 4096, "password file", private=True, secret=not allow_readable)
        raw = data.partition(b"\n")[0].rstrip(b"\r")
        try:
            # Strict: "replace" would map distinct invalid bytes to one character, one password.
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise KeyFileError(f"the password in {password_file!r} is not valid UTF-8") from None
    env = os.environ.get("DURI_INTEGRITY_PASSWORD")
    if env:
        try:
            env.encode("utf-8")  # os.environ keeps undecodable bytes as surrogates
        except UnicodeEncodeError:
            raise KeyFileError("DURI_INTEGRITY_PASSWORD is not valid UTF-8") from None
        return env
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return None  # never read a password from a pipe, and never prompt where no one can see it
    try:
        value: str = click.prompt("Password", hide_input=True, confirmation_prompt=confirm, err=True)
    except click.Abort:  # end of input at the prompt
        return None
    return value


_MAX_DURATION = 100 * 365 * 86400  # a manifest valid for longer than a century is a typo


def parse_duration(text: str) -> Any:
    from datetime import timedelta

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    num, unit = text[:-1], text[-1:]
    # ASCII digits only: str.isdigit() also accepts characters int() refuses ("²").
    if unit not in units or not (num.isascii() and num.isdigit()) or int(num) <= 0:
        raise click.BadParameter(f"{text!r} is not a duration like 90m, 12h, 30d or 2w")
    if len(num) > 12 or int(num) * units[unit] > _MAX_DURATION:
        raise click.BadParameter(f"{text!r} is longer than 100 years")
    return timedelta(seconds=int(num) * units[unit])


def check_build_inputs(release: str | None, exclude: tuple[str, ...], *, from_option: bool) -> None:
    """Refuse, before any hashing, what the manifest model would refuse at verify time."""
    from ..errors import ManifestError
    from ..manifest import check_release, utc_now

    for pattern in exclude:
        try:
            pattern.encode("utf-8")  # the manifest is JSON: a pattern with bytes that are not UTF-8 cannot be stored
        except UnicodeEncodeError:
            shown = pattern.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise click.BadParameter(f"{shown!r} is not valid UTF-8", param_hint="'--exclude'") from None

    try:
        check_release(release or "")
    except ManifestError as exc:
        if from_option:
            raise click.BadParameter(str(exc), param_hint="'--release'") from None
        raise ManifestError(f"release (from the environment or config): {exc}") from None
    utc_now()  # a bad SOURCE_DATE_EPOCH fails here, not after hashing the tree


EXIT_CODE_HELP = """\b
Exit codes:
  0  VERIFIED   the tree matches a trusted manifest (or the command succeeded)
  1  FAILED     the tree differs from the manifest
  2  usage      invalid command line
  3  UNTRUSTED  manifest or signature missing, malformed or expired; not by a trusted,
                unrevoked key; or older than a release already verified here
  4  ERROR      could not run: missing root, bad key or config, unreadable input
"""


password_option: Callable[[Callable[..., Any]], Callable[..., Any]] = click.option(
    "--password-file", type=click.Path(dir_okay=False), help="File whose first line is the key's password."
)
config_option: Callable[[Callable[..., Any]], Callable[..., Any]] = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="Config file to read [default: DURI_INTEGRITY_CONFIG, else /etc/duri-integrity/config.toml; "
    "never one in the working directory].",
)


def not_empty(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Refuse an explicitly empty value: ``--release "$GIT_TAG"`` with the variable unset must not
    quietly build an unlabelled manifest (nor ``--deployment ""`` fall back to another source)."""
    if value == "":
        raise click.BadParameter(
            "the value is empty (an unset shell variable?); give a value or leave the option out",
            ctx=ctx,
            param=param,
        )
    return value


deployment_option: Callable[[Callable[..., Any]], Callable[..., Any]] = click.option(
    "--deployment",
    "-d",
    metavar="NAME",
    callback=not_empty,
    help="The deployment (service) this release is for, or this host runs; signed into the manifest.",
)
workers_option: Callable[[Callable[..., Any]], Callable[..., Any]] = click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=None,
    help="Hashing threads [default: one per core, more when files come from disk].",
)


def finite(value: float, name: str) -> float:
    """click's FloatRange lets NaN through (every comparison with it is false): refuse it here."""
    import math

    if not math.isfinite(value):
        raise click.BadParameter(f"{value!r} is not a number of seconds", param_hint=name)
    return value


_VERIFY_OPTIONS: tuple[tuple[str, Callable[[Any], Any]], ...] = (
    ("manifest", click.option("--manifest", "-m", help="Manifest file [default: ROOT/MANIFEST.json].")),
    ("signature", click.option("--signature", help="Signature file [default: the manifest path + .minisig].")),
    (
        "public_keys",
        click.option(
            "--public-key",
            "-p",
            "public_keys",
            multiple=True,
            help="Trusted public key: a .pub file, a directory of them, or the base64 key. Repeatable.",
        ),
    ),
    ("deployment", deployment_option),
    (
        "quick",
        click.option(
            "--quick",
            is_flag=True,
            help="Re-hash only files whose stat changed since the last verified quick run (trusts timestamps).",
        ),
    ),
    (
        "cache_dir",
        click.option("--cache-dir", type=click.Path(file_okay=False), help="Where quick mode keeps its snapshots."),
    ),
    (
        "state_dir",
        click.option(
            "--state-dir",
            help="Where rollback high-water marks are kept [default: /var/lib/duri-integrity as root]; exactly "
            "'none' turns rollback protection off.",
        ),
    ),
    (
        "allow_rollback_to",
        click.option(
            "--allow-rollback-to",
            metavar="SERIAL|LABEL@SERIAL",
            help="Approve verifying exactly this older release on a host that has seen a newer one.",
        ),
    ),
    (
        "revoked_keys",
        click.option(
            "--revoked-key",
            "revoked_keys",
            multiple=True,
            help="Revoked key: a .pub file, a directory, or a key-id list. Repeatable.",
        ),
    ),
    (
        "clock_skew",
        click.option(
            "--clock-skew", type=click.IntRange(0, 86400), help="Seconds of clock disagreement tolerated [300]."
        ),
    ),
    ("workers", workers_option),
    ("config_file", config_option),
)
_SPEED_OPTIONS = frozenset({"quick", "cache_dir", "workers"})
"""How a verification runs, not what it trusts: doctor checks trust and takes the others only."""


def verify_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options of :func:`duri_integrity.verify_integrity`, the same for every command that verifies."""
    for _, option in reversed(_VERIFY_OPTIONS):
        f = option(f)
    return f


def trust_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """verify's options that decide what is trusted (not --quick, --cache-dir, --workers): for doctor."""
    for name, option in reversed(_VERIFY_OPTIONS):
        if name not in _SPEED_OPTIONS:
            f = option(f)
    return f


def verify_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    """Those options as :func:`duri_integrity.verify_integrity` keyword arguments (empty lists as None)."""
    out = dict(options)
    for name in ("public_keys", "revoked_keys"):
        out[name] = list(out.get(name) or ()) or None
    return out

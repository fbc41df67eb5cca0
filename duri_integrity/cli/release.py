"""Release-side commands: keygen, build, sign."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from .args import (
    check_build_inputs,
    config_option,
    deployment_option,
    not_empty,
    parse_duration,
    password_option,
    read_password,
)
from .render import echo_line

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["build", "keygen", "sign"]


@click.command()
@click.option(
    "--secret-key", "-s", default="duri-integrity.key", show_default=True, help="Secret key file to write (mode 0600)."
)
@click.option("--public-key", "-p", default="duri-integrity.pub", show_default=True, help="Public key file to write.")
@click.option("--encrypt", is_flag=True, help="Protect the secret key with a password (scrypt, as minisign does).")
@click.option("--force", is_flag=True, help="Replace existing key files.")
@password_option
def keygen(secret_key: str, public_key: str, encrypt: bool, force: bool, password_file: str | None) -> None:
    """Write a new minisign-compatible key pair.

    The secret key is unencrypted unless --encrypt is given (suited to a CI
    secret store); keep it out of every tree you build.
    """
    from ..keys import generate_keypair

    if "-" in (secret_key, public_key):
        raise click.UsageError("keygen writes key files: name them (standard output is not supported)")
    password = None
    if encrypt:
        password = read_password(password_file, confirm=True)
        if password is None:
            raise click.UsageError(
                "--encrypt needs a password: give --password-file or DURI_INTEGRITY_PASSWORD, or run on a terminal"
            )
        if not password:
            raise click.UsageError("--encrypt needs a password, and the one given is empty")
    elif password_file:
        raise click.UsageError("--password-file is only used with --encrypt")
    key_id = generate_keypair(secret_key, public_key, password=password, force=force)
    echo_line(f"key {key_id}: secret key {secret_key} (mode 0600), public key {public_key}")


@click.command()
@click.argument("root", type=click.Path(file_okay=False), required=False)
@click.option("--manifest", "-m", help="Where to write the manifest [default: ROOT/MANIFEST.json].")
@click.option("--secret-key", "-s", help="Sign with this key (writes the manifest path + .minisig beside it).")
@click.option(
    "--exclude",
    "-x",
    multiple=True,
    metavar="PATTERN",
    help="gitignore-style pattern to leave out; stored in the signed manifest. Repeatable.",
)
@deployment_option
@click.option("--release", "-r", default=None, callback=not_empty, help="Release label, e.g. a git tag or commit.")
@click.option(
    "--serial", type=click.IntRange(0, 2**63 - 1), help="Serial number [default: creation time in Unix seconds]."
)
@click.option(
    "--expires-in",
    callback=lambda c, p, v: parse_duration(v) if v else None,
    help="Make the manifest expire, e.g. 30d, 12h.",
)
@click.option("--allow-insecure-key", is_flag=True, help="Sign even if the secret key file is readable by others.")
@password_option
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=None,
    help="Hashing threads [default: one per core, up to 8].",
)
@config_option
def build(
    root: str | None,
    manifest: str | None,
    secret_key: str | None,
    exclude: tuple[str, ...],
    deployment: str | None,
    release: str | None,
    serial: int | None,
    expires_in: Any,
    allow_insecure_key: bool,
    password_file: str | None,
    workers: int | None,
    config_file: str | None,
) -> None:
    """Write a manifest of ROOT for one deployment (and sign it with --secret-key)."""
    from ..config import Settings, manifest_paths
    from ..release import build_and_sign

    given = Settings(
        root=root,
        manifest=manifest,
        secret_key=secret_key,
        exclude=list(exclude) or None,
        release=release,
        deployment=deployment,
        workers=workers,
    )
    settings, to_stdout = _build_settings(given, config_file, exclude, from_option=release is not None)
    root = settings.root or "."
    manifest_path, sig_path = manifest_paths(settings, root)
    if to_stdout:
        _build_to_stdout(root, settings, serial, expires_in, skip=(manifest_path, sig_path))
        return
    key = settings.secret_key
    done = build_and_sign(
        root,
        deployment=settings.deployment or "",
        secret_key=key,
        manifest_path=manifest_path,
        signature_path=sig_path,
        password=read_password(password_file, allow_readable=allow_insecure_key) if key else None,
        allow_insecure_key=allow_insecure_key,
        exclude=settings.exclude or (),
        release=settings.release or "",
        serial=serial,
        expires_in=expires_in,
        workers=settings.workers,
    )
    for w in done.warnings:
        echo_line(f"warning: {w}", err=True)
    m = done.manifest
    echo_line(f"wrote {manifest_path}: {len(m.entries):,} entries, serial {m.serial}, root digest {m.root_digest}")
    if done.signature_path is not None:
        echo_line(f"signed: {done.signature_path}")


def _build_settings(
    given: Settings, config_file: str | None, exclude: tuple[str, ...], *, from_option: bool
) -> tuple[Settings, bool]:
    """The build's settings (options over the config file) and whether the manifest goes to stdout;
    a usage error for what cannot be built."""
    from ..config import resolve_settings

    settings, _ = resolve_settings(given, config_file=config_file)
    if not settings.deployment:
        raise click.UsageError(
            "name the deployment this release is for with --deployment NAME (or DURI_INTEGRITY_DEPLOYMENT): "
            "hosts refuse a manifest for another deployment"
        )
    to_stdout = settings.manifest == "-"
    if to_stdout:
        if settings.secret_key:
            raise click.UsageError("--manifest - writes the manifest to stdout, which cannot be signed; name a file")
        settings.manifest = None  # "-" is not a file in the tree to leave out
    check_build_inputs(settings.release, exclude, from_option=from_option)
    return settings, to_stdout


def _build_to_stdout(root: str, settings: Any, serial: int | None, expires_in: Any, skip: tuple[str, str]) -> None:
    """build -m -: the manifest on stdout (unsigned: a signature needs a file), the summary on stderr."""
    from ..build import build_manifest

    result = build_manifest(
        root,
        deployment=settings.deployment,
        exclude=settings.exclude or (),
        release=settings.release or "",
        serial=serial,
        expires_in=expires_in,
        workers=settings.workers,
        skip=skip,
    )
    for w in result.warnings:
        echo_line(f"warning: {w}", err=True)
    sys.stdout.buffer.write(result.data)
    sys.stdout.flush()
    m = result.manifest
    echo_line(f"wrote the manifest to stdout: {len(m.entries):,} entries, serial {m.serial}", err=True)


@click.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--secret-key", "-s", required=True, help="minisign secret key file.")
@click.option("--allow-insecure-key", is_flag=True, help="Sign even if the secret key file is readable by others.")
@password_option
def sign(manifest: str, secret_key: str, allow_insecure_key: bool, password_file: str | None) -> None:
    """Sign MANIFEST's exact bytes, writing MANIFEST.minisig."""
    from ..build import sign_manifest

    out = sign_manifest(
        manifest,
        secret_key,
        password=read_password(password_file, allow_readable=allow_insecure_key),
        allow_insecure_key=allow_insecure_key,
    )
    echo_line(f"signed: {out}")

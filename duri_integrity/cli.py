"""The ``duri-integrity`` command: parse arguments, call the library, render results.

Library errors become exit codes in exactly one place (:class:`_Group.invoke`).
Heavy imports happen inside the commands that need them.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from . import __version__
from .cli_args import check_build_inputs as _check_build_inputs
from .cli_args import logging_options as _logging_options
from .cli_args import parse_duration as _parse_duration
from .cli_args import password as _password
from .cli_render import Progress, echo_line, render_report
from .logs import printable

__all__ = ["EXIT_ERROR", "EXIT_FAILED", "EXIT_OK", "EXIT_UNTRUSTED", "EXIT_USAGE", "main", "render_report"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNTRUSTED, EXIT_ERROR = 0, 1, 2, 3, 4

EXIT_CODE_HELP = """\b
Exit codes:
  0  VERIFIED   the tree matches a trusted manifest (or the command succeeded)
  1  FAILED     the tree differs from the manifest
  2  usage      invalid command line
  3  UNTRUSTED  manifest or signature missing, malformed or expired; not by a trusted,
                unrevoked key; or older than a release already verified here
  4  ERROR      could not run: missing root, bad key or config, unreadable input
"""


class _OperationalError(click.ClickException):
    """A library failure, printed by :meth:`_Group.main` as one line; exit 4."""

    exit_code = EXIT_ERROR


class _Group(click.Group):
    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Run, turning every click failure into one ``duri-integrity: error:`` line and its exit code."""
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()  # no arguments at all: the help text is the answer
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            click.echo(printable(f"duri-integrity: error: {exc.format_message().rstrip('.')}{where}"), err=True)
            sys.exit(EXIT_USAGE)
        except click.ClickException as exc:  # ours (exit 4) and any other command's (one line all the same)
            click.echo(printable(f"duri-integrity: error: {exc.format_message()}"), err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("duri-integrity: interrupted", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else EXIT_OK)

    def invoke(self, ctx: click.Context) -> Any:
        from .errors import IntegrityError

        try:
            return super().invoke(ctx)
        except IntegrityError as exc:
            raise _OperationalError(str(exc)) from None
        except BrokenPipeError:  # the reader went away: the output was not delivered, so not a success
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            raise _OperationalError("stdout was closed before the output was written (broken pipe)") from None
        except OSError as exc:  # anything the library did not already turn into a clear message
            where = f" {exc.filename!r}" if exc.filename else ""
            raise _OperationalError(f"{exc.strerror or exc}{where}") from None
        except KeyboardInterrupt:
            click.echo("duri-integrity: interrupted", err=True)
            ctx.exit(130)


@click.group(cls=_Group, epilog=EXIT_CODE_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="duri-integrity")
@_logging_options
def main() -> None:
    """Build, sign and verify signed manifests of deployment trees."""
    # Without --log-format or --log-level no handler is attached: stderr keeps its one-line contract.


_password_option: Callable[[Callable[..., Any]], Callable[..., Any]] = click.option(
    "--password-file", type=click.Path(dir_okay=False), help="File whose first line is the key's password."
)
_config_option: Callable[[Callable[..., Any]], Callable[..., Any]] = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="Config file to read [default: DURI_INTEGRITY_CONFIG, else /etc/duri-integrity/config.toml; "
    "never one in the working directory].",
)
_deployment_option: Callable[[Callable[..., Any]], Callable[..., Any]] = click.option(
    "--deployment",
    "-d",
    metavar="NAME",
    help="The deployment (service) this release is for, or this host runs; signed into the manifest.",
)
_workers_option: Callable[[Callable[..., Any]], Callable[..., Any]] = click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=None,
    help="Hashing threads [default: one per core, more when files come from disk].",
)


@main.command()
@click.option(
    "--secret-key", "-s", default="duri-integrity.key", show_default=True, help="Secret key file to write (mode 0600)."
)
@click.option("--public-key", "-p", default="duri-integrity.pub", show_default=True, help="Public key file to write.")
@click.option("--encrypt", is_flag=True, help="Protect the secret key with a password (scrypt, as minisign does).")
@click.option("--force", is_flag=True, help="Replace existing key files.")
@_password_option
def keygen(secret_key: str, public_key: str, encrypt: bool, force: bool, password_file: str | None) -> None:
    """Write a new minisign-compatible key pair.

    The secret key is unencrypted unless --encrypt is given (suited to a CI
    secret store); keep it out of every tree you build.
    """
    from .keys import generate_keypair

    if "-" in (secret_key, public_key):
        raise click.UsageError("keygen writes key files: name them (standard output is not supported)")
    password = None
    if encrypt:
        password = _password(password_file, confirm=True)
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


@main.command()
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
@_deployment_option
@click.option("--release", "-r", default=None, help="Release label, e.g. a git tag or commit.")
@click.option(
    "--serial", type=click.IntRange(0, 2**63 - 1), help="Serial number [default: creation time in Unix seconds]."
)
@click.option(
    "--expires-in",
    callback=lambda c, p, v: _parse_duration(v) if v else None,
    help="Make the manifest expire, e.g. 30d, 12h.",
)
@click.option("--allow-insecure-key", is_flag=True, help="Sign even if the secret key file is readable by others.")
@_password_option
@_workers_option
@_config_option
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
    from .config import Settings, manifest_paths, resolve_settings
    from .release import build_and_sign

    settings, _ = resolve_settings(
        Settings(
            root=root,
            manifest=manifest,
            secret_key=secret_key,
            exclude=list(exclude) or None,
            release=release,
            deployment=deployment,
            workers=workers,
        ),
        config_file=config_file,
    )
    if not settings.deployment:
        raise click.UsageError(
            "name the deployment this release is for with --deployment NAME (or DURI_INTEGRITY_DEPLOYMENT): "
            "hosts refuse a manifest for another deployment"
        )
    root = settings.root or "."
    to_stdout = settings.manifest == "-"
    if to_stdout:
        if settings.secret_key:
            raise click.UsageError("--manifest - writes the manifest to stdout, which cannot be signed; name a file")
        settings.manifest = None  # "-" is not a file in the tree to leave out
    _check_build_inputs(settings.release, exclude, from_option=release is not None)
    manifest_path, sig_path = manifest_paths(settings, root)
    key = settings.secret_key
    if to_stdout:
        _build_to_stdout(root, settings, serial, expires_in, skip=(manifest_path, sig_path))
        return
    done = build_and_sign(
        root,
        deployment=settings.deployment,
        secret_key=key,
        manifest_path=manifest_path,
        signature_path=sig_path,
        password=_password(password_file) if key else None,
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


def _build_to_stdout(root: str, settings: Any, serial: int | None, expires_in: Any, skip: tuple[str, str]) -> None:
    """build -m -: the manifest on stdout (unsigned: a signature needs a file), the summary on stderr."""
    from .build import build_manifest

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


@main.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--secret-key", "-s", required=True, help="minisign secret key file.")
@click.option("--allow-insecure-key", is_flag=True, help="Sign even if the secret key file is readable by others.")
@_password_option
def sign(manifest: str, secret_key: str, allow_insecure_key: bool, password_file: str | None) -> None:
    """Sign MANIFEST's exact bytes, writing MANIFEST.minisig."""
    from .build import sign_manifest

    out = sign_manifest(manifest, secret_key, password=_password(password_file), allow_insecure_key=allow_insecure_key)
    echo_line(f"signed: {out}")


@main.command(epilog=EXIT_CODE_HELP)
@click.argument("root", type=click.Path(file_okay=False), required=False)
@click.option("--manifest", "-m", help="Manifest file [default: ROOT/MANIFEST.json].")
@click.option("--signature", help="Signature file [default: the manifest path + .minisig].")
@click.option(
    "--public-key",
    "-p",
    multiple=True,
    help="Trusted public key: a .pub file, a directory of them, or the base64 key. Repeatable.",
)
@_deployment_option
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing when verified; only the summary otherwise.")
@click.option(
    "--quick",
    is_flag=True,
    help="Re-hash only files whose stat changed since the last verified quick run (trusts timestamps).",
)
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Where quick mode keeps its snapshots.")
@click.option(
    "--state-dir",
    help="Where rollback high-water marks are kept [default: /var/lib/duri-integrity as root]; 'none' turns "
    "rollback protection off.",
)
@click.option(
    "--allow-rollback-to",
    metavar="SERIAL|LABEL@SERIAL",
    help="Approve verifying exactly this older release on a host that has seen a newer one.",
)
@click.option(
    "--revoked-key", multiple=True, help="Revoked key: a .pub file, a directory, or a key-id list. Repeatable."
)
@click.option("--clock-skew", type=click.IntRange(0, 86400), help="Seconds of clock disagreement tolerated [300].")
@click.option(
    "--prometheus-textfile",
    type=click.Path(dir_okay=False),
    help="Also write the result as node_exporter textfile metrics here (replaced atomically).",
)
@click.option(
    "--max-problems",
    type=click.IntRange(0),
    default=5000,
    show_default=True,
    help="Problems listed in the report (the first in path order; counts stay exact); 0 lists all.",
)
@_workers_option
@_config_option
def verify(
    root: str | None,
    manifest: str | None,
    signature: str | None,
    public_key: tuple[str, ...],
    deployment: str | None,
    as_json: bool,
    quiet: bool,
    quick: bool,
    cache_dir: str | None,
    state_dir: str | None,
    allow_rollback_to: str | None,
    revoked_key: tuple[str, ...],
    clock_skew: int | None,
    prometheus_textfile: str | None,
    max_problems: int,
    workers: int | None,
    config_file: str | None,
) -> None:
    """Verify ROOT against its signed manifest for this host's deployment.

    Settings not given here come from DURI_INTEGRITY_* environment variables,
    then the config file (--config, DURI_INTEGRITY_CONFIG, or
    /etc/duri-integrity/config.toml; never the working directory).
    """
    from .verify import verify_integrity

    bar = Progress.maybe(enabled=not (quiet or as_json))
    report = verify_integrity(
        root,
        manifest=manifest,
        signature=signature,
        public_keys=list(public_key) or None,
        deployment=deployment,
        workers=workers,
        quick=quick,
        cache_dir=cache_dir,
        state_dir=state_dir,
        allow_rollback_to=allow_rollback_to,
        revoked_keys=list(revoked_key) or None,
        clock_skew=clock_skew,
        config_file=config_file,
        progress=bar.update if bar else None,
        max_problems=max_problems or None,
    )
    if bar:
        bar.clear()
    if prometheus_textfile:
        from .errors import IntegrityError
        from .metrics import write_textfile

        try:
            write_textfile(report, prometheus_textfile)
        except IntegrityError as exc:  # a side effect: warn, and keep the verdict, its output and exit code
            echo_line(f"duri-integrity: warning: {exc}", err=True)
    if as_json:
        click.echo(report.to_json())
    else:
        render_report(report, quiet=quiet)
    sys.exit(report.exit_code)


# The operational commands (doctor, diff, serve, demo) live in their own module.
from .cli_ops import demo, diff, doctor, serve  # noqa: E402 - they use the helpers above

for _command in (doctor, diff, serve, demo):
    main.add_command(_command)
# The global options are accepted after the command name too, as users of git or kubectl expect.
for _command in main.commands.values():
    _logging_options(_command)

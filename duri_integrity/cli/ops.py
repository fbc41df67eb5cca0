"""Operational commands: doctor, diff, serve and demo (registered on the main group)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from ..report import EXIT_FAILED, EXIT_OK, EXIT_UNTRUSTED
from .args import password_option, trust_options
from .args import read_password as _password
from .render import echo_line

if TYPE_CHECKING:
    from ..doctor import DoctorReport

__all__ = ["demo", "diff", "doctor"]


@click.command()
@click.argument("root", type=click.Path(file_okay=False), required=False)
@trust_options
@click.option("--secret-key", "-s", help="Also check this signing key: private, outside the tree, trusted.")
@click.option(
    "--check-dir",
    multiple=True,
    type=click.Path(file_okay=False),
    help="A log or artifact directory that must exist with safe permissions. Repeatable.",
)
@click.option("--serving", is_flag=True, help="Also check that the status endpoint has its bearer token.")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@password_option
def doctor(
    root: str | None,
    manifest: str | None,
    signature: str | None,
    public_keys: tuple[str, ...],
    deployment: str | None,
    state_dir: str | None,
    allow_rollback_to: str | None,
    revoked_keys: tuple[str, ...],
    clock_skew: int | None,
    config_file: str | None,
    secret_key: str | None,
    check_dir: tuple[str, ...],
    serving: bool,
    as_json: bool,
    password_file: str | None,
) -> None:
    """Check every precondition of a successful verification, one by one, then verify.

    Trusted and revoked keys, the rollback state, the deployment, the manifest
    and its signature, the clock, the signing key (with --secret-key), signing
    keys left near the tree, the directories named with --check-dir, the status
    token (with --serving), and finally a full verification that records
    nothing. Exits 0 when all pass, 1 otherwise.
    """
    import msgspec

    from ..config import Settings, resolve_settings
    from ..doctor import run_doctor

    settings, used = resolve_settings(
        Settings(
            root=root,
            manifest=manifest,
            signature=signature,
            public_key=list(public_keys) or None,
            deployment=deployment,
            secret_key=secret_key,
            state_dir=state_dir,
            allow_rollback_to=allow_rollback_to,
            revoked_keys=list(revoked_keys) or None,
            clock_skew=clock_skew,
        ),
        config_file=config_file,
    )
    password = _password(password_file) if settings.secret_key else None
    report = run_doctor(
        settings,
        config_file=used,
        secret_key=settings.secret_key,
        password=password,
        check_dirs=check_dir,
        serving=serving,
    )
    if as_json:
        click.echo(msgspec.json.encode(report).decode())
    else:
        _render_doctor(report)
    sys.exit(EXIT_OK if report.ok else EXIT_FAILED)


def _render_doctor(report: DoctorReport) -> None:
    """One line per check (and its fix), then the count of failures."""
    from ..logs import printable

    for c in report.checks:
        mark = "OK  " if c.ok else "FAIL"
        # Details quote paths and messages from the tree: escape control characters.
        click.echo(f"{mark} {printable(c.name)}: {printable(c.detail)}")
        if c.fix:
            click.echo(f"     fix: {printable(c.fix)}")
    failed = sum(not c.ok for c in report.checks)
    click.echo("all checks passed" if report.ok else f"{failed} check(s) failed")


@click.command()
@click.option(
    "--keep",
    type=click.Path(file_okay=False),
    help="Build the demo here and keep it, instead of a temporary directory.",
)
def demo(keep: str | None) -> None:
    """Run the whole job on a sample tree: keygen, build, sign, verify, tamper, verify."""
    from ..demo import run_demo

    sys.exit(run_demo(keep))


@click.command()
@click.argument("old", type=click.Path())
@click.argument("new", type=click.Path())
@click.option("--public-key", "-p", multiple=True, help="Check both signatures against these keys. Repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print the diff as JSON.")
def diff(old: str, new: str, public_key: tuple[str, ...], as_json: bool) -> None:
    """Show what release NEW changes against release OLD.

    OLD and NEW are manifest files or release directories (their MANIFEST.json,
    and MANIFEST.json.minisig beside it). Changes use verify's words: added,
    missing (in OLD, not in NEW), modified, mode_changed, type_changed,
    symlink_changed. With --public-key both signatures are checked first (exit 3
    if either fails). Exits 0 when the manifests describe the same tree, 1 when
    they differ.
    """
    import msgspec

    from ..diff import CHANGE_KINDS, diff_files
    from ..errors import SignatureError
    from ..keys import load_trusted_keys

    trusted = load_trusted_keys(public_key) if public_key else None
    try:
        result = diff_files(old, new, trusted)
    except SignatureError as exc:
        echo_line(f"duri-integrity: UNTRUSTED: {exc}", err=True)
        sys.exit(EXIT_UNTRUSTED)
    if as_json:
        click.echo(msgspec.json.encode(result).decode())
    else:
        o, n = result.old, result.new
        echo_line(f"{o.release or '-'} (serial {o.serial}) -> {n.release or '-'} (serial {n.serial})")
        for c in result.changes:  # the layout of verify's problem lines
            echo_line(f"{c.kind.upper():<16} {c.path}  (old {c.old or '-'}, new {c.new or '-'})")
        if result.exclude_changed:
            echo_line("exclusion patterns changed")
        for note in result.notes:
            echo_line(f"note: {note}", err=True)
        counts = result.counts
        detail = ", ".join(f"{counts[k]:,} {k.replace('_', ' ')}" for k in CHANGE_KINDS if counts[k])
        echo_line(f"{len(result.changes):,} changes" + (f": {detail}" if detail else ""))
    sys.exit(EXIT_FAILED if result.changes or result.exclude_changed else EXIT_OK)

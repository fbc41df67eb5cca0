"""Operational commands: doctor, diff, serve and demo (registered on the main group)."""

import sys

import click

from .cli import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNTRUSTED,
    _config_option,
    _deployment_option,
    _password_option,
    _workers_option,
)
from .cli_args import password as _password
from .cli_render import echo_line

__all__ = ["demo", "diff", "doctor", "serve"]


@click.command()
@click.argument("root", type=click.Path(file_okay=False), required=False)
@click.option("--manifest", "-m", help="Manifest file [default: ROOT/MANIFEST.json].")
@click.option("--signature", help="Signature file [default: the manifest path + .minisig].")
@click.option("--public-key", "-p", multiple=True, help="Trusted public key (file, directory or base64). Repeatable.")
@_deployment_option
@click.option("--secret-key", "-s", help="Also check this signing key: private, outside the tree, trusted.")
@click.option("--state-dir", help="Rollback state directory to check ('none' if protection is off).")
@click.option("--allow-rollback-to", metavar="SERIAL|LABEL@SERIAL", help="The one older release approved, as verify.")
@click.option("--revoked-key", multiple=True, help="Revoked key: a .pub file, a directory, or a key-id list.")
@click.option("--clock-skew", type=click.IntRange(0, 86400), help="Seconds of clock disagreement tolerated [300].")
@click.option(
    "--check-dir",
    multiple=True,
    type=click.Path(file_okay=False),
    help="A log or artifact directory that must exist with safe permissions. Repeatable.",
)
@click.option("--serving", is_flag=True, help="Also check that the status endpoint has its bearer token.")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@_password_option
@_config_option
def doctor(
    root: str | None,
    manifest: str | None,
    signature: str | None,
    public_key: tuple[str, ...],
    deployment: str | None,
    secret_key: str | None,
    state_dir: str | None,
    allow_rollback_to: str | None,
    revoked_key: tuple[str, ...],
    clock_skew: int | None,
    check_dir: tuple[str, ...],
    serving: bool,
    as_json: bool,
    password_file: str | None,
    config_file: str | None,
) -> None:
    """Check every precondition of a successful verification, one by one, then verify.

    Trusted and revoked keys, the rollback state, the deployment, the manifest
    and its signature, the clock, the signing key (with --secret-key), signing
    keys left near the tree, the directories named with --check-dir, the status
    token (with --serving), and finally a full verification that records
    nothing. Exits 0 when all pass, 1 otherwise.
    """
    import msgspec

    from .config import Settings, resolve_settings
    from .doctor import run_doctor
    from .logs import printable

    settings, used = resolve_settings(
        Settings(
            root=root,
            manifest=manifest,
            signature=signature,
            public_key=list(public_key) or None,
            deployment=deployment,
            secret_key=secret_key,
            state_dir=state_dir,
            allow_rollback_to=allow_rollback_to,
            revoked_keys=list(revoked_key) or None,
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
        for c in report.checks:
            mark = "OK  " if c.ok else "FAIL"
            # Details quote paths and messages from the tree: escape control characters.
            click.echo(f"{mark} {printable(c.name)}: {printable(c.detail)}")
            if c.fix:
                click.echo(f"     fix: {printable(c.fix)}")
        failed = sum(not c.ok for c in report.checks)
        click.echo("all checks passed" if report.ok else f"{failed} check(s) failed")
    sys.exit(EXIT_OK if report.ok else EXIT_FAILED)


@click.command()
@click.option(
    "--keep",
    type=click.Path(file_okay=False),
    help="Build the demo here and keep it, instead of a temporary directory.",
)
def demo(keep: str | None) -> None:
    """Run the whole job on a sample tree: keygen, build, sign, verify, tamper, verify."""
    from .demo import run_demo

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

    from .diff import CHANGE_KINDS, diff_files
    from .errors import SignatureError
    from .keys import load_trusted_keys

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


def _parse_bind(bind: str) -> tuple[str, int]:
    """HOST:PORT, [IPV6]:PORT or IPV6-less host names; the host may be a name (localhost)."""
    host, sep, port_text = bind.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an IPv6 address must be bracketed: [::1]:8787
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise click.BadParameter(f"{bind!r} is not HOST:PORT (IPv6: [::1]:PORT)", param_hint="--bind")
    return host, int(port_text)


@click.command()
@click.argument("root", type=click.Path(file_okay=False), required=False)
@click.option(
    "--bind",
    default="127.0.0.1:8787",
    show_default=True,
    help="HOST:PORT to listen on; [::1]:PORT for IPv6; a name (localhost) means every address it resolves to.",
)
@click.option("--manifest", "-m", help="Manifest file [default: ROOT/MANIFEST.json].")
@click.option("--signature", help="Signature file [default: the manifest path + .minisig].")
@click.option("--public-key", "-p", multiple=True, help="Trusted public key (file, directory or base64). Repeatable.")
@_deployment_option
@click.option("--quick", is_flag=True, help="Re-verify in quick mode (re-hash only files whose stat changed).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Where quick mode keeps its snapshots.")
@click.option("--state-dir", help="Where rollback high-water marks are kept; 'none' turns rollback protection off.")
@click.option(
    "--allow-rollback-to", metavar="SERIAL|LABEL@SERIAL", help="Approve verifying exactly this older release."
)
@click.option(
    "--revoked-key", multiple=True, help="Revoked key: a .pub file, a directory, or a key-id list. Repeatable."
)
@click.option("--clock-skew", type=click.IntRange(0, 86400), help="Seconds of clock disagreement tolerated [300].")
@_workers_option
@click.option(
    "--ttl",
    type=click.FloatRange(1, 86400),
    default=60,
    show_default=True,
    help="Seconds a result stays current; older results are never served.",
)
@click.option(
    "--deadline",
    type=click.FloatRange(1, 3600),
    default=60,
    show_default=True,
    help="Seconds a verification may take before it is stopped and the answer is 'not verified'.",
)
@click.option(
    "--checks",
    "checks_file",
    type=click.Path(dir_okay=False),
    help="TOML file of service checks (PromQL queries with thresholds) that canary_ok also requires.",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    help="File holding the bearer token [default: $DURI_INTEGRITY_STATUS_TOKEN_FILE, "
    "$DURI_INTEGRITY_STATUS_TOKEN, $CANARY_TOKEN].",
)
@_config_option
def serve(
    root: str | None,
    bind: str,
    manifest: str | None,
    signature: str | None,
    public_key: tuple[str, ...],
    deployment: str | None,
    quick: bool,
    cache_dir: str | None,
    state_dir: str | None,
    allow_rollback_to: str | None,
    revoked_key: tuple[str, ...],
    clock_skew: int | None,
    workers: int | None,
    ttl: float,
    deadline: float,
    checks_file: str | None,
    token_file: str | None,
    config_file: str | None,
) -> None:
    """Serve the canary verdict, dashboards and integrity status over HTTP, behind a bearer token.

    \b
    GET /canary_check                 canary_ok, recommendation, every check (200)
    GET /dashboard/integrity_details  the verification report (200)
    GET /dashboard/canary_overview    rollback_required, recommendation, reasons (200)
    GET /dashboard/health_summary     overall_health and its components (200)
    GET /integrity_details            the verification report (200)
    GET /healthz                      200 when verified, 503 otherwise

    Each verification runs in a child process stopped after --deadline seconds;
    a result older than --ttl is never served as current.
    """
    from .config import resolve_settings
    from .server import CachedVerification, StatusService, load_token, make_server, make_wsgi_app

    host, port = _parse_bind(bind)
    configured, _ = resolve_settings(config_file=config_file)
    token = load_token(token_file=token_file, config_token_file=configured.token_file)
    checks = None
    if checks_file:
        from .promcheck import load_checks, make_cached_checks

        checks = make_cached_checks(load_checks(checks_file))
    integrity = CachedVerification.of_tree(
        root,
        ttl=ttl,
        deadline=deadline,
        manifest=manifest,
        signature=signature,
        public_keys=list(public_key) or None,
        deployment=deployment,
        config_file=config_file,
        quick=quick,
        cache_dir=cache_dir,
        state_dir=state_dir,
        allow_rollback_to=allow_rollback_to,
        revoked_keys=list(revoked_key) or None,
        clock_skew=clock_skew,
        workers=workers,
    )
    app = make_wsgi_app(StatusService(integrity, token, checks))
    try:
        server = make_server(app, host, port)
    except OSError as exc:
        from .errors import ConfigError

        raise ConfigError(f"cannot listen on {bind}: {exc.strerror or exc}") from None
    where = ", ".join(f"http://{f'[{h}]' if ':' in h else h}:{p}" for h, p in server.addresses)
    click.echo(f"serving /canary_check, /dashboard/* and /healthz on {where} (Ctrl-C to stop)", err=True)
    import signal

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM (systemctl stop) ends the loop like Ctrl-C

    signal.signal(signal.SIGTERM, stop)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        integrity.stop()

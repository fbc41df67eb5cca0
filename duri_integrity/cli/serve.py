"""The serve command: the canary verdict, the dashboards and the integrity status over HTTP."""

from __future__ import annotations

from typing import Any

import click

from .args import finite, verify_kwargs, verify_options

__all__ = ["serve"]


@click.command()
@click.argument("root", type=click.Path(file_okay=False), required=False)
@click.option(
    "--bind",
    default="127.0.0.1:8787",
    show_default=True,
    help="HOST:PORT to listen on; [::1]:PORT for IPv6; a name (localhost) means every address it resolves to.",
)
@verify_options
@click.option(
    "--ttl",
    type=click.FloatRange(1, 86400),
    callback=lambda ctx, param, value: finite(value, "--ttl"),
    default=60,
    show_default=True,
    help="Seconds a result stays current; older results are never served.",
)
@click.option(
    "--deadline",
    type=click.FloatRange(1, 3600),
    callback=lambda ctx, param, value: finite(value, "--deadline"),
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
def serve(
    root: str | None,
    bind: str,
    ttl: float,
    deadline: float,
    checks_file: str | None,
    token_file: str | None,
    **options: Any,
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
    import gc

    gc.enable()  # a server runs for days: cycles must be collected (one-shot commands leave it off)
    from ..config import resolve_settings
    from ..server import CachedVerification, StatusService, load_token, make_server, make_wsgi_app

    host, port = _parse_bind(bind)
    configured, _ = resolve_settings(config_file=options["config_file"])
    token = load_token(token_file=token_file, config_token_file=configured.token_file)
    checks = None
    if checks_file:
        from ..promcheck import load_checks, make_cached_checks

        checks = make_cached_checks(load_checks(checks_file))
    integrity = CachedVerification.of_tree(root, ttl=ttl, deadline=deadline, **verify_kwargs(options))
    app = make_wsgi_app(StatusService(integrity, token, checks))
    try:
        server = make_server(app, host, port)
    except OSError as exc:
        from ..errors import ConfigError

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

"""The verify command: the whole report, as text, JSON or metrics, and the exit code of the status."""

from __future__ import annotations

import sys

import click

from .args import EXIT_CODE_HELP, config_option, deployment_option, workers_option
from .render import Progress, echo_line, render_report

__all__ = ["verify"]


@click.command(epilog=EXIT_CODE_HELP)
@click.argument("root", type=click.Path(file_okay=False), required=False)
@click.option("--manifest", "-m", help="Manifest file [default: ROOT/MANIFEST.json].")
@click.option("--signature", help="Signature file [default: the manifest path + .minisig].")
@click.option(
    "--public-key",
    "-p",
    multiple=True,
    help="Trusted public key: a .pub file, a directory of them, or the base64 key. Repeatable.",
)
@deployment_option
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
@workers_option
@config_option
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
    from ..verify import verify_integrity

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
        from ..errors import IntegrityError
        from ..metrics import write_textfile

        try:
            write_textfile(report, prometheus_textfile)
        except IntegrityError as exc:  # a side effect: warn, and keep the verdict, its output and exit code
            echo_line(f"duri-integrity: warning: {exc}", err=True)
    if as_json:
        if sys.stdout is None:  # started with stdout closed: the report cannot be delivered
            from ..errors import IntegrityError

            raise IntegrityError("stdout is closed: the report cannot be written")
        click.echo(report.to_json())
    else:
        render_report(report, quiet=quiet)
    sys.exit(report.exit_code)

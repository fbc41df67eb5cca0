"""The verify command: the whole report, as text, JSON or metrics, and the exit code of the status."""

from __future__ import annotations

import sys
from typing import Any

import click

from .args import EXIT_CODE_HELP, verify_kwargs, verify_options
from .render import Progress, echo_line, render_report

__all__ = ["verify"]


@click.command(epilog=EXIT_CODE_HELP)
@click.argument("root", type=click.Path(file_okay=False), required=False)
@verify_options
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing when verified; only the summary otherwise.")
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
def verify(
    root: str | None,
    as_json: bool,
    quiet: bool,
    prometheus_textfile: str | None,
    max_problems: int,
    **options: Any,
) -> None:
    """Verify ROOT against its signed manifest for this host's deployment.

    Settings not given here come from DURI_INTEGRITY_* environment variables,
    then the config file (--config, DURI_INTEGRITY_CONFIG, or
    /etc/duri-integrity/config.toml; never the working directory).
    """
    from ..verify import verify_integrity

    bar = Progress.maybe(enabled=not (quiet or as_json))
    report = verify_integrity(
        root, progress=bar.update if bar else None, max_problems=max_problems or None, **verify_kwargs(options)
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
    if sys.stdout is None and (as_json or not quiet):
        # Started with stdout closed: the report (or the summary) cannot be delivered.
        from ..errors import IntegrityError

        raise IntegrityError("stdout is closed: the report cannot be written")
    if as_json:
        click.echo(report.to_json())
    else:
        render_report(report, quiet=quiet)
    sys.exit(report.exit_code)

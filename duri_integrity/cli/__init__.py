"""The ``duri-integrity`` command: parse arguments, call the library, render results.

Library errors become exit codes in exactly one place (:class:`_Group`). Commands
live in their own modules and are imported only when run (click's lazy-loading
pattern), so ``duri-integrity verify`` pays for nothing else.
"""

from __future__ import annotations

import contextlib
import os
import sys
from importlib import import_module
from typing import Any

import click

from .._version import __version__
from ..logs import printable
from ..report import EXIT_ERROR, EXIT_FAILED, EXIT_OK, EXIT_UNTRUSTED, EXIT_USAGE
from .args import EXIT_CODE_HELP, logging_options
from .render import render_report

__all__ = ["EXIT_ERROR", "EXIT_FAILED", "EXIT_OK", "EXIT_UNTRUSTED", "EXIT_USAGE", "main", "render_report", "run"]

_COMMANDS = {
    "keygen": "release:keygen",
    "build": "release:build",
    "sign": "release:sign",
    "verify": "verify:verify",
    "doctor": "ops:doctor",
    "diff": "ops:diff",
    "demo": "ops:demo",
    "serve": "serve:serve",
}
"""Command name -> module:attribute in this package, imported when the command is run."""


class _OperationalError(click.ClickException):
    """A library failure, printed by :meth:`_Group.main` as one line; exit 4."""

    exit_code = EXIT_ERROR


def _deliver_output(code: object) -> None:
    """Flush stdout now, while a failure can still be reported: a report that was never written
    (a full disk, a closed pipe) must not leave a success exit code behind."""
    if sys.stdout is None:  # started with stdout closed: nothing was written (see verify --json)
        return
    try:
        sys.stdout.flush()
    except (OSError, ValueError) as exc:
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        click.echo(f"duri-integrity: error: the output could not be written to stdout: {exc}", err=True)
        if code in (None, 0, EXIT_OK):
            sys.exit(EXIT_ERROR)


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = _COMMANDS.get(name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        command: click.Command = getattr(import_module(f"{__name__}.{module}"), attr)
        if not getattr(command, "_global_options", False):
            # The global options are accepted after the command name too, as users of git expect.
            logging_options(command)
            command._global_options = True  # type: ignore[attr-defined]
        return command

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Run, turning every click failure into one ``duri-integrity: error:`` line and its exit code."""
        kwargs["standalone_mode"] = False
        try:
            try:
                rv = super().main(*args, **kwargs)
            except SystemExit as done:  # a command's sys.exit(code): deliver the output first
                _deliver_output(done.code)
                raise
            _deliver_output(rv)
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
        from ..errors import IntegrityError

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
@logging_options
def main() -> None:
    """Build, sign and verify signed manifests of deployment trees."""
    # Without --log-format or --log-level no handler is attached: stderr keeps its one-line contract.


def run() -> None:
    """The console script: run the command, deliver its output, and end the process at once.

    Interpreter teardown (finalising every module and object) costs a verify ~15 ms and
    does nothing this process needs once stdout and stderr are flushed; an embedding
    program or a test calls :func:`main` instead and keeps its interpreter.
    """
    code: object = 0
    try:
        main()
    except SystemExit as done:
        code = done.code
    status = code if isinstance(code, int) else (0 if code is None else 1)
    if code is not None and not isinstance(code, int):
        click.echo(str(code), err=True)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
    os._exit(status)

"""The console script's entry point (``duri-integrity``, ``python -m duri_integrity``).

Each command but ``serve`` is one short process that ends with ``os._exit`` (cli.run), so
the cyclic garbage collector is switched off before the command line interface is even
imported: its passes over the imported modules and the decoded manifest cost a verify or a
build about 5 ms, and what they would free is returned at exit anyway. Memory stays bounded
by reference counting, which frees everything the hot paths allocate. ``serve`` runs for
days and switches it back on. Embedding programs and tests import :mod:`duri_integrity.cli`
and keep their own collector settings.

Ctrl-C while the interface loads, or anywhere the commands do not handle it themselves, is
``duri-integrity: interrupted`` and exit 130, never a traceback and exit 1 (which means FAILED).
"""

from __future__ import annotations

import gc
import os
import sys

__all__ = ["run"]

EXIT_INTERRUPTED = 130


def run() -> None:
    gc.disable()
    try:
        from .cli import run as run_command

        run_command()
    except KeyboardInterrupt:
        try:
            sys.stderr.write("duri-integrity: interrupted\n")
            sys.stderr.flush()
        except (OSError, ValueError):  # stderr closed: the exit code still says it
            pass
        os._exit(EXIT_INTERRUPTED)

"""Threads that an interrupt (Ctrl-C) reaches in the middle of starting or waiting.

A KeyboardInterrupt is raised wherever the main thread runs Python code, and ``threading``'s
own waits are Python code: one that lands inside ``Condition.wait`` after it has let go of its
lock (``Thread.start()`` waits on one too) makes the ``with`` around it raise a RuntimeError
about the lock, and a thread whose ``start()`` was so interrupted is running all the same.
"""

from __future__ import annotations

import threading
import time

__all__ = ["interrupt_behind", "join_started"]


def interrupt_behind(exc: BaseException) -> BaseException:
    """The interrupt (KeyboardInterrupt, SystemExit) behind a RuntimeError about a lock, else ``exc``:
    the caller must see the interrupt, not what it did to ``threading``'s wait on its way out."""
    context = exc.__context__
    if isinstance(exc, RuntimeError) and context is not None and not isinstance(context, Exception):
        return context
    return exc


def join_started(t: threading.Thread, patience: float = 5.0) -> None:
    """Join ``t``, which was started, even when ``start()`` was interrupted before the thread said so
    (``join()`` then refuses for a moment: "cannot join thread before it is started")."""
    deadline = time.monotonic() + patience
    while True:
        try:
            t.join()
            return
        except RuntimeError:
            if time.monotonic() > deadline:  # it never said so: nothing left to wait for
                return
            time.sleep(0.001)

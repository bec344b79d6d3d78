"""SIGTERM for the commands: stop the way Ctrl-C does, even where the raised KeyboardInterrupt is lost.

The handler raises KeyboardInterrupt in the main thread, so that open temporary files are removed
on the way out. Python code that runs inside a C extension's import can lose that exception: a
SIGTERM that arrived while ``numpy.random`` was being imported left ``surfsep separate`` running to
the end. So the handler also records the request, and long loops call ``raise_if_requested``
between their steps.
"""

from __future__ import annotations

requested = False


def on_sigterm(signum, frame) -> None:
    """Record the stop request and raise KeyboardInterrupt."""
    global requested
    requested = True
    raise KeyboardInterrupt


def raise_if_requested() -> None:
    """Raise KeyboardInterrupt if a SIGTERM has arrived."""
    if requested:
        raise KeyboardInterrupt

"""Progress of long loops: a bar redrawn in place on a terminal, a status line now and then otherwise.

On a terminal, one bar is drawn on the last line of stderr and log lines are printed above it (see
``BarAwareHandler``). When stderr is a file or a pipe, as under nohup or in CI, a loop logs a status
line at most every ``STATUS_SECONDS`` seconds, and one when it ends, so a log never floods.
"""

from __future__ import annotations

import logging
import sys
import time

STATUS_SECONDS = 30.0
# A loop shorter than this logs no closing line: it would only add noise.
CLOSING_LINE_SECONDS = 2.0
BAR_WIDTH = 28
REDRAW_SECONDS = 0.1

logger = logging.getLogger("surfsep")

# The bar now drawn on the terminal, if any. Only one loop draws at a time.
_active: "Progress | None" = None
# Set by the command line: bars are drawn only when its log goes to a terminal and is not --quiet.
bars_enabled = False


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class Progress:
    """Progress of a loop over ``total`` items of ``unit``, named ``label``.

    ``status_seconds`` sets how often a status line is logged when no bar is drawn; None logs none,
    for loops that log their own status lines (training). ``draw`` False never draws a bar, as in
    the processes of distributed training other than the first.
    """

    def __init__(self, total: float, label: str, unit: str = "items", status_seconds: float | None = STATUS_SECONDS,
                 stream=None, draw: bool = True):
        self.total = max(0, total)
        self.label = label
        self.unit = unit
        self.status_seconds = status_seconds
        self.stream = stream or sys.stderr
        self.done = 0
        self.detail = ""
        self.start = time.monotonic()
        self.last_draw = 0.0
        self.last_status = self.start
        self.bar = draw and bars_enabled and self.total > 0 and _is_terminal(self.stream) and _active is None

    def __enter__(self) -> "Progress":
        global _active
        if self.bar:
            _active = self
            self.draw()
        return self

    def __exit__(self, *exc) -> None:
        self.close(finished=exc[0] is None)

    def update(self, count: float = 1, detail: str | None = None) -> None:
        """Count ``count`` more items done; ``detail`` (such as the loss) is shown after the counts."""
        self.done += count
        if detail is not None:
            self.detail = detail
        now = time.monotonic()
        if self.bar:
            if now - self.last_draw >= REDRAW_SECONDS or self.done >= self.total:
                self.draw(now)
        elif self.status_seconds is not None and now - self.last_status >= self.status_seconds:
            self.last_status = now
            logger.info("%s", self.status(now))

    def status(self, now: float) -> str:
        elapsed = now - self.start
        text = f"{self.label}: {self.done:,.0f}/{self.total:,.0f} {self.unit}"
        if self.total:
            text += f" ({100.0 * self.done / self.total:.0f}%)"
        if self.done and elapsed > 0:
            rate = self.done / elapsed
            text += f", {rate:.3g} {self.unit}/s"
            if self.done < self.total:
                text += f", about {format_duration((self.total - self.done) / rate)} left"
        if self.detail:
            text += f", {self.detail}"
        return text

    def line(self, now: float) -> str:
        filled = int(BAR_WIDTH * min(self.done, self.total) / self.total) if self.total else 0
        return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {self.status(now)}"

    def draw(self, now: float | None = None) -> None:
        self.last_draw = time.monotonic() if now is None else now
        self.stream.write("\r\033[K" + self.line(self.last_draw))
        self.stream.flush()

    def clear(self) -> None:
        self.stream.write("\r\033[K")
        self.stream.flush()

    def close(self, finished: bool = True) -> None:
        """End the loop: a drawn bar is erased, and a finished loop of some length logs a closing status line."""
        global _active
        if self.bar and _active is self:
            self.clear()
            _active = None
        elapsed = time.monotonic() - self.start
        if finished and self.status_seconds is not None and self.total and self.done and elapsed >= CLOSING_LINE_SECONDS:
            logger.info("%s: %s %s in %s", self.label, f"{self.done:,.0f}", self.unit, format_duration(elapsed))


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class BarAwareHandler(logging.StreamHandler):
    """A log handler that erases the progress bar, prints the record, and draws the bar again below it."""

    def emit(self, record: logging.LogRecord) -> None:
        bar = _active
        if bar is not None and bar.stream is self.stream:
            bar.clear()
            super().emit(record)
            bar.draw()
        else:
            super().emit(record)

import io
import logging
import os
import pty
import select
import subprocess
import sys

import pytest

from surfsep import progress
from surfsep.progress import BarAwareHandler, Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def bars(monkeypatch):
    monkeypatch.setattr(progress, "bars_enabled", True)
    monkeypatch.setattr(progress, "REDRAW_SECONDS", 0.0)


@pytest.fixture
def captured_log():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("surfsep")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_bar_redraws_in_place_and_clears(bars):
    terminal = Terminal()
    with Progress(4, "scoring", unit="files", stream=terminal) as bar:
        for _ in range(4):
            bar.update(detail="loss 0.5")
    text = terminal.getvalue()
    assert text.count("\r\033[K[") == 5  # the empty bar, then one per update
    assert "[" + "#" * progress.BAR_WIDTH + "] scoring: 4/4 files (100%)" in text
    assert "loss 0.5" in text
    assert text.endswith("\r\033[K")  # erased when the loop ends
    assert progress._active is None


def test_log_lines_print_above_the_bar(bars):
    terminal = Terminal()
    logger = logging.getLogger("surfsep.test_progress")
    handler = BarAwareHandler(terminal)
    logger.addHandler(handler)
    try:
        with Progress(2, "separating", unit="files", stream=terminal) as bar:
            bar.update()
            logger.warning("a warning")
            bar.update()
    finally:
        logger.removeHandler(handler)
    text = terminal.getvalue()
    # The bar is erased before the line and drawn again after it, so the line is on its own.
    assert "\r\033[Ka warning\n\r\033[K[" in text


def test_one_bar_at_a_time(bars):
    terminal = Terminal()
    with Progress(2, "outer", stream=terminal) as outer:
        with Progress(2, "inner", stream=terminal) as inner:
            inner.update(2)
        outer.update(2)
    assert "inner" not in terminal.getvalue()
    assert "outer: 2/2" in terminal.getvalue()


def test_without_terminal_logs_status_lines(captured_log, monkeypatch):
    monkeypatch.setattr(progress, "bars_enabled", True)
    clock = iter(float(second) for second in range(0, 1000, 10))
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    stream = io.StringIO()
    with Progress(6, "scoring", unit="files", status_seconds=25.0, stream=stream) as bar:
        for _ in range(6):
            bar.update()
    assert stream.getvalue() == ""  # no bar on a file
    lines = captured_log.getvalue().splitlines()
    # The clock advances 10 s per reading, one per update: with 25 s asked, a status line comes
    # every third update, and the total when the loop ends.
    assert lines == [
        "scoring: 3/6 files (50%), 0.1 files/s, about 0:30 left",
        "scoring: 6/6 files (100%), 0.1 files/s",
        "scoring: 6 files in 1:10",
    ]


def test_training_loop_logs_no_extra_lines(captured_log):
    with Progress(3, "training", unit="steps", status_seconds=None, stream=io.StringIO()) as bar:
        bar.update(3)
    assert captured_log.getvalue() == ""


def test_command_draws_bar_on_a_terminal(tmp_path):
    """`surfsep data digits` on a pseudo-terminal draws bars; with its stderr in a file it writes none."""
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "surfsep", "data", "digits", "--out", str(tmp_path / "tty"),
                                "--scale", "0.05"], stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
    os.close(follower)
    output = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closes when the command ends
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(timeout=60) == 0
    os.close(leader)
    assert b"\r\x1b[K[" in output
    assert b"digits: train: " in output

    result = subprocess.run([sys.executable, "-m", "surfsep", "data", "digits", "--out", str(tmp_path / "file"),
                             "--scale", "0.05"], capture_output=True, text=True, check=True)
    assert "\r" not in result.stderr
    assert (tmp_path / "file" / "dataset.json").is_file()


def test_short_loop_logs_no_closing_line(captured_log):
    with Progress(3, "separating", unit="images", stream=io.StringIO()) as bar:
        bar.update(3)
    assert captured_log.getvalue() == ""

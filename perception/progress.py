"""Progress bars on stderr (tqdm) for the long commands: a bar redrawn on a terminal, and where
stderr is not one (a CI log) a line every LOG_INTERVAL_S instead, each a line of its own."""

from __future__ import annotations

import sys
import typing

LOG_INTERVAL_S = 5.0  # progress lines in a log that is not a terminal


def progress_bar(total: int | None, desc: str, unit: str, terminal_interval_s: float = 0.25):  # noqa: ANN201 - a tqdm
    """A tqdm bar counting `unit`s of `total` (None: a count alone) on stderr."""
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(total=total or None, desc=desc, unit=unit, file=sys.stderr if tty else LogLines(sys.stderr),
                mininterval=terminal_interval_s if tty else LOG_INTERVAL_S, ascii=not tty, dynamic_ncols=tty)


class LogLines:
    """A stream for tqdm where each redraw becomes a line of its own: in a log file, tqdm's '\\r'
    redraws would run together on one line, with the pipeline's log lines appended to them."""

    def __init__(self, stream: typing.TextIO) -> None:
        self.stream = stream
        self._last = ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        count = line.split(" [", 1)[0]  # the bar and count, without the timing that changes every redraw
        if line and count != self._last:  # tqdm draws the final count again as it closes
            self.stream.write(line + "\n")
            self._last = count

    def flush(self) -> None:
        self.stream.flush()

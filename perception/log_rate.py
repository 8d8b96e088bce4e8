"""A cap on how many log lines a noisy source may write: what a remote client can make a library log
(a WebSocket peer sending garbage) must not flood a node's log or its disk."""

from __future__ import annotations

import logging
import time


class RateLimit(logging.Filter):
    """Lets through at most `burst` records a `period_s` from loggers named `prefix` or below it, and
    counts the rest in `suppressed`; the first line let through after a quiet spell says how many
    were held back."""

    def __init__(self, prefix: str, burst: int = 5, period_s: float = 10.0) -> None:
        super().__init__()
        self.prefix = prefix
        self.burst = burst
        self.period_s = period_s
        self.suppressed = 0
        self._window_start = -float("inf")
        self._in_window = 0
        self._held_back = 0  # suppressed since the last line let through
        self._mark = f"_rate_limit_{id(self)}"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != self.prefix and not record.name.startswith(self.prefix + "."):
            return True
        verdict = record.__dict__.get(self._mark)  # every handler asks about the same record: judge it once
        if verdict is None:
            verdict = self._judge(record)
            record.__dict__[self._mark] = verdict
        return verdict

    def _judge(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self._window_start >= self.period_s:
            self._window_start, self._in_window = now, 0
        if self._in_window >= self.burst:
            self.suppressed += 1
            self._held_back += 1
            return False
        self._in_window += 1
        if self._held_back:
            record.msg = f"{record.getMessage()} ({self._held_back} more such lines were held back)"
            record.args = None
            self._held_back = 0
        return True


    def remove(self) -> None:
        for handler in logging.getLogger().handlers:
            handler.removeFilter(self)


def limit_log_rate(prefix: str, burst: int = 5, period_s: float = 10.0) -> RateLimit:
    """Install a RateLimit on every handler of the root logger (records of child loggers reach the
    handlers, not the parents' filters); returns it, for its `suppressed` count."""
    limit = RateLimit(prefix, burst, period_s)
    for handler in logging.getLogger().handlers:
        handler.addFilter(limit)
    return limit

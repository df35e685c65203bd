"""A logging handler that keeps the last few warnings and errors in memory for the status page."""

from __future__ import annotations

import datetime as dt
import logging
from collections import deque
from dataclasses import dataclass

# Enough to see what went wrong lately without letting a noisy peer grow memory without bound.
DEFAULT_CAPACITY = 50
# One log line on the page; a multi-kilobyte message (a hostile peer's body quoted back) is cut.
MAX_MESSAGE = 500


@dataclass(frozen=True)
class LogEntry:
    """One WARNING-or-worse record, already formatted."""

    time: dt.datetime
    level: str
    logger: str
    message: str

    def to_json(self) -> dict[str, str]:
        """A JSON-ready dictionary."""
        return {
            "time": self.time.isoformat(),
            "level": self.level,
            "logger": self.logger,
            "message": self.message,
        }


class RecentErrors(logging.Handler):
    """Keeps the newest ``capacity`` records at WARNING or above; counts every one it saw."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        super().__init__(logging.WARNING)
        self._entries: deque[LogEntry] = deque(maxlen=capacity)
        self.total: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        """Remember the record (called by logging under the handler's lock)."""
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                message = f"{message}: {record.exc_info[1]!r}"
        except Exception:  # a bad format string must not break the daemon's logging
            message = str(record.msg)
        message = " ".join(message.split())
        if len(message) > MAX_MESSAGE:
            message = message[: MAX_MESSAGE - 1] + "…"
        when = dt.datetime.fromtimestamp(record.created, dt.UTC)
        self._entries.append(LogEntry(when, record.levelname, record.name, message))
        self.total[record.levelname] = self.total.get(record.levelname, 0) + 1

    def entries(self) -> list[LogEntry]:
        """The remembered records, newest first."""
        # deque.copy() runs in C without releasing the GIL: safe against a logging thread.
        return list(reversed(self._entries.copy()))

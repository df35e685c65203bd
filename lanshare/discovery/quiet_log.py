"""Rate-limited logging for what peers send us: a hostile or broken peer must not flood the journal."""

from __future__ import annotations

import logging
import time


class QuietLog:
    """Logs each kind of problem from each peer at WARNING once per ``period``, otherwise at DEBUG.

    Thousands of forged adverts are thousands of distinct keys, so at most ``max_per_period``
    warnings go out per ``period`` in all; the rest go to DEBUG, and one line says how many did.
    """

    def __init__(
        self, logger: logging.Logger, period: float = 600.0, max_keys: int = 1024, max_per_period: int = 20
    ) -> None:
        self.logger = logger
        self.period = period
        self.max_keys = max_keys
        self.max_per_period = max_per_period
        self._last: dict[str, float] = {}
        self._window_start = float("-inf")
        self._in_window = 0
        self._suppressed = 0

    def warning(self, key: str, message: str, *args: object) -> None:
        """Log at WARNING unless ``key`` was logged so within ``period``, or too many were; then at DEBUG."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.period:
            self.logger.debug(message, *args)
            return
        if len(self._last) >= self.max_keys:
            # Many distinct keys means many distinct (possibly forged) peers: forget, stay bounded.
            self._last.clear()
        self._last[key] = now
        if now - self._window_start >= self.period:
            if self._suppressed:
                self.logger.warning("%d more peer problems were logged at DEBUG only", self._suppressed)
            self._window_start, self._in_window, self._suppressed = now, 0, 0
        if self._in_window >= self.max_per_period:
            if not self._suppressed:
                self.logger.warning(
                    "more than %d peer problems in %.0f s: the rest are logged at DEBUG",
                    self.max_per_period, self.period,
                )  # fmt: skip
            self._suppressed += 1
            self.logger.debug(message, *args)
            return
        self._in_window += 1
        self.logger.warning(message, *args)

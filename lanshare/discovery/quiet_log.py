"""Rate-limited logging for what peers send us: a hostile or broken peer must not flood the journal."""

from __future__ import annotations

import logging
import time


class QuietLog:
    """Logs each kind of problem from each peer at WARNING once per ``period``, otherwise at DEBUG."""

    def __init__(self, logger: logging.Logger, period: float = 600.0, max_keys: int = 1024) -> None:
        self.logger = logger
        self.period = period
        self.max_keys = max_keys
        self._last: dict[str, float] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        """Log at WARNING unless ``key`` was logged so within ``period``; then at DEBUG."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.period:
            self.logger.debug(message, *args)
            return
        if len(self._last) >= self.max_keys:
            # Many distinct keys means many distinct (possibly forged) peers: forget, stay bounded.
            self._last.clear()
        self._last[key] = now
        self.logger.warning(message, *args)

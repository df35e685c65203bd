"""``[upgrade] reboot``: when a deployed step may reboot the machine, and the reboot itself.

Three policies:

* ``never`` (the default): the step waits for someone to reboot; ``lanshare status`` and the
  status page say "reboot needed";
* ``after-step``: reboot as soon as a step is deployed;
* a maintenance window like ``"Mon..Fri 02:00-04:00"`` (Zincati's periodic strategy): reboot when a
  step is deployed, or found deployed and pending, while the local time is inside the window.  The
  window is checked when ``lanshare upgrade`` runs, so the timer must fire inside it (hourly does
  for a window of an hour or more).
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
WINDOW_EXPECTED = (
    '"never", "after-step" or a window like "Mon..Fri 02:00-04:00" '
    '(days optional: "Sat,Sun 01:00-05:00", "22:00-02:00")'
)
_TIME = r"([01][0-9]|2[0-3]):([0-5][0-9])"
_WINDOW_RE = re.compile(rf"(?:(?P<days>\S+)\s+)?{_TIME}-{_TIME}")


@dataclass(frozen=True)
class Window:
    """Local days of the week (0 = Monday) and a start and end minute of the day; an end at or
    before the start runs past midnight, belonging to the day it started."""

    days: frozenset[int]
    start: int
    end: int

    def contains(self, when: dt.datetime) -> bool:
        """Whether ``when`` (local time) falls inside the window."""
        minute = when.hour * 60 + when.minute
        day = when.weekday()
        if self.start < self.end:
            return day in self.days and self.start <= minute < self.end
        # Past midnight: 22:00-02:00 on Friday includes Saturday 01:00.
        return (day in self.days and minute >= self.start) or (
            (day - 1) % 7 in self.days and minute < self.end
        )

    def __str__(self) -> str:
        def hhmm(minute: int) -> str:
            return f"{minute // 60:02d}:{minute % 60:02d}"

        days = ",".join(DAYS[d] for d in sorted(self.days))
        return f"{days} {hhmm(self.start)}-{hhmm(self.end)}"


@dataclass(frozen=True)
class RebootPolicy:
    """``never``, ``after-step`` or ``window``."""

    kind: str
    window: Window | None = None

    def __str__(self) -> str:
        return str(self.window) if self.window is not None else self.kind

    def reboot_now(self, *, deployed_now: bool, now: dt.datetime) -> bool:
        """Whether to reboot: ``deployed_now`` a step was deployed by this run (else one is pending)."""
        if self.kind == "after-step":
            return deployed_now
        return self.window is not None and self.window.contains(now)


NEVER = RebootPolicy("never")


def _days(text: str) -> frozenset[int]:
    days: set[int] = set()
    for part in text.split(","):
        first, dots, last = part.partition("..")
        if first not in DAYS or (dots and last not in DAYS):
            raise ValueError(f"unknown day {part!r}")
        low, high = DAYS.index(first), DAYS.index(last if dots else first)
        # "Sat..Mon" wraps around the week, as in systemd calendar specs.
        days.update((low + i) % 7 for i in range((high - low) % 7 + 1))
    return frozenset(days)


def parse_reboot(text: str) -> RebootPolicy:
    """Parse ``[upgrade] reboot``; ValueError saying what is expected."""
    text = text.strip()
    if text in ("never", "after-step"):
        return RebootPolicy(text)
    match = _WINDOW_RE.fullmatch(text)
    if match is None:
        raise ValueError(WINDOW_EXPECTED)
    try:
        days = _days(match["days"]) if match["days"] else frozenset(range(7))
    except ValueError as e:
        raise ValueError(f"{e}; expected {WINDOW_EXPECTED}") from None
    start = int(match[2]) * 60 + int(match[3])
    end = int(match[4]) * 60 + int(match[5])
    if start == end:
        raise ValueError(WINDOW_EXPECTED)
    return RebootPolicy("window", Window(days, start, end))


def reboot(argv: Sequence[str]) -> str | None:
    """Run the reboot command; None when it started, else what went wrong (one line)."""
    shown = " ".join(argv)
    try:
        done = subprocess.run(
            list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace"
        )
    except OSError as e:
        return f"reboot_command {shown}: cannot run: {e.strerror or e}"
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-2:]) or "(no output on stderr)"
        return f"reboot_command {shown} exited with status {done.returncode}: {tail}"
    return None

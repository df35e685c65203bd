"""Which process holds a lease, and whether it is still alive.

A pull SIGKILLed (or killed with its daemon) never releases its lease, and the lease would keep
its commit from being pruned until it expires.  So a lease names its holder process well enough
to tell, later, that the process is gone: its PID, the kernel's start time of that PID (a PID
reused by another process has another start time), the boot it ran in (PIDs restart each boot),
its PID namespace and its host (a shared PostgreSQL index may hold leases from other machines,
whose processes we cannot see: those are left to expire).  Whatever cannot be checked (a process
systemd's ProtectProc hides, boot identities of different kinds) counts as alive: a lease wrongly
dropped could let prune delete what a pull relies on, one wrongly kept only waits for its expiry.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_PROC = Path("/proc")
# Prefix of a boot identity estimated from the boot time, where the kernel's boot id is hidden.
_BTIME = "btime:"


@dataclass(frozen=True)
class Holder:
    """A process, named so that a later look at /proc can tell whether it still runs."""

    pid: int
    start_ticks: int | None
    boot_id: str | None
    pid_ns: int | None
    host: str

    def is_dead(self) -> bool:
        """True only when this process certainly no longer runs (False when it cannot be known)."""
        me = this_process()
        if self.host != me.host or self.pid_ns != me.pid_ns:
            return False  # another machine, or a PID namespace whose PIDs mean nothing here
        if not pid_exists(self.pid):
            return True  # no process has that PID now: whichever boot it ran in, it is gone
        # A process has that PID: the holder, or a later one that reused the PID.
        if self.boot_id is None or me.boot_id is None or not same_kind(self.boot_id, me.boot_id):
            return False
        if not same_boot(self.boot_id, me.boot_id):
            return True  # the machine rebooted since: every process of that boot is gone
        started = process_start_ticks(self.pid)
        # None: hidden from us (systemd's ProtectProc=invisible hides other users' processes).
        return started is not None and self.start_ticks is not None and started != self.start_ticks


def pid_exists(pid: int) -> bool:
    """Whether a process with ``pid`` exists (kill(0) sees processes /proc may hide)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except (OverflowError, ValueError):
        return False
    return True


def same_kind(a: str, b: str) -> bool:
    """Whether two boot identities can be compared (both boot ids, or both boot-time estimates)."""
    return a.startswith(_BTIME) == b.startswith(_BTIME)


def same_boot(a: str, b: str) -> bool:
    """Whether two boot identities of the same kind name the same boot."""
    if a.startswith(_BTIME):
        # Estimates drift with clock adjustments: within a minute is the same boot.
        return abs(int(a.removeprefix(_BTIME)) - int(b.removeprefix(_BTIME))) <= 60
    return a == b


def process_start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (field 22 of /proc/PID/stat); None if gone."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces or ")": split after
    # the last ")"; the remaining fields start at field 3.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[22 - 3])
    except (IndexError, ValueError):
        return None


def _boot_id() -> str | None:
    try:
        return (_PROC / "sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        pass
    # systemd's ProcSubset=pid hides /proc/sys: fall back to when the machine booted, estimated.
    try:
        booted = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):
        return None
    return f"{_BTIME}{round(booted)}"


def _pid_ns() -> int | None:
    try:
        return os.stat(_PROC / "self/ns/pid").st_ino
    except OSError:
        return None


@cache
def _identity(pid: int) -> Holder:
    return Holder(pid, process_start_ticks(pid), _boot_id(), _pid_ns(), socket.gethostname()[:255])


def this_process() -> Holder:
    """The calling process (cached per PID, so a forked child computes its own)."""
    return _identity(os.getpid())

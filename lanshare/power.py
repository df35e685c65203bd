"""Stop sharing on battery or on a metered connection when ``[sharing]`` says so.

With ``share_on_battery = false``, a laptop running on its battery stops serving peers: the LAN
listener answers 503 with ``Retry-After`` (peers move on to another source) and the mDNS adverts
are withdrawn, until mains power is back.  ``share_on_metered = false`` does the same on a metered
connection.  Pulling for this machine goes on either way.

On battery: some ``/sys/class/power_supply/*`` of type ``Battery`` is present and no supply of
type ``Mains`` (or ``USB``) is online; with no mains supply listed at all, a battery whose status
is ``Discharging``.  Metered: NetworkManager's ``Metered`` property over D-Bus (``busctl``); where
NetworkManager or busctl is missing the state is unknown, logged once, and sharing stays on.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

from lanshare.config import SharingConfig

log = logging.getLogger(__name__)

# How often the power and network state is looked at, and what a paused listener tells peers.
CHECK_INTERVAL = 30.0
RETRY_AFTER = 300

# NetworkManager's NMMetered: 1 yes, 3 guess-yes (2/4 no, 0 unknown).
_NM_METERED = {1, 3}

MeteredProbe = Callable[[], bool | None]
Listener = Callable[[bool], Awaitable[None]]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def on_battery(sys_root: Path = Path("/sys")) -> bool:
    """Whether this machine runs on its battery right now (False when it has none)."""
    supplies = sys_root / "class" / "power_supply"
    try:
        entries = sorted(supplies.iterdir())
    except OSError:
        return False
    kinds = {entry: _read(entry / "type") for entry in entries}
    batteries = [e for e, kind in kinds.items() if kind == "Battery" and _read(e / "present") != "0"]
    if not batteries:
        return False
    mains = [e for e, kind in kinds.items() if kind in ("Mains", "USB")]
    if mains:
        return not any(_read(e / "online") == "1" for e in mains)
    return any(_read(e / "status") == "Discharging" for e in batteries)


def networkmanager_metered() -> bool | None:
    """NetworkManager's idea of whether the connection is metered; None when it cannot be asked."""
    busctl = shutil.which("busctl")
    if busctl is None:
        return None
    try:
        result = subprocess.run(
            [busctl, "get-property", "org.freedesktop.NetworkManager", "/org/freedesktop/NetworkManager",
             "org.freedesktop.NetworkManager", "Metered"],
            capture_output=True, text=True, timeout=5, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = result.stdout.split()  # "u 4"
    if result.returncode != 0 or len(words) != 2 or not words[1].isdigit():
        return None
    return int(words[1]) in _NM_METERED


class SharingSwitch:
    """Whether this node shares right now, and who to tell when that changes."""

    def __init__(
        self,
        config: SharingConfig,
        sys_root: Path = Path("/sys"),
        metered: MeteredProbe = networkmanager_metered,
    ) -> None:
        self.config = config
        self.sys_root = sys_root
        self.metered_probe = metered
        self.paused_because: str | None = None
        self._listeners: list[Listener] = []
        self._metered_unknown_logged = False
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def paused(self) -> bool:
        """True while sharing is off (battery or metered)."""
        return self.paused_because is not None

    def subscribe(self, listener: Listener) -> None:
        """Call ``await listener(paused)`` on every change (mDNS advertising withdraws and returns).

        A listener that subscribes while sharing is already paused is told so at once (in a task).
        """
        self._listeners.append(listener)
        if self.paused:
            task = asyncio.get_running_loop().create_task(self._tell(listener, True))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _tell(self, listener: Listener, paused: bool) -> None:
        try:
            await listener(paused)
        except Exception:
            log.exception("a sharing listener failed")

    def _reason(self) -> str | None:
        """Why sharing should be off now, or None (blocking: reads /sys, may run busctl)."""
        if not self.config.share_on_battery and on_battery(self.sys_root):
            return "on battery (share_on_battery = false)"
        if not self.config.share_on_metered:
            metered = self.metered_probe()
            if metered is None and not self._metered_unknown_logged:
                self._metered_unknown_logged = True
                log.info("share_on_metered = false, but NetworkManager cannot be asked: sharing stays on")
            if metered:
                return "on a metered connection (share_on_metered = false)"
        return None

    async def check(self) -> bool:
        """Look at the power and network state now; True if sharing was switched on or off."""
        if self.config.share_on_battery and self.config.share_on_metered:
            return False
        reason = await asyncio.to_thread(self._reason)
        if reason == self.paused_because:
            return False
        self.paused_because = reason
        if reason is not None:
            log.info("sharing paused: %s", reason)
        else:
            log.info("sharing resumed")
        for listener in self._listeners:
            await self._tell(listener, reason is not None)
        return True

    async def watch(self, interval: float = CHECK_INTERVAL) -> None:
        """Check every ``interval`` seconds, forever (cancel to stop)."""
        while True:
            await self.check()
            await asyncio.sleep(interval)

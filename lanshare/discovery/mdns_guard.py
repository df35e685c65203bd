"""The test suite's guard against mDNS on the machine's real interfaces.

Tests may speak mDNS only inside network namespaces they made (or on loopback).  A daemon started
in the machine's own namespace with the default ``advertise``/``discovery`` would send multicast
out of every real interface; two tests once did.  The suite sets :data:`GUARD_ENV` for itself and
every process it starts, and the one place lanshare creates its zeroconf instance calls
:func:`check_mdns_binding` first, so such a daemon stops with an error instead (the test fails).
The variable does not start with ``LANSHARE_``: those are config overrides, and the benches strip them.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence

from zeroconf import InterfaceChoice

GUARD_ENV = "_LANSHARE_FORBID_HOST_MDNS"


class HostMdnsForbidden(RuntimeError):
    """mDNS would leave the machine through a real interface while the guard is on."""


def in_host_network_namespace() -> bool:
    """True if this process shares the network namespace of PID 1 (the machine's own)."""
    try:
        return os.stat("/proc/self/ns/net").st_ino == os.stat("/proc/1/ns/net").st_ino
    except OSError:  # no /proc, or PID 1's namespace unreadable: assume the worst
        return True


def _loopback_only(bind: Sequence[str] | InterfaceChoice) -> bool:
    if isinstance(bind, InterfaceChoice):
        return False
    return all(ipaddress.ip_address(str(address).split("%")[0]).is_loopback for address in bind)


def check_mdns_binding(bind: Sequence[str] | InterfaceChoice) -> None:
    """Raise :class:`HostMdnsForbidden` if the guard is on and ``bind`` reaches a real interface."""
    if os.environ.get(GUARD_ENV) != "1" or _loopback_only(bind) or not in_host_network_namespace():
        return
    raise HostMdnsForbidden(
        f"mDNS on {bind!r} in the machine's own network namespace is forbidden while {GUARD_ENV}=1 "
        "(the test suite): set [sharing] advertise = false and discovery = false, bind 127.0.0.1, "
        "or run the daemon in a network namespace"
    )

"""The test suite's guard against mDNS on the machine's real interfaces.

Tests may speak mDNS only inside network namespaces they made (or on loopback).  A daemon started
in the machine's own namespace with the default ``advertise``/``discovery`` would send multicast
out of every real interface; two tests once did.  The suite sets :data:`GUARD_ENV` (the identity
of its own network namespace) for itself and every process it starts, and the one place lanshare
creates its zeroconf instance calls :func:`check_mdns_binding` first, so such a daemon stops with
an error instead (the test fails).
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


def network_namespace_id() -> str:
    """The identity of this process's network namespace (``net:[inode]``), or "" if unreadable."""
    try:
        return os.readlink("/proc/self/ns/net")
    except OSError:
        return ""


def guard_value() -> str:
    """The value of :data:`GUARD_ENV` that forbids real-interface mDNS in this namespace.

    The suite's own namespace is the machine's (PID 1's may not be readable in a sandbox, so it is
    recorded rather than compared); a process inside a namespace a test made has another identity.
    """
    return network_namespace_id() or "unknown"


def _loopback_only(bind: Sequence[str] | InterfaceChoice) -> bool:
    if isinstance(bind, InterfaceChoice):
        return False
    return all(ipaddress.ip_address(str(address).split("%")[0]).is_loopback for address in bind)


def check_mdns_binding(bind: Sequence[str] | InterfaceChoice) -> None:
    """Raise :class:`HostMdnsForbidden` if ``bind`` reaches a real interface of a guarded namespace."""
    guarded = os.environ.get(GUARD_ENV)
    if not guarded or _loopback_only(bind):
        return
    here = network_namespace_id()
    if here and here != guarded:
        return  # a namespace of the test's own making
    raise HostMdnsForbidden(
        f"mDNS on {bind!r} in the machine's own network namespace is forbidden while {GUARD_ENV} is set "
        "(the test suite): set [sharing] advertise = false and discovery = false, bind 127.0.0.1, "
        "or run the daemon in a network namespace"
    )

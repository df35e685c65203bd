"""A LAN of network namespaces on one machine: hosts ``a``, ``b``, ``c``… joined by one bridge.

Each host is its own network namespace with ``lo`` and ``eth0`` (10.123.0.1, .2, .3 /24, multicast
routed out of eth0, no default route).  The bridge lives in a hub namespace of its own, so nothing
is created in, or attached to, the machine's own network namespace: mDNS and HTTP between the
hosts never reach a real interface.  Names carry a per-LAN random tag, so parallel runs (or two
LANs in one process) never clash; the addresses may repeat because each LAN is a separate world.

:func:`netns_lan_context` makes a LAN and always tears it down; processes are started in a host
with :meth:`NetnsLan.run` / :meth:`NetnsLan.popen` / :meth:`NetnsLan.python`.  Teardown kills
whatever still runs inside the LAN's namespaces (only those) and deletes them; namespaces of a run
killed before its teardown are deleted by the next run (:func:`remove_stale_namespaces`).
:func:`loopback_host_context` is one host, ``solo``, with nothing but loopback, and
:func:`loopback_command` wraps one command in ``unshare -n`` with ``lo`` up.

Everything here needs root and iproute2: :func:`unavailable_reason` says why not, and the contexts
raise :class:`NetnsUnavailable`.  ``lanshare.demo`` and the tests (``tests/netns.py``, which adds
pytest fixtures) share this module.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUBNET = "10.123.0"
HOST_NAMES = ("a", "b", "c", "d", "e", "f", "g", "h")


class NetnsUnavailable(Exception):
    """Network namespaces cannot be made here (not root, no ``ip``/``unshare``)."""


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made on this machine, or None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2/util-linux) is not installed"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


@dataclass(frozen=True)
class Host:
    """One machine of the LAN."""

    name: str  # short name: "a", "b", …
    netns: str  # the namespace's name, for `ip netns exec`
    address: str  # IPv4 of eth0


@dataclass
class NetnsLan:
    """A running namespace LAN (see the module docstring)."""

    tag: str
    hub: str
    hosts: dict[str, Host] = field(default_factory=dict)
    cwd: Path | None = None  # the working directory of the commands started in the hosts
    _procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def command(self, host: str, argv: Sequence[str | os.PathLike[str]]) -> list[str]:
        """``argv`` prefixed to run inside ``host``'s namespace."""
        return ["ip", "netns", "exec", self.hosts[host].netns, *map(str, argv)]

    def run(
        self,
        host: str,
        argv: Sequence[str | os.PathLike[str]],
        *,
        check: bool = True,
        timeout: float = 60,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion inside ``host``; its output is captured as text."""
        return subprocess.run(
            self.command(host, argv),
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=None if env is None else dict(env),
            input=input,
            cwd=self.cwd,
        )

    def popen(
        self, host: str, argv: Sequence[str | os.PathLike[str]], **kwargs: Any
    ) -> subprocess.Popen[Any]:
        """Start a command inside ``host`` (``ip netns exec`` execs it: the Popen pid is the command's).

        The process is killed at teardown if still running.
        """
        kwargs.setdefault("cwd", self.cwd)
        proc: subprocess.Popen[Any] = subprocess.Popen(self.command(host, argv), **kwargs)
        self._procs.append(proc)
        return proc

    def python(self, host: str, *args: str | os.PathLike[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start this Python interpreter inside ``host`` with ``args`` (``-c CODE``, ``-m MODULE``…)."""
        return self.popen(host, [sys.executable, *args], **kwargs)

    def pids(self, host: str) -> list[int]:
        """Processes running inside ``host``'s namespace."""
        out = _ip("netns", "pids", self.hosts[host].netns, check=False).stdout
        return [int(p) for p in out.split()]

    def _namespaces(self) -> list[str]:
        return [h.netns for h in self.hosts.values()] + ([self.hub] if self.hub else [])

    def teardown(self) -> None:
        """Kill what runs inside the LAN (ours only) and delete its namespaces."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        existing = set(_ip("netns", "list", check=False).stdout.split())
        for ns in self._namespaces():
            if ns not in existing:
                continue
            for _ in range(2):
                out = _ip("netns", "pids", ns, check=False).stdout.split()
                if not out:
                    break
                for pid in out:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                time.sleep(0.05)
            _ip("netns", "del", ns, check=False)


def _up(lan: NetnsLan, count: int) -> None:
    hub = lan.hub
    _ip("netns", "add", hub)
    _ip("-n", hub, "link", "set", "lo", "up")
    # No snooping, no STP, no forwarding delay: multicast floods to every port at once.
    _ip("-n", hub, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0", "stp_state", "0",
        "forward_delay", "0")  # fmt: skip
    _ip("-n", hub, "link", "set", "br0", "up")
    for index, name in enumerate(HOST_NAMES[:count]):
        host = Host(name, f"{lan.tag}-{name}", f"{SUBNET}.{index + 1}")
        lan.hosts[name] = host
        ns = host.netns
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        # The veth is made inside the hub and its peer moved straight into the host as eth0.
        _ip("-n", hub, "link", "add", f"p-{name}", "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("-n", hub, "link", "set", f"p-{name}", "master", "br0", "up")
        _ip("-n", ns, "link", "set", "eth0", "multicast", "on", "up")
        _ip("-n", ns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
    deadline = time.monotonic() + 5
    for host in lan.hosts.values():
        while " UP " not in _ip("-n", host.netns, "-br", "link", "show", "eth0").stdout:
            if time.monotonic() > deadline:
                raise NetnsUnavailable(f"eth0 of {host.netns} did not come up")
            time.sleep(0.02)


_TAG_RE = re.compile(r"ls(\d+)x[0-9a-f]{6}-\w+")


def remove_stale_namespaces() -> None:
    """Delete namespaces left by a test run that was killed before its teardown.

    Only names this module makes, whose creating process is gone and which hold no process.
    """
    for ns in _ip("netns", "list", check=False).stdout.split():
        match = _TAG_RE.fullmatch(ns)
        if match is None or Path(f"/proc/{match.group(1)}").exists():
            continue
        if not _ip("netns", "pids", ns, check=False).stdout.split():
            _ip("netns", "del", ns, check=False)


def _new_tag() -> str:
    remove_stale_namespaces()
    return f"ls{os.getpid()}x{secrets.token_hex(3)}"


@contextlib.contextmanager
def netns_lan_context(count: int = 3, *, cwd: Path | None = None) -> Iterator[NetnsLan]:
    """A LAN of ``count`` hosts (at most 8), torn down on exit whatever happens.

    ``cwd`` is the working directory of the commands started in the hosts (default: inherited).
    """
    reason = unavailable_reason()
    if reason is not None:
        raise NetnsUnavailable(reason)
    if not 1 <= count <= len(HOST_NAMES):
        raise ValueError(f"1 to {len(HOST_NAMES)} hosts, not {count}")
    tag = _new_tag()
    lan = NetnsLan(tag=tag, hub=f"{tag}-hub", cwd=cwd)
    try:
        try:
            _up(lan, count)
        except subprocess.CalledProcessError as e:  # e.g. root in a container without CAP_SYS_ADMIN
            raise NetnsUnavailable(f"`{' '.join(e.cmd)}` failed: {(e.stderr or '').strip()}") from e
        yield lan
    finally:
        lan.teardown()


def _solo_up(lan: NetnsLan) -> None:
    host = Host("solo", f"{lan.tag}-solo", "127.0.0.1")
    lan.hosts[host.name] = host
    _ip("netns", "add", host.netns)
    _ip("-n", host.netns, "link", "set", "lo", "up")


@contextlib.contextmanager
def loopback_host_context(*, cwd: Path | None = None) -> Iterator[NetnsLan]:
    """One host, ``solo``, with nothing but ``lo`` (127.0.0.1): a named ``unshare -n``.

    Unlike :func:`loopback_command`, several processes can be started in it one by one.
    """
    reason = unavailable_reason()
    if reason is not None:
        raise NetnsUnavailable(reason)
    tag = _new_tag()
    lan = NetnsLan(tag=tag, hub="", cwd=cwd)
    try:
        try:
            _solo_up(lan)
        except subprocess.CalledProcessError as e:
            raise NetnsUnavailable(f"`{' '.join(e.cmd)}` failed: {(e.stderr or '').strip()}") from e
        yield lan
    finally:
        lan.teardown()


def loopback_command(argv: Sequence[str | os.PathLike[str]]) -> list[str]:
    """``argv`` run in a fresh network namespace holding only ``lo`` (up): ``unshare -n``.

    mDNS on 127.0.0.1 works there (``AsyncZeroconf(interfaces=["127.0.0.1"])``) and reaches no
    other machine.  The namespace ends with the command.
    """
    inner = " ".join(shlex.quote(str(a)) for a in argv)
    return ["unshare", "-n", "sh", "-c", f"ip link set lo up && exec {inner}"]

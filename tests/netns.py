"""Pytest fixtures over :mod:`lanshare.netns`: a LAN of network namespaces (hosts ``a``, ``b``, ``c``).

The namespace LAN itself (hosts on a bridge in a hub namespace, unique names, teardown, stale
cleanup) is :mod:`lanshare.netns`, shared with ``python3 -m lanshare.demo``; this module re-exports
its names and runs the hosts' commands from the source tree.

Use the ``netns_lan`` fixture (one LAN per test) or ``netns_lan_module`` (one per module) —
import it into the test module: ``from tests.netns import netns_lan  # noqa: F401`` — or
:func:`netns_lan_context` outside pytest (benchmarks).  Processes are started in a host with
:meth:`NetnsLan.run` / :meth:`NetnsLan.popen` / :meth:`NetnsLan.python`.

For a single host with nothing but loopback, the ``loopback_host`` fixture (one named namespace,
host ``"solo"``) or :func:`loopback_command` (wraps one command in ``unshare -n`` with ``lo``
up).  Everything here needs root; the fixtures skip with a reason if not (under CI=true they fail).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from lanshare import netns as _netns
from lanshare.netns import (
    HOST_NAMES,
    SUBNET,
    Host,
    NetnsLan,
    NetnsUnavailable,
    loopback_command,
    remove_stale_namespaces,
    unavailable_reason,
)
from tests import needs

__all__ = [
    "HOST_NAMES",
    "SOURCE_ROOT",
    "SUBNET",
    "Host",
    "NetnsLan",
    "NetnsUnavailable",
    "loopback_command",
    "loopback_host",
    "loopback_host_context",
    "netns_lan",
    "netns_lan_context",
    "netns_lan_module",
    "remove_stale_namespaces",
    "require_namespaces",
    "unavailable_reason",
]

SOURCE_ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def netns_lan_context(count: int = 3) -> Iterator[NetnsLan]:
    """A LAN of ``count`` hosts (at most 8) whose commands run from the source tree; always torn down."""
    with _netns.netns_lan_context(count, cwd=SOURCE_ROOT) as lan:
        yield lan


@contextlib.contextmanager
def loopback_host_context() -> Iterator[NetnsLan]:
    """One host, ``solo``, with nothing but ``lo`` (127.0.0.1): a named ``unshare -n``.

    Unlike :func:`loopback_command`, several processes can be started in it one by one.
    """
    with _netns.loopback_host_context(cwd=SOURCE_ROOT) as lan:
        yield lan


@pytest.fixture
def loopback_host() -> Iterator[NetnsLan]:
    """A namespace holding only ``lo``; its one host is ``"solo"`` (skips when not root)."""
    require_namespaces()
    with loopback_host_context() as lan:
        yield lan


@pytest.fixture
def netns_lan() -> Iterator[NetnsLan]:
    """Three hosts a, b, c on a namespace LAN, for one test (skips when not root)."""
    require_namespaces()
    with netns_lan_context(3) as lan:
        yield lan


@pytest.fixture(scope="module")
def netns_lan_module() -> Iterator[NetnsLan]:
    """Three hosts a, b, c on a namespace LAN shared by a test module (skips when not root)."""
    require_namespaces()
    with netns_lan_context(3) as lan:
        yield lan


def require_namespaces() -> None:
    """Skip the calling test when namespaces cannot be made here (fail it under CI=true)."""
    needs.check("namespaces")

"""The event loop the daemon runs on: uvloop's (libuv) when it is installed, else asyncio's.

Serving stock ``ostree pull`` costs the daemon a fixed amount of Python per request, much of it in
the event loop itself; on uvloop the daemon spent about a third less CPU per request on the same
pulls of thousands of small objects (bench/bench_serve.py), which is what decides how close one
Python process gets to nginx.  uvloop is a dependency on Linux; without it (another platform, a
stripped install) asyncio's own loop runs everything the same way, only slower.

uvloop has no ``loop.sendfile``: the LAN listener copies files itself there
(:class:`lanshare.server.limits.BodyWriter`).  Commands other than ``serve`` stay on asyncio's loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """A function making uvloop's loop, or None (asyncio's default) when uvloop is not installed."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """:func:`asyncio.run` on the fastest loop available."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)

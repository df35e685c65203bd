"""The event loop lanshare's commands run on: uvloop's (libuv) when it is installed, else asyncio's.

Serving stock ``ostree pull`` costs the daemon a fixed amount of Python per request, most of it in
the event loop and aiohttp's protocol; with uvloop the daemon spent ~40 % less CPU on the same
pulls of 5,261 small objects (bench/bench_serve.py, and ostree pulls against two daemons side by
side), which is what decides how fast one Python process can feed a classroom.  uvloop is a
dependency on Linux; without it (another platform, a stripped install) asyncio's own loop runs
everything the same way, only slower.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """:func:`asyncio.run` on the fastest loop available."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)

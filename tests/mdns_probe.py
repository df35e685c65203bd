"""A plain python-zeroconf browser printing what it sees as JSON lines (run inside a namespace).

    python -m tests.mdns_probe --interface 127.0.0.1 _lanshare._tcp.local. _ostree_repo._tcp.local.

Each line: ``{"event": "added"|"updated"|"removed", "type", "name", "txt" (hex of the raw TXT),
"port", "addresses", "t" (time.time())}``; a first line ``{"event": "ready"}`` once browsing.
Stops on SIGTERM or when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from typing import Any

from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf


def emit(**fields: Any) -> None:
    print(json.dumps({**fields, "t": time.time()}), flush=True)


async def describe(zc: Zeroconf, type_: str, name: str, event: str) -> None:
    info = AsyncServiceInfo(type_, name)
    if not await info.async_request(zc, 3000):
        emit(event=f"{event}-unresolved", type=type_, name=name)
        return
    emit(
        event=event,
        type=type_,
        name=name,
        txt=(info.text or b"").hex(),
        port=info.port,
        addresses=info.parsed_addresses(),
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--interface", action="append", default=[])
    parser.add_argument("types", nargs="+")
    args = parser.parse_args()
    interfaces = args.interface or InterfaceChoice.All
    aiozc = AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
    known: dict[tuple[str, str], bool] = {}
    tasks: set[asyncio.Task[None]] = set()

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        key = (service_type, name)
        if state_change is ServiceStateChange.Removed:
            known.pop(key, None)
            emit(event="removed", type=service_type, name=name)
            return
        known[key] = True
        event = "added" if state_change is ServiceStateChange.Added else "updated"
        task = asyncio.ensure_future(describe(zeroconf, service_type, name, event))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    browser = AsyncServiceBrowser(aiozc.zeroconf, args.types, handlers=[on_change])
    emit(event="ready")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.readline() else None)

    await stop.wait()
    await browser.async_cancel()
    await aiozc.async_close()


if __name__ == "__main__":
    asyncio.run(main())

"""Where the daemon writes its bound status address: shared by the listener and ``lanshare status``.

A module of its own so that ``lanshare status`` reads it without importing aiohttp and the index.
"""

from __future__ import annotations

# The bound status address ("host:port") is written here once listening, as for the LAN
# listener: `lanshare status` reads it, and with port 0 it is the only way to learn the port.
STATUS_ADDRESS_FILE = "status-address"

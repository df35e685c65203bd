"""The keys the daemon's resources are stored under in its application, and the error that stops its start.

Its own module so that data flows one way: :mod:`lanshare.daemon` puts resources in, and the
``cleanup_ctx`` entries of discovery and the status listener read them, without importing the
daemon that imports them.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from sqlalchemy import Engine

from lanshare.background import Background
from lanshare.config import Config, ListenAddress
from lanshare.errors import Error
from lanshare.ostree.repo import Repo
from lanshare.power import SharingSwitch

CONFIG = web.AppKey("config", Config)
NODE_ID = web.AppKey("node_id", str)
REPO = web.AppKey("repo", Repo)
INDEX = web.AppKey("index", Engine)
LAN_APP = web.AppKey("lan_app", web.Application)
LAN_ADDRESS = web.AppKey("lan_address", ListenAddress)
# Whether this node shares right now ([sharing] share_on_battery / share_on_metered): the LAN
# listener answers 503 while it is paused, and mDNS advertising subscribes to withdraw the adverts.
SHARING = web.AppKey("sharing", SharingSwitch)
BACKGROUND = web.AppKey("background", Background)
# Set to start the daemon again in the same process with a new node id (a cloned machine's twin
# was found on the LAN, lanshare.discovery.clones): every resource that knows the id restarts.
NEW_NODE_ID = web.AppKey("new_node_id", asyncio.Event)


class DaemonError(Error):
    """The daemon cannot start: a listener cannot bind, the state directory is unusable…"""

"""The LAN listener's application: the archive layout at ``/`` and ``/0/``, and ``/lanshare/v1/``.

Read-only by construction: the only routes are GET/HEAD on whitelisted archive paths and the two
API endpoints, so nothing an admin can do is reachable from the LAN.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Handler

from lanshare import wire
from lanshare.ostree.repo import Repo
from lanshare.power import RETRY_AFTER as PAUSED_RETRY_AFTER
from lanshare.server.archive import archive_file, send_file
from lanshare.server.batch import read_batch_request, send_batch
from lanshare.server.holdings import Holdings
from lanshare.server.limits import LanLimits, PeerLedger, peer_of
from lanshare.server.opener import FileOpener
from lanshare.server.trees import send_trees

REPO = web.AppKey("lan_repo", Repo)
LIMITS = web.AppKey("lan_limits", LanLimits)
NODE_ID = web.AppKey("lan_node_id", str)
HOLDINGS = web.AppKey("lan_holdings", Holdings)
LEDGER = web.AppKey("lan_ledger", PeerLedger)
_ROOT = web.AppKey("lan_root", Path)
_OPENER = web.AppKey("lan_opener", FileOpener)


class SharingState(Protocol):
    """Whether this node shares right now (:class:`lanshare.power.SharingSwitch`)."""

    @property
    def paused_because(self) -> str | None:
        """Why sharing is paused, or None while it is on."""


class _AlwaysSharing:
    paused_because: str | None = None


_BATCH_SLOTS = web.AppKey("lan_batch_slots", asyncio.Semaphore)

# libostree's LAN finder fetches from http://HOST:PORT/<ri>/; this node publishes one repo, ri 0.
REPO_INDEX_PREFIX = "0/"
_POST_PATHS = frozenset({wire.OBJECTS_PATH, wire.TREES_PATH})


def _refusal(text: str, retry_after: int) -> web.Response:
    response = web.Response(status=503, text=text, headers={"Retry-After": str(retry_after)})
    # Close it: an idle keep-alive connection from a peer we turned away only holds a socket.
    response.force_close()
    return response


class _Gate:
    """What every request passes first: 503 while sharing is paused (before anything else runs, not
    even the connection limit), 503 past max_connections requests in flight rather than a queue
    without bound, and every request admitted counted for its peer.

    Each route's handler is wrapped in it (:func:`_gated`) rather than an aiohttp middleware:
    any middleware makes aiohttp build a chain of two per request (its own ``current_app`` one
    comes with it), and stock ``ostree pull`` sends thousands of small requests.  A catch-all
    route answers 405 itself so that no request reaches the router's built-in answers ungated.
    """

    def __init__(self, sharing: SharingState, limits: LanLimits, ledger: PeerLedger) -> None:
        self.sharing = sharing
        self.limits = limits
        self.ledger = ledger
        self.in_flight = 0  # requests being handled now (the event loop is the only writer)

    def enter(self, request: web.BaseRequest) -> web.Response | None:
        """Admit the request (None; call :meth:`leave` when it is answered) or the 503 refusing it."""
        paused = self.sharing.paused_because
        if paused is not None:
            return _refusal(f"not sharing now: {paused}\n", PAUSED_RETRY_AFTER)
        if self.in_flight >= self.limits.max_connections:
            return _refusal("busy, retry later\n", self.limits.retry_after)
        self.in_flight += 1
        self.ledger.count_request(peer_of(request))
        return None

    def leave(self) -> None:
        self.in_flight -= 1


def _gated(gate: _Gate, handler: Handler) -> Handler:
    async def gated(request: web.Request) -> web.StreamResponse:
        refusal = gate.enter(request)
        if refusal is not None:
            return refusal
        try:
            return await handler(request)
        finally:
            gate.leave()

    return gated


async def _archive(request: web.Request) -> web.StreamResponse:
    path = request.match_info["path"]
    if path.startswith(REPO_INDEX_PREFIX):
        path = path[len(REPO_INDEX_PREFIX) :]
    file = archive_file(path)
    if file is None:
        raise web.HTTPNotFound()
    return await send_file(request, request.app[_OPENER], file, request.app[LEDGER])


async def _method_not_allowed(request: web.Request) -> web.StreamResponse:
    allowed = {"GET", "HEAD"}
    if request.path in _POST_PATHS:
        allowed.add("POST")
    raise web.HTTPMethodNotAllowed(request.method, allowed)


async def _info(request: web.Request) -> web.StreamResponse:
    snapshot = await request.app[HOLDINGS].snapshot()
    return web.Response(
        body=snapshot.body, content_type="application/json", headers={"Cache-Control": "no-cache"}
    )


async def _objects(request: web.Request) -> web.StreamResponse:
    names = await read_batch_request(request, request.app[LIMITS])
    async with request.app[_BATCH_SLOTS]:
        return await send_batch(request, request.app[_OPENER], names, request.app[LEDGER])


async def _trees(request: web.Request) -> web.StreamResponse:
    app = request.app
    async with app[_BATCH_SLOTS]:
        return await send_trees(request, app[_ROOT], app[LIMITS], app[LEDGER])


def create_lan_app(
    repo: Repo, limits: LanLimits, node_id: str, sharing: SharingState | None = None
) -> web.Application:
    """The read-only LAN application serving ``repo``; run it with ``limits.runner_kwargs()``.

    While ``sharing`` is paused every request is answered 503 (``None``: always sharing).
    """
    ledger = PeerLedger(limits)
    gate = _Gate(sharing or _AlwaysSharing(), limits, ledger)
    app = web.Application(client_max_size=limits.max_request_bytes)
    app[REPO] = repo
    app[LIMITS] = limits
    app[NODE_ID] = node_id
    app[HOLDINGS] = Holdings(repo, node_id)
    app[LEDGER] = ledger
    # Resolved once: the repository may be reached through a symlink, nothing below it may.
    app[_ROOT] = Path(os.path.realpath(repo.path))
    app[_OPENER] = FileOpener(app[_ROOT])
    app[_BATCH_SLOTS] = asyncio.Semaphore(limits.max_batch_streams)
    app.router.add_get(f"{wire.API_PREFIX}/info", _gated(gate, _info))
    app.router.add_post(wire.OBJECTS_PATH, _gated(gate, _objects))
    app.router.add_post(wire.TREES_PATH, _gated(gate, _trees))
    app.router.add_get("/{path:.*}", _gated(gate, _archive))
    # Last: every other method on every path (a 405 through the gate, like everything else).
    app.router.add_route("*", "/{path:.*}", _gated(gate, _method_not_allowed))
    return app

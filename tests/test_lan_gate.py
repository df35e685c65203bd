"""The LAN listener's gate: every request, whatever its route or method, passes it first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient

from lanshare import wire
from lanshare.ostree.repo import Repo
from lanshare.power import RETRY_AFTER
from lanshare.server import LEDGER, LanLimits, create_lan_app

NODE = "0123456789abcdef" * 2


class Switch:
    paused_because: str | None = None


REQUESTS = [
    ("GET", "/config"),
    ("HEAD", "/0/config"),
    ("GET", "/no/such/file"),
    ("GET", f"{wire.API_PREFIX}/info"),
    ("POST", f"{wire.API_PREFIX}/objects"),
    ("POST", wire.TREES_PATH),
    ("PUT", "/config"),
    ("OPTIONS", "/"),
    ("DELETE", f"{wire.API_PREFIX}/objects"),
]


@pytest.mark.asyncio
async def test_while_paused_every_request_is_503_and_none_is_counted(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    switch = Switch()
    switch.paused_because = "on battery (share_on_battery = false)"
    app = create_lan_app(Repo.init(tmp_path / "repo"), LanLimits(), NODE, sharing=switch)
    client: TestClient[Any, Any] = await aiohttp_client(TestServer(app))
    for method, path in REQUESTS:
        async with client.request(method, path, data=b"{}" if method == "POST" else None) as response:
            assert response.status == 503, (method, path)
            assert response.headers["Retry-After"] == str(RETRY_AFTER)
            if method != "HEAD":
                assert "not sharing now: on battery" in await response.text()
    assert app[LEDGER].snapshot() == {}
    switch.paused_because = None
    async with client.get("/config") as response:
        assert response.status == 200


@pytest.mark.asyncio
async def test_other_methods_get_405_with_allow_and_are_counted(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    app = create_lan_app(Repo.init(tmp_path / "repo"), LanLimits(), NODE)
    client: TestClient[Any, Any] = await aiohttp_client(TestServer(app))
    expected = {
        ("PUT", "/config"): "GET,HEAD",
        ("OPTIONS", "/"): "GET,HEAD",
        ("POST", f"{wire.API_PREFIX}/info"): "GET,HEAD",
        ("DELETE", f"{wire.API_PREFIX}/objects"): "GET,HEAD,POST",
        ("PATCH", wire.TREES_PATH): "GET,HEAD,POST",
    }
    for (method, path), allow in expected.items():
        async with client.request(method, path) as response:
            assert response.status == 405, (method, path)
            assert response.headers["Allow"] == allow
    assert app[LEDGER].snapshot()["127.0.0.1"].requests == len(expected)


@pytest.mark.asyncio
async def test_past_max_connections_the_next_request_gets_503_and_then_the_gate_reopens(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    # max_connections = 0: nothing is admitted (the in-flight count starts at 0 and never drifts).
    app = create_lan_app(Repo.init(tmp_path / "repo"), LanLimits(max_connections=0), NODE)
    client: TestClient[Any, Any] = await aiohttp_client(TestServer(app))
    for method, path in REQUESTS:
        async with client.request(method, path) as response:
            assert response.status == 503
            assert response.headers["Retry-After"] == "1"
    app2 = create_lan_app(Repo.init(tmp_path / "repo"), LanLimits(max_connections=1), NODE)
    client2: TestClient[Any, Any] = await aiohttp_client(TestServer(app2))
    for _ in range(3):  # one at a time: each leaves the gate open for the next, errors included
        for path in ("/config", "/no/such/file"):
            async with client2.get(path) as response:
                assert response.status in (200, 404)
        async with client2.put("/config") as response:
            assert response.status == 405

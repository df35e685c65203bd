"""The status listener of a real ``lanshare serve``: page in Debian's Chromium, JSON API, metrics, CLI.

Two daemons on 127.0.0.1: A holds a checkpoint chain (v1 → checkpoint v2 → v3 continuing on
os/stable-v2 → v4) and has v1 deployed; B holds the same plus v5 on os/stable-v2.  A pulls
os/stable-v2 from B with ``lanshare pull --from``, so A's index holds B as a real peer with bytes
received and a finished transfer.  Discovery does not feed the daemon's peer table yet, so a second,
hostile peer row is written into A's index the way the daemon records peers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from xml.etree import ElementTree

import jsonschema
import pytest
from playwright.sync_api import Browser, Playwright, sync_playwright
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from lanshare.config import ListenAddress, load_config
from lanshare.index.db import open_index
from lanshare.index.models import Peer, utcnow
from lanshare.pull.records import Recorder
from lanshare.status import model
from lanshare.status.app import STATUS_ADDRESS_FILE
from lanshare.status.model import SCHEMA_FILE
from lanshare.status.page import render_page
from lanshare.status.svg import chain_svg
from tests.conftest import build_tree
from tests.test_ostree_oracle import lanshare_commit
from tests.test_serve import SOURCE_ROOT, Daemon, _start, _stop

CHROMIUM = Path("/usr/bin/chromium")
HOSTILE_SUBJECT = "<script>window.__pwned = 1</script> fix <b>boot</b>"
HOSTILE_PEER = '<img src=x onerror="window.__pwned=2">peer'
HOSTILE_ERROR = "peer said <script>window.__pwned = 3</script>"


@dataclass
class Fleet:
    """Daemon A (the one whose status is checked) and its peer B."""

    a: Daemon
    b: Daemon
    config: Path  # A's configuration file
    env: dict[str, str]  # A's environment (state directory)
    commits: dict[str, str]
    status: str  # A's status listener, http://host:port
    b_status: str


def _status_url(daemon: Daemon) -> str:
    """The daemon's status listener, once up (it starts just after the LAN listener _start waits for)."""
    address = daemon.state / STATUS_ADDRESS_FILE
    deadline = time.monotonic() + 30
    while not address.exists():
        assert daemon.proc.poll() is None and time.monotonic() < deadline, daemon.log.read_text()
        time.sleep(0.05)
    return "http://" + address.read_text().strip()


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def _get_json(url: str) -> Any:
    status, content_type, body = _get(url)
    assert status == 200 and content_type.startswith("application/json"), (status, body)
    return json.loads(body)


def _settled_status(url: str) -> Any:
    """The status once the retention plan covers the refs held now (it runs in the background)."""
    deadline = time.monotonic() + 60
    while True:
        status = _get_json(url + "/api/v1/status")
        retention = status["retention"]
        if retention["current"] and not retention["pending"]:
            return status
        assert time.monotonic() < deadline, retention
        time.sleep(0.2)


def _saved_percent(status: Any) -> float:
    """What the page should say: the peers' share of every byte pulled."""
    from_peers: int = status["savings"]["from_peers_bytes"]
    return round(100 * from_peers / (from_peers + ORIGIN_BYTES), 1)


def _send_malformed(lan_url: str) -> None:
    """A header aiohttp cannot parse: the LAN listener logs one WARNING about it."""
    parts = urlsplit(lan_url)
    assert parts.hostname is not None and parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n<script>: y\r\n\r\n")
        assert s.recv(4096).split(b" ")[1] == b"400"


ORIGIN_BYTES = 4096


async def _pull_under_way(engine: Engine, commit: str) -> None:
    recorder = Recorder(engine)
    await recorder.start(commit, "os/stable-v2", "origin")
    await recorder.progress(5, 20, ORIGIN_BYTES, force=True)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    base = tmp_path_factory.mktemp("status")
    repo_a, repo_b = base / "repo-a", base / "repo-b"
    trees = [build_tree(base / f"tree{n}", n) for n in range(1, 6)]
    commits = {
        "v1": lanshare_commit(
            repo_a, "os/stable", trees[0], "--collection-id", "org.example.Os", "--version", "1.0",
            "--subject", HOSTILE_SUBJECT,
        )
    }  # fmt: skip
    commits["v2"] = lanshare_commit(repo_a, "os/stable", trees[1], "--version", "2.0", "--checkpoint")
    commits["v3"] = lanshare_commit(
        repo_a, "os/stable", trees[2], "--version", "3.0", "--checkpoint-target", "os/stable-v2"
    )
    commits["v4"] = lanshare_commit(
        repo_a, "os/stable-v2", trees[3], "--version", "4.0", "--parent", "none",
        "--checkpoint-source", f"os/stable@{commits['v3']}",
    )  # fmt: skip
    shutil.copytree(repo_a, repo_b, symlinks=True)
    commits["v5"] = lanshare_commit(repo_b, "os/stable-v2", trees[4], "--version", "5.0")
    deployed = base / "deployed-commit"
    deployed.write_text(commits["v1"] + "\n")
    extra = (
        f'\n[origin]\nrefs = ["os/stable"]\n[trust]\nrequire_signatures = false\n'
        f'[upgrade]\ndeployed_commit_file = "{deployed}"\n[retention]\nmax_size = "1GiB"\n'
        '[[pin]]\nref = "os/stable-v2"\nreason = "lab <b>machines</b>"\n'
    )
    (base / "b").mkdir()
    b = _start(base / "b", repo_b)
    (base / "a").mkdir()
    a = _start(base / "a", repo_a, extra)
    try:
        env = {**os.environ, "LANSHARE_STATE_DIR": str(a.state)}
        config = base / "a" / "lanshare.toml"
        pulled = subprocess.run(
            [sys.executable, "-m", "lanshare.cli", "pull", "os/stable-v2", "--from", b.url,
             "--config", config],
            cwd=SOURCE_ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert pulled.returncode == 0, pulled.stderr
        # A peer as the daemon records one (node id from its advert, untrusted text), failing
        # and backed off: the page must show it escaped and marked unhealthy.
        engine = open_index(load_config(config, env).database.url)
        with Session(engine) as session, session.begin():
            session.add(
                Peer(
                    node_id=HOSTILE_PEER, addresses=["192.0.2.7"], port=8089, healthy=False, failures=3,
                    backoff_until=utcnow().replace(year=utcnow().year + 1), bytes_in=0, bytes_out=0,
                    holdings={"os/stable": commits["v3"]},
                )
            )  # fmt: skip
        # A pull from the origin under way, recorded by the pull engine's own bookkeeping.
        asyncio.run(_pull_under_way(engine, commits["v5"]))
        engine.dispose()
        _send_malformed(a.url)
        yield Fleet(a, b, config, env, commits, _status_url(a), _status_url(b))
    finally:
        assert _stop(a) == 0, a.log.read_text()
        assert _stop(b) == 0, b.log.read_text()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is not installed (.ci/setup installs it)")
    playwright: Playwright = sync_playwright().start()
    try:
        # Debian's browser, never one Playwright downloads; no sandbox as root in a container.
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()
    finally:
        playwright.stop()


def _is_utc_time(value: object) -> bool:
    # jsonschema checks "date-time" only when an optional package is installed: check it here.
    return not isinstance(value, str) or dt.datetime.fromisoformat(value).utcoffset() == dt.timedelta(0)


def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    formats = jsonschema.FormatChecker(formats=())
    formats.checks("date-time", raises=ValueError)(_is_utc_time)
    return cls(schema, format_checker=formats)


def test_api_status_matches_its_schema_and_describes_the_chain(fleet: Fleet) -> None:
    status = _settled_status(fleet.status)
    _validator().validate(status)
    c = fleet.commits
    assert status["node_id"] == (fleet.a.state / "node-id").read_text().strip()
    deployed = status["deployed"]
    assert deployed["commit"] == c["v1"] and deployed["ref"] == "os/stable"
    # v1 → checkpoint v2 → v3 (switch) → newest on os/stable-v2, which A pulled from B.
    assert [s["commit"] for s in deployed["path"]["steps"]] == [c["v2"], c["v3"], c["v5"]]
    assert [r["name"] for r in status["refs"]] == ["os/stable", "os/stable-v2"]
    assert status["refs"][0]["configured"] and not status["refs"][1]["configured"]
    chain = {commit["checksum"]: commit for commit in status["chain"]["commits"]}
    assert set(chain) == {c[v] for v in ("v1", "v2", "v3", "v4", "v5")}
    assert chain[c["v2"]]["checkpoint"] and chain[c["v3"]]["target"] == "os/stable-v2"
    assert chain[c["v1"]]["deployed"] and chain[c["v5"]]["path_step"] == 3
    assert "checkpoint on os/stable" in chain[c["v2"]]["kept"]
    assert any("lab <b>machines</b>" in reason for reason in chain[c["v4"]]["kept"])
    assert status["chain"]["switches"] == [
        {"from_ref": "os/stable", "from_commit": c["v3"], "to_ref": "os/stable-v2", "to_commit": c["v4"]}
    ]
    assert status["pins"] == [
        {"ref_glob": "os/stable-v2", "commit": None, "reason": "lab <b>machines</b>", "source": "config"}
    ]
    disk = status["disk"]
    assert disk["max_bytes"] == 1024**3 and 0 < disk["used_bytes"] == disk["kept_bytes"]
    # B served everything of the finished pull; the one under way gets its bytes from the origin.
    b_node = (fleet.b.state / "node-id").read_text().strip()
    peers = {p["node_id"]: p for p in status["peers"]}
    assert peers[b_node]["health"] == "healthy" and peers[b_node]["bytes_in"] > 0
    assert peers[HOSTILE_PEER]["health"] == "backing off"
    savings = status["savings"]
    assert savings["from_peers_bytes"] == peers[b_node]["bytes_in"]
    assert savings["from_origin_bytes"] == ORIGIN_BYTES
    assert savings["saved_percent"] == _saved_percent(status)
    running, done = status["transfers"]
    assert (running["state"], running["source"], running["progress"]) == ("running", "origin", 0.25)
    assert (running["objects_done"], running["objects_total"]) == (5, 20)
    assert done["state"] == "done" and done["commit"] == c["v5"] and done["progress"] == 1.0
    assert "leased by a pull in progress" in chain[c["v5"]]["kept"]
    (warning,) = status["errors"]["recent"]
    assert warning["level"] == "WARNING" and "malformed request (400)" in warning["message"]
    assert status["errors"]["totals"] == {"WARNING": 1}


def test_metrics_parse_and_agree_with_the_status(fleet: Fleet) -> None:
    status = _settled_status(fleet.status)
    code, content_type, text = _get(fleet.status + "/metrics")
    assert code == 200 and content_type.startswith("text/plain; version=0.0.4")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    families = {family.name for family in text_string_to_metric_families(text)}
    assert families >= {
        "lanshare_info", "lanshare_repo_bytes", "lanshare_repo_max_bytes", "lanshare_repo_evictable_bytes",
        "lanshare_commits", "lanshare_checkpoints", "lanshare_refs", "lanshare_pins",
        "lanshare_update_path_steps", "lanshare_peers", "lanshare_peer_received_bytes",
        "lanshare_peer_sent_bytes", "lanshare_transfers", "lanshare_pulled_bytes", "lanshare_served_bytes",
        "lanshare_served_requests", "lanshare_log_messages",
    }  # fmt: skip
    assert samples[("lanshare_repo_bytes", ())] == status["disk"]["used_bytes"] > 0
    assert samples[("lanshare_repo_max_bytes", ())] == 1024**3
    assert samples[("lanshare_checkpoints", ())] == 2
    assert samples[("lanshare_update_path_steps", ())] == 3
    assert samples[("lanshare_commits", (("fate", "kept"),))] == 5
    assert samples[("lanshare_peers", (("health", "healthy"),))] == 1
    assert samples[("lanshare_peers", (("health", "backing off"),))] == 1
    received = samples[("lanshare_pulled_bytes_total", (("source", "peers"),))]
    assert received > 0 and samples[("lanshare_pulled_bytes_total", (("source", "origin"),))] == ORIGIN_BYTES
    assert samples[("lanshare_transfers", (("state", "running"),))] == 1
    assert samples[("lanshare_log_messages_total", (("level", "WARNING"),))] >= 1
    # B's own metrics: its LAN listener served A's pull (zstd-compressed batches, so fewer bytes on
    # the wire than A stored).
    b_samples = {
        s.name: s.value
        for f in text_string_to_metric_families(_get(fleet.b_status + "/metrics")[2])
        for s in f.samples
    }
    assert b_samples["lanshare_served_bytes_total"] > 0
    assert b_samples["lanshare_served_requests_total"] >= 1


def test_chain_svg_alone(fleet: Fleet) -> None:
    code, content_type, svg = _get(fleet.status + "/chain.svg")
    assert code == 200 and content_type.startswith("image/svg+xml")
    root = ElementTree.fromstring(svg)
    commits = root.findall(".//{http://www.w3.org/2000/svg}g[@data-commit]")
    assert {g.get("data-commit") for g in commits} == set(fleet.commits.values())


def test_the_lan_listener_exposes_none_of_it(fleet: Fleet) -> None:
    for path in ("api/v1/status", "metrics", "chain.svg"):
        code, _, body = _get(fleet.a.url + path)
        assert code == 404, (path, code)
        assert fleet.commits["v1"] not in body
    # The status listener itself answers only for its own address or localhost (DNS rebinding).
    code, _, _ = _get(fleet.status + "/api/v1/status", {"Host": "evil.example:80"})
    assert code == 421
    port = urlsplit(fleet.status).port
    assert _get(f"http://localhost:{port}/metrics")[0] == 200


def test_status_page_in_chromium(fleet: Fleet, browser: Browser, tmp_path: Path) -> None:
    c = fleet.commits
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    _settled_status(fleet.status)
    response = page.goto(fleet.status + "/")
    assert response is not None and response.status == 200
    screenshot = tmp_path / "status-page.png"
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"status page screenshot: {screenshot}")

    assert page.inner_text("#deployed").startswith(f"Deployed: {c['v1']} on os/stable")
    path_rows = page.locator("#path tbody tr")
    assert path_rows.count() == 3
    assert [path_rows.nth(i).locator("code").get_attribute("title") for i in range(3)] == [
        c["v2"], c["v3"], c["v5"],
    ]  # fmt: skip
    assert "switched from os/stable" in path_rows.nth(2).inner_text()

    svg = page.locator("#chain svg.chain")
    assert svg.is_visible()
    drawn = {g.get_attribute("data-commit"): g for g in svg.locator("g.commit").all()}
    assert set(drawn) == {c[v] for v in ("v1", "v2", "v3", "v4", "v5")}
    # The picture reads left to right in history order, across the ref switch.
    left = {commit: box["x"] for commit, g in drawn.items() if (box := g.bounding_box()) is not None}
    assert sorted(left, key=lambda commit: left[commit]) == [c[v] for v in ("v1", "v2", "v3", "v4", "v5")]
    checkpoints = {g.get_attribute("data-commit") for g in svg.locator("g.checkpoint").all()}
    assert checkpoints == {c["v2"], c["v3"]}
    assert svg.locator("g.checkpoint polygon").count() == 2  # drawn as diamonds
    assert svg.locator(f'g.deployed[data-commit="{c["v1"]}"] circle.deployed-ring').count() == 1
    steps = {
        g.get_attribute("data-commit"): g.locator("text.step").text_content()
        for g in svg.locator("g.on-path").all()
    }
    assert steps == {c["v2"]: "1", c["v3"]: "2", c["v5"]: "3"}
    switch = svg.locator("path.switch")
    assert switch.count() == 1
    assert switch.get_attribute("data-from") == "os/stable"
    assert switch.get_attribute("data-to") == "os/stable-v2"
    assert svg.locator("text.lane").all_text_contents() == ["os/stable", "os/stable-v2"]

    b_node = (fleet.b.state / "node-id").read_text().strip()
    peers = page.inner_text("#peers")
    assert b_node in peers and HOSTILE_PEER in peers and "backing off" in peers
    status = _get_json(fleet.status + "/api/v1/status")
    assert f"{_saved_percent(status):.1f}% of pulled bytes came from peers" in page.inner_text("#savings")
    assert page.locator("#transfers .bar.done").count() == 1
    assert page.locator("#transfers .bar.running").get_attribute("aria-valuenow") == "25"
    assert "5 of 20 objects" in page.inner_text("#transfers .bar.running")
    assert page.locator("#disk .bar").get_attribute("aria-valuenow") == "0"
    assert "lab <b>machines</b>" in page.inner_text("#pins")

    # Hostile text shows as text: no element or script came from it.
    assert HOSTILE_SUBJECT in page.inner_text("#kept")
    assert "malformed request (400)" in page.inner_text("#errors")
    assert page.evaluate("window.__pwned") is None
    assert page.locator("script").count() == 0 and page.locator("#peers img").count() == 0
    assert page.locator("#pins b").count() == 0

    hosts = {urlsplit(url).hostname for url in requested}
    assert requested and hosts == {"127.0.0.1"}, requested
    page.close()


def test_raw_html_escapes_hostile_text(fleet: Fleet) -> None:
    code, content_type, html = _get(fleet.status + "/")
    assert code == 200 and content_type.startswith("text/html")
    assert "<script" not in html.lower() and "onerror=" not in html.replace("onerror=&quot;", "")
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in html
    assert '<meta http-equiv="refresh"' in html
    # Nothing the browser would fetch from elsewhere.
    links = re.findall(r'(?:href|src|action)="([^"]*)"', html)
    assert links and all(link.startswith("/") for link in links), links
    assert "@import" not in html and "url(http" not in html


def test_cli_status_summary_and_json(fleet: Fleet) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lanshare.cli", "status", "--config", str(fleet.config), *args],
            cwd=SOURCE_ROOT, env=fleet.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    text = run()
    assert text.returncode == 0, text.stderr
    c = fleet.commits
    assert f"deployed: {c['v1'][:12]} on os/stable" in text.stdout
    assert f"3. {c['v5'][:12]}  os/stable-v2" in text.stdout
    saved = _saved_percent(_get_json(fleet.status + "/api/v1/status"))
    assert f"pulled: {saved:.1f}% from peers" in text.stdout
    assert "transfers running: 1" in text.stdout
    as_json = run("--json")
    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    _validator().validate(document)
    assert document["deployed"]["path"]["final"] == c["v5"]


def test_cli_status_without_a_daemon_says_so(tmp_path: Path) -> None:
    config = tmp_path / "lanshare.toml"
    config.write_text('[sharing]\nlisten = "127.0.0.1:0"\n')
    env = {**os.environ, "LANSHARE_STATE_DIR": str(tmp_path / "state")}
    result = subprocess.run(
        [sys.executable, "-m", "lanshare.cli", "status", "--config", str(config)],
        cwd=SOURCE_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("lanshare: error: the daemon is not running (")
    assert "lanshare serve" in result.stderr and len(result.stderr.splitlines()) == 1
    # A stale address file (the daemon was killed): the same message, naming the address tried.
    (tmp_path / "state").mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "state" / STATUS_ADDRESS_FILE).write_text(f"127.0.0.1:{port}\n")
    result = subprocess.run(
        [sys.executable, "-m", "lanshare.cli", "status", "--config", str(config)],
        cwd=SOURCE_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"lanshare: error: the daemon is not running (nothing answers at http://127.0.0.1:{port}/"
    )


def test_a_daemon_on_a_free_lan_port_gets_a_free_status_port(tmp_path: Path) -> None:
    config = tmp_path / "lanshare.toml"
    config.write_text('[sharing]\nlisten = "127.0.0.1:0"\n')
    loaded = load_config(config, {"LANSHARE_STATE_DIR": str(tmp_path)})
    assert loaded.status.listen == ListenAddress("127.0.0.1", 0)
    config.write_text('[sharing]\nlisten = "127.0.0.1:0"\n[status]\nlisten = "127.0.0.1:9191"\n')
    loaded = load_config(config, {"LANSHARE_STATE_DIR": str(tmp_path)})
    assert loaded.status.listen == ListenAddress("127.0.0.1", 9191)


def test_a_hostile_log_message_renders_as_text(fleet: Fleet, browser: Browser) -> None:
    # LAN listener warnings quote no peer text today; a message that does (a pull error quoting a
    # peer's body) must still render as text.  The real snapshot, with such an entry added.
    status = _get_json(fleet.status + "/api/v1/status")
    status["errors"]["recent"].insert(
        0,
        {
            "time": status["generated_at"],
            "level": "ERROR",
            "logger": "lanshare.pull",
            "message": HOSTILE_ERROR,
        },
    )
    page = browser.new_page()
    page.set_content(render_page(status))
    assert HOSTILE_ERROR in page.inner_text("#errors")
    assert page.evaluate("window.__pwned") is None and page.locator("script").count() == 0
    page.close()


def test_an_empty_daemon_reports_what_it_cannot_know(tmp_path: Path) -> None:
    # A process, not daemon.run in this one: the module's Playwright keeps an event loop running here.
    missing = tmp_path / "no-such-file"
    server = _start(tmp_path, tmp_path / "repo", f'[upgrade]\ndeployed_commit_file = "{missing}"\n')
    try:
        url = _status_url(server)
        status = _get_json(url + "/api/v1/status")
        _validator().validate(status)
        assert status["deployed"]["commit"] is None
        assert status["deployed"]["error"].startswith(f"deployed_commit_file {missing} does not exist")
        assert status["refs"] == [] and status["chain"] == {"commits": [], "switches": []}
        assert status["savings"]["saved_percent"] is None and status["peers"] == []
        code, _, html = _get(url + "/")
        assert code == 200 and f"deployed_commit_file {missing} does not exist" in html
        assert "No commits held yet." in html
        code, content_type, svg = _get(url + "/chain.svg")
        assert code == 200 and content_type.startswith("image/svg+xml")
        assert ElementTree.fromstring(svg).tag == "{http://www.w3.org/2000/svg}svg"
    finally:
        assert _stop(server) == 0, server.log.read_text()
    assert not (server.state / STATUS_ADDRESS_FILE).exists()


def test_a_long_history_is_trimmed_with_the_gap_marked() -> None:
    # 40 plain commits and one checkpoint in the middle: the checkpoint, the newest 12 and a
    # dashed link over the 18 in between are drawn (a snapshot's chain, built by hand).
    def commit(n: int) -> dict[str, Any]:
        return {
            "checksum": f"{n:064x}", "ref": "os/stable", "parent": f"{n - 1:064x}" if n else None,
            "timestamp": f"2026-01-01T00:{n:02d}:00+00:00", "version": str(n), "subject": "",
            "checkpoint": n == 10, "target": None, "checkpoint_source": None, "complete": True,
            "kept": ["kept"], "commit_only": [], "evictable": False, "deployed": False, "path_step": None,
        }  # fmt: skip

    chain = {"commits": [commit(n) for n in reversed(range(41))], "switches": []}
    svg = chain_svg(chain, ["os/stable"])
    root = ElementTree.fromstring(svg[: svg.index("</svg>") + 6])
    ns = "{http://www.w3.org/2000/svg}"
    drawn = {int(str(g.get("data-commit")), 16) for g in root.iter(f"{ns}g")}
    assert drawn == {10, *range(29, 41)}
    elided = [line for line in root.iter(f"{ns}line") if line.get("class") == "parent elided"]
    assert [line.findtext(f"{ns}title") for line in elided] == ["18 commits not drawn"]
    assert "28 more commits not drawn" in svg


def test_a_taken_status_port_stops_the_daemon_with_one_line(fleet: Fleet, tmp_path: Path) -> None:
    taken = urlsplit(fleet.status).port
    config = tmp_path / "lanshare.toml"
    config.write_text(
        '[sharing]\nlisten = "127.0.0.1:0"\nadvertise = false\ndiscovery = false\n'
        f'[status]\nlisten = "127.0.0.1:{taken}"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "lanshare.cli", "serve", "--config", str(config)],
        cwd=SOURCE_ROOT, env={**os.environ, "LANSHARE_STATE_DIR": str(tmp_path / "state")},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"lanshare: error: cannot listen on 127.0.0.1:{taken} ([status] listen): "), last
    assert not (tmp_path / "state" / "lan-address").exists()  # the LAN listener it had started is gone


def test_the_deployed_commit_is_read_as_lanshare_upgrade_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = "ab" * 32
    rpm_ostree = {"deployments": [{"booted": True, "checksum": commit, "origin": "fedora:os/stable-v2"}]}
    (tmp_path / "status.json").write_text(json.dumps(rpm_ostree))

    def deployed_by(argv: list[str]) -> dict[str, Any]:
        config = tmp_path / "lanshare.toml"
        config.write_text(f"[upgrade]\ndeployed_commit_command = {json.dumps(argv)}\n")
        return model.read_deployed(load_config(config, {"LANSHARE_STATE_DIR": str(tmp_path)}))

    found = deployed_by(["cat", str(tmp_path / "status.json")])
    assert (found["commit"], found["ref"], found["error"]) == (commit, "os/stable-v2", None)
    assert (
        deployed_by(["sh", "-c", "exit 3"])["error"]
        == "deployed_commit_command sh -c exit 3 exited with status 3"
    )
    # A hung status tool must not hang the page (the page asks again on its next refresh).
    monkeypatch.setattr(model, "_DEPLOYED_COMMAND_TIMEOUT", 0.2)
    hung = deployed_by(["sleep", "30"])
    assert hung["commit"] is None and "timed out after 0.2 seconds" in hung["error"]

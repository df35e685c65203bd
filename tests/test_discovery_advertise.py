"""The daemon's mDNS adverts, seen by independent clients inside network namespaces.

Nothing here touches a real interface: every zeroconf, avahi and libostree process runs in a
namespace the test made (:mod:`tests.netns`).  Clients: a plain python-zeroconf browser
(:mod:`tests.mdns_probe`), Debian's avahi (``avahi-browse``) and libostree's own LAN finder
(``ostree find-remotes --finders=lan --pull``), which also proves the bloom filter bits.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lanshare import daemon
from lanshare.discovery.advertise import AdvertError, resolve_interfaces
from lanshare.discovery.bloom import bloom_contains
from lanshare.discovery.txt import decode_ostree_txt
from lanshare.ostree.repo import Repo
from lanshare.ostree.summary import parse_summary
from lanshare.server.holdings import compute_info
from tests import needs
from tests.conftest import build_tree, ostree
from tests.gpg_fixtures import GpgKeys
from tests.netns import NetnsLan, loopback_host_context, netns_lan_context, require_namespaces
from tests.test_ostree_oracle import lanshare_commit

COLLECTION = "org.example.Os"
LANSHARE = "_lanshare._tcp.local."
OSTREE = "_ostree_repo._tcp.local."


@pytest.fixture
def solo() -> Iterator[NetnsLan]:
    """A namespace with only lo: host "solo"."""
    require_namespaces()
    with loopback_host_context() as lan:
        yield lan


@pytest.fixture
def lan() -> Iterator[NetnsLan]:
    """Hosts a, b, c on a namespace LAN."""
    require_namespaces()
    with netns_lan_context(3) as made:
        yield made


def txt_strings(*items: bytes) -> bytes:
    return b"".join(bytes([len(i)]) + i for i in items)


@dataclass
class Served:
    """A daemon's repository, config and state directory (the daemon runs in a namespace)."""

    base: Path
    repo: Path
    config: Path
    state: Path

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "LANSHARE_STATE_DIR": str(self.state)}

    def node_id(self) -> str:
        return (self.state / daemon.NODE_ID_FILE).read_text().strip()

    def port(self) -> int:
        return int((self.state / daemon.LAN_ADDRESS_FILE).read_text().strip().rsplit(":", 1)[1])


def make_served(base: Path, sharing: str, *commit_args: str) -> Served:
    repo = base / "repo"
    lanshare_commit(
        repo, "os/stable", build_tree(base / "tree1", 1), "--collection-id", COLLECTION, *commit_args
    )
    config = base / "lanshare.toml"
    config.write_text(
        f'[repo]\npath = "{repo}"\n[sharing]\nlisten = "0.0.0.0:0"\ndiscovery = false\n{sharing}'
    )
    return Served(base, repo, config, base / "state")


def start_daemon(lan: NetnsLan, host: str, served: Served) -> subprocess.Popen[bytes]:
    log = open(served.base / "serve.log", "ab")  # noqa: SIM115 - the daemon writes it until it stops
    proc = lan.python(
        host, "-m", "lanshare.cli", "serve", "--config", str(served.config),
        env=served.env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    address = served.state / daemon.LAN_ADDRESS_FILE
    deadline = time.monotonic() + 60
    while not address.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"lanshare serve did not start:\n{(served.base / 'serve.log').read_text()}")
        time.sleep(0.05)
    return proc


class Probe:
    """tests.mdns_probe running in a namespace; its events, matched in any order they arrive."""

    def __init__(self, lan: NetnsLan, host: str, interface: str) -> None:
        self.proc = lan.python(
            host, "-m", "tests.mdns_probe", "--interface", interface, LANSHARE, OSTREE,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.backlog: list[dict[str, Any]] = []
        self.wait_for("ready")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put("")

    def wait_for(self, event: str, type_: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
        """The first event of that kind (and service type) seen so far or within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            for seen in self.backlog:
                if seen["event"] == event and type_ in (None, seen.get("type")):
                    self.backlog.remove(seen)
                    return seen
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"mdns_probe saw no {event} {type_ or ''} in {timeout:.0f} s: {self.backlog}")
            if not line:
                pytest.fail(f"mdns_probe exited ({self.proc.wait()}) before {event} {type_ or ''}")
            self.backlog.append(json.loads(line))

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)
        self._reader.join(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def expected_lanshare_txt(served: Served) -> bytes:
    """The exact TXT the daemon must send, written out field by field from the info document."""
    info = compute_info(Repo.open(served.repo), served.node_id())
    items = [b"v=1", f"n={served.node_id()}".encode(), f"c={COLLECTION}".encode()]
    items.append(f"h={info['holdings_digest'][:32]}".encode())
    if info["newest_checkpoint"] is not None:
        items.append(f"cp={info['newest_checkpoint']}".encode())
    return txt_strings(*items)


def check_ostree_txt(served: Served, raw: bytes) -> None:
    summary = parse_summary((served.repo / "summary").read_bytes())
    assert summary.last_modified is not None
    txt = decode_ostree_txt(raw)
    assert raw.startswith(txt_strings(b"v=\x01"))
    assert txt_strings(b"st=" + struct.pack(">Q", summary.last_modified)) in raw
    assert raw.endswith(txt_strings(b"ri=\x00\x00"))
    assert txt.hash_id == 1 and txt.repo_index == 0
    assert bloom_contains(txt.bloom, txt.k, (COLLECTION, "os/stable"))


def test_loopback_adverts_txt_updates_and_goodbye(tmp_path: Path, solo: NetnsLan) -> None:
    served = make_served(tmp_path, 'interfaces = ["lo"]\n', "--checkpoint")
    probe = Probe(solo, "solo", "127.0.0.1")
    proc = start_daemon(solo, "solo", served)
    try:
        seen = {e["type"]: e for e in (probe.wait_for("added", t) for t in (LANSHARE, OSTREE))}
        name = f"lanshare-{served.node_id()}"
        for type_ in (LANSHARE, OSTREE):
            assert seen[type_]["name"] == f"{name}.{type_}"
            assert seen[type_]["port"] == served.port()
            assert seen[type_]["addresses"] == ["127.0.0.1"]
        first = expected_lanshare_txt(served)
        assert bytes.fromhex(seen[LANSHARE]["txt"]) == first
        assert b"cp=" in first  # the checkpoint commit is advertised
        check_ostree_txt(served, bytes.fromhex(seen[OSTREE]["txt"]))

        # A new commit changes the holdings: the advert is re-announced with the new digest.
        lanshare_commit(served.repo, "os/stable", build_tree(tmp_path / "tree2", 2))
        updated = probe.wait_for("updated", LANSHARE)
        assert bytes.fromhex(updated["txt"]) == expected_lanshare_txt(served) != first

        # SIGTERM: both adverts say goodbye before the daemon exits.
        proc.send_signal(signal.SIGTERM)
        removed = {probe.wait_for("removed", t)["name"] for t in (LANSHARE, OSTREE)}
        assert removed == {f"{name}.{LANSHARE}", f"{name}.{OSTREE}"}
        assert proc.wait(30) == 0
    finally:
        probe.close()


PAUSABLE = """
import asyncio, sys
from pathlib import Path
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncZeroconf
from lanshare.discovery.advertise import Advertiser
from lanshare.ostree.repo import Repo
from lanshare.server.holdings import Holdings

async def main():
    repo = Repo.open(Path(sys.argv[1]))
    node = "ab" * 16
    zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    advertiser = Advertiser(zc, Holdings(repo, node), repo, node, 8089, ["127.0.0.1"])
    await advertiser.start()
    print("started", flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        await advertiser.set_paused(line.strip() == "pause")
        print("done", flush=True)
    await advertiser.stop()
    await zc.async_close()

asyncio.run(main())
"""


def test_adverts_are_withdrawn_while_sharing_is_paused(tmp_path: Path, solo: NetnsLan) -> None:
    """The SharingSwitch listener: paused (battery, metered) sends goodbyes; resumed announces again."""
    served = make_served(tmp_path, "")
    probe = Probe(solo, "solo", "127.0.0.1")
    proc = solo.python(
        "solo", "-c", PAUSABLE, served.repo, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == "started\n"
        for type_ in (LANSHARE, OSTREE):
            probe.wait_for("added", type_)
        for command, event in (("pause", "removed"), ("resume", "added")):
            proc.stdin.write(command + "\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == "done\n"
            for type_ in (LANSHARE, OSTREE):
                assert probe.wait_for(event, type_)["name"] == f"lanshare-{'ab' * 16}.{type_}"
        proc.stdin.close()
        assert proc.wait(30) == 0
        for type_ in (LANSHARE, OSTREE):
            probe.wait_for("removed", type_)
    finally:
        probe.close()
        proc.stdout.close()


def test_an_unknown_interface_stops_the_daemon_with_one_line(tmp_path: Path, solo: NetnsLan) -> None:
    served = make_served(tmp_path, 'interfaces = ["wlan7"]\n')
    done = solo.run(
        "solo", [sys.executable, "-m", "lanshare.cli", "serve", "--config", served.config],
        check=False, env=served.env,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "[sharing] interfaces: no network interface named wlan7 (this machine has lo)" in done.stderr


def test_resolve_interfaces_advertises_the_listen_address_or_non_loopback_ones() -> None:
    # Reads the interface list only: nothing is bound or sent.
    with pytest.raises(AdvertError, match="no network interface named no-such-if0"):
        resolve_interfaces(["no-such-if0"], "0.0.0.0")
    assert resolve_interfaces(["lo"], "0.0.0.0").advertised == ["127.0.0.1"]
    assert resolve_interfaces([], "192.0.2.7").advertised == ["192.0.2.7"]
    everywhere = resolve_interfaces([], "0.0.0.0").advertised
    # Loopback only when the machine has nothing else: a peer resolving 127.0.0.1 reaches itself.
    assert everywhere == ["127.0.0.1"] or not any(a.startswith("127.") for a in everywhere)


def test_a_new_address_is_announced(tmp_path: Path, lan: NetnsLan) -> None:
    """The machine moves to another address (DHCP, another network): peers learn the new one."""
    served = make_served(tmp_path, "")
    probe = Probe(lan, "c", lan["c"].address)
    proc = start_daemon(lan, "a", served)
    try:
        assert probe.wait_for("added", LANSHARE)["addresses"] == [lan["a"].address]
    finally:
        probe.close()
    # The new address first, then the old one goes (promoted, not deleted with its primary).
    lan.run("a", ["sh", "-c", "echo 1 > /proc/sys/net/ipv4/conf/eth0/promote_secondaries"])
    lan.run("a", ["ip", "addr", "add", "10.123.0.21/24", "dev", "eth0"])
    lan.run("a", ["ip", "addr", "del", f"{lan['a'].address}/24", "dev", "eth0"])
    log = served.base / "serve.log"
    deadline = time.monotonic() + 30
    while "mDNS addresses changed from 10.123.0.1 to 10.123.0.21" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    # A browser that starts now is answered with the new address only.
    probe = Probe(lan, "b", lan["b"].address)
    try:
        assert probe.wait_for("added", LANSHARE)["addresses"] == ["10.123.0.21"]
        proc.send_signal(signal.SIGTERM)
        probe.wait_for("removed", LANSHARE)  # the goodbye goes out on the new address's socket
        assert proc.wait(30) == 0
    finally:
        probe.close()


# --- avahi in the namespace LAN ---------------------------------------------------------------

DBUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/><allow own="*"/><allow send_destination="*"/><allow receive_sender="*"/>
  </policy>
</busconfig>
"""

# Browse only: avahi publishes nothing of its own, so it cannot collide with anything.
AVAHI_CONF = """[server]
use-ipv4=yes
use-ipv6=no
allow-interfaces=eth0
enable-dbus=yes
[wide-area]
enable-wide-area=no
[publish]
disable-publishing=yes
"""


@dataclass
class Avahi:
    """A private D-Bus system bus and avahi-daemon inside one namespace host."""

    env: dict[str, str]


def start_avahi(lan: NetnsLan, host: str, base: Path) -> Avahi:
    for tool in ("avahi-daemon", "avahi-browse", "dbus-daemon"):
        needs.need_tool(tool)
    base.mkdir(parents=True, exist_ok=True)
    socket = base / "system_bus_socket"
    (base / "dbus.conf").write_text(DBUS_CONF.format(socket=socket))
    (base / "avahi-daemon.conf").write_text(AVAHI_CONF)
    bus_log = open(base / "dbus.log", "wb")  # noqa: SIM115 - dbus-daemon writes it until teardown
    lan.popen(
        host, ["dbus-daemon", f"--config-file={base / 'dbus.conf'}", "--nofork", "--nopidfile"],
        stdout=bus_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    bus_log.close()
    deadline = time.monotonic() + 10
    while not socket.exists():
        assert time.monotonic() < deadline, "dbus-daemon did not start"
        time.sleep(0.02)
    env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={socket}"}
    # avahi-daemon's pid file and socket live at a fixed path: a tmpfs there, private to this
    # process (ip netns exec gives each command its own mount namespace), keeps parallel runs apart.
    command = (
        "mkdir -p /run/avahi-daemon && mount -t tmpfs tmpfs /run/avahi-daemon && "
        f"exec avahi-daemon -f {base / 'avahi-daemon.conf'} --no-drop-root --no-chroot --no-rlimits"
    )
    log = open(base / "avahi.log", "wb")  # noqa: SIM115 - avahi writes it until teardown
    lan.popen(host, ["sh", "-c", command], env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + 15
    while b"Server startup complete" not in (base / "avahi.log").read_bytes():
        assert time.monotonic() < deadline, (base / "avahi.log").read_text()
        time.sleep(0.05)
    return Avahi(env)


def _unescape_avahi(text: str) -> bytes:
    """avahi-browse -p TXT string: \\DDD is a decimal byte, \\X a literal X."""
    out = bytearray()
    for match in re.finditer(r"\\(\d{3})|\\(.)|([^\\])", text, re.S):
        if match.group(1):
            out.append(int(match.group(1)))
        else:
            out += (match.group(2) or match.group(3)).encode()
    return bytes(out)


def avahi_browse(lan: NetnsLan, avahi: Avahi, *args: str) -> list[str]:
    """The lines avahi-browse prints on host c; a browse that failed (no D-Bus, no daemon) fails the test."""
    done = lan.run("c", ["avahi-browse", *args], env=avahi.env, check=False, timeout=30)
    assert done.returncode == 0, f"avahi-browse {' '.join(args)}: exit {done.returncode}: {done.stderr}"
    return list(done.stdout.splitlines())


def avahi_resolved(lan: NetnsLan, avahi: Avahi, type_: str, name: str | None = None) -> dict[str, Any]:
    """The resolved service of ``type_`` (named ``name``) that avahi-browse -rtp reports (retried briefly)."""
    deadline = time.monotonic() + 20
    while True:
        lines = avahi_browse(lan, avahi, "-rtp", type_)
        for line in lines:
            if line.startswith("="):
                fields = line.split(";", 9)
                if name is not None and fields[3] != name:
                    continue
                strings = re.findall(r'"((?:[^"\\]|\\.)*)"', fields[9])
                # avahi lists TXT strings last to first.
                txt = txt_strings(*(_unescape_avahi(s) for s in reversed(strings)))
                return {"name": fields[3], "address": fields[7], "port": int(fields[8]), "txt": txt}
        assert time.monotonic() < deadline, f"avahi-browse found no {type_} {name or ''}: {lines}"


@dataclass
class AvahiLan:
    """A namespace LAN where host a runs a daemon serving signed commits and host c runs avahi."""

    lan: NetnsLan
    avahi: Avahi
    served: Served
    proc: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def avahi_lan(tmp_path_factory: pytest.TempPathFactory, gpg_keys: GpgKeys) -> Iterator[AvahiLan]:
    """One LAN, avahi and daemon for the module's avahi and libostree tests (each starts in ~3 s)."""
    require_namespaces()
    base = tmp_path_factory.mktemp("avahi-lan")
    sign = ["--gpg-sign", gpg_keys.trusted.key_id, "--gpg-homedir", str(gpg_keys.homedir)]
    served = make_served(base / "a", "", *sign)
    with netns_lan_context(3) as lan:
        avahi = start_avahi(lan, "c", base / "avahi")
        yield AvahiLan(lan, avahi, served, start_daemon(lan, "a", served))


def test_avahi_sees_both_adverts_with_the_right_txt(avahi_lan: AvahiLan) -> None:
    lan, avahi, served = avahi_lan.lan, avahi_lan.avahi, avahi_lan.served
    name = f"lanshare-{served.node_id()}"
    lanshare = avahi_resolved(lan, avahi, "_lanshare._tcp")
    assert lanshare == {
        "name": name,
        "address": lan["a"].address,
        "port": served.port(),
        "txt": expected_lanshare_txt(served),
    }
    repo_advert = avahi_resolved(lan, avahi, "_ostree_repo._tcp")
    assert (repo_advert["name"], repo_advert["address"]) == (name, lan["a"].address)
    check_ostree_txt(served, repo_advert["txt"])


def test_libostree_lan_finder_pulls_from_the_advert(
    tmp_path: Path, avahi_lan: AvahiLan, gpg_keys: GpgKeys
) -> None:
    """Stock ``ostree find-remotes --finders=lan --pull`` finds us by the bloom filter and pulls."""
    lan, avahi, signed_served = avahi_lan.lan, avahi_lan.avahi, avahi_lan.served
    avahi_resolved(lan, avahi, "_ostree_repo._tcp")  # advertised and resolvable
    client = tmp_path / "client"
    ostree("init", "--mode=archive", f"--repo={client}", f"--collection-id={COLLECTION}")
    ostree(
        "remote", "add", f"--repo={client}", f"--collection-id={COLLECTION}",
        f"--gpg-import={gpg_keys.trusted.keyring}", "origin", "http://unused.invalid/",
    )  # fmt: skip
    done = lan.run(
        "c",
        ["timeout", "60", "ostree", "find-remotes", f"--repo={client}", "--finders=lan", "--pull", COLLECTION,
         "os/stable"],
        check=False, env=avahi.env, timeout=90,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    pulled = ostree("rev-parse", f"--repo={client}", "origin:os/stable").stdout.strip()
    assert pulled == Repo.open(signed_served.repo).read_ref("os/stable")
    ostree("fsck", f"--repo={client}")

    # A ref we do not hold is not found (the bloom filter, then the summary, say no).
    missing = lan.run(
        "c",
        ["timeout", "60", "ostree", "find-remotes", f"--repo={client}", "--finders=lan", COLLECTION,
         "os/nothing"],
        check=False, env=avahi.env, timeout=90,
    )  # fmt: skip
    assert missing.stdout.strip() == "No results.", missing.stdout + missing.stderr


def test_graceful_stop_is_seen_by_avahi(tmp_path: Path, avahi_lan: AvahiLan) -> None:
    """SIGTERM sends goodbyes that avahi (not only zeroconf) acts on (a daemon of its own, on b)."""
    lan, avahi = avahi_lan.lan, avahi_lan.avahi
    served = make_served(tmp_path / "b", "")
    proc = start_daemon(lan, "b", served)
    try:
        name = f"lanshare-{served.node_id()}"
        avahi_resolved(lan, avahi, "_lanshare._tcp", name)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 30
    while True:
        lines = avahi_browse(lan, avahi, "-tp", "_lanshare._tcp")
        if not any(line.startswith("+") and f";{name};" in line for line in lines):
            break
        assert time.monotonic() < deadline, lines
        time.sleep(0.2)
    # The module's daemon on a is untouched: still seen.
    assert any(line.startswith("+") and ";lanshare-" in line for line in lines), lines

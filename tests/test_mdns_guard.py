"""The suite's guard: nothing a test starts in the machine's own network namespace speaks mDNS there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from zeroconf import InterfaceChoice, Zeroconf

from lanshare.discovery.mdns_guard import GUARD_ENV, HostMdnsForbidden, network_namespace_id
from lanshare.netns import loopback_command
from tests import needs

SOURCE_ROOT = Path(__file__).resolve().parent.parent


def test_the_suite_guards_the_namespace_it_runs_in() -> None:
    assert os.environ[GUARD_ENV] == network_namespace_id() != ""


def test_a_daemon_with_default_mdns_in_the_host_namespace_refuses_to_start(tmp_path: Path) -> None:
    config = tmp_path / "lanshare.toml"
    config.write_text('[sharing]\nlisten = "127.0.0.1:0"\n[status]\nlisten = "127.0.0.1:0"\n')
    result = subprocess.run(
        [sys.executable, "-m", "lanshare.cli", "serve", "--config", str(config)],
        cwd=SOURCE_ROOT, env={**os.environ, "LANSHARE_STATE_DIR": str(tmp_path / "state")},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("lanshare: error: mDNS on") and "advertise = false" in last, last


@pytest.mark.parametrize("interfaces", [InterfaceChoice.All, ["127.0.0.1", "0.0.0.0"]])
def test_a_tests_own_zeroconf_on_real_interfaces_fails(interfaces: object) -> None:
    with pytest.raises(HostMdnsForbidden):
        Zeroconf(interfaces=interfaces)  # type: ignore[arg-type]


def test_inside_a_namespace_the_test_made_every_interface_is_allowed() -> None:
    needs.check("namespaces")
    code = (
        "from zeroconf import InterfaceChoice\n"
        "from lanshare.discovery.mdns_guard import check_mdns_binding\n"
        "check_mdns_binding(InterfaceChoice.All)\n"
        "print('allowed')"
    )
    result = subprocess.run(
        loopback_command([sys.executable, "-c", code]),
        cwd=SOURCE_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout.strip() == "allowed", result.stderr

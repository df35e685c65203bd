"""``lanshare status``: ask the running daemon's status listener for ``/api/v1/status`` and summarise it."""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from typing import Any

from lanshare.cli import EXIT_OK, print_json
from lanshare.config import Config, load_config
from lanshare.errors import Error
from lanshare.units import format_size

TIMEOUT = 30.0


class DaemonNotRunning(Error):
    """No daemon answers on the status listener."""


def status_url(config: Config) -> str:
    """Where the daemon's status listener is: ``<state>/status-address``, else ``[status] listen``."""
    from lanshare.status.address import STATUS_ADDRESS_FILE

    address_file = config.state_dir / STATUS_ADDRESS_FILE
    try:
        address = address_file.read_text().strip()
    except FileNotFoundError:
        if config.status.listen.port == 0:
            raise DaemonNotRunning(
                f"the daemon is not running ({address_file} does not exist); start it with `lanshare serve`"
            ) from None
        address = str(config.status.listen)
    except OSError as e:
        raise Error(f"cannot read {address_file}: {e.strerror or e}") from e
    host, _, port = address.rpartition(":")
    # A wildcard listener is reached through loopback.
    if host in ("0.0.0.0", "[::]"):
        host = "127.0.0.1" if host == "0.0.0.0" else "[::1]"
    return f"http://{host}:{port}/api/v1/status"


def fetch_status(url: str) -> dict[str, Any]:
    """GET the status document."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            data: dict[str, Any] = json.load(response)
    except urllib.error.HTTPError as e:
        raise Error(f"{url} answered {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DaemonNotRunning(
            f"the daemon is not running (nothing answers at {url}: {reason}); start it with `lanshare serve`"
        ) from e
    except ValueError as e:
        raise Error(f"{url} did not answer JSON: {e}") from e
    return data


def _summary(status: dict[str, Any]) -> list[str]:
    lines = [f"node {status['node_id']}  (lanshare {status['version']}, LAN {status['listeners']['lan']})"]
    deployed = status["deployed"]
    if deployed["commit"] is None:
        lines.append(f"deployed: {deployed['error'] or 'unknown ([upgrade] deployed_commit_file not set)'}")
    else:
        lines.append(f"deployed: {deployed['commit'][:12]} on {deployed['ref'] or '?'}")
        if deployed.get("pending"):
            lines.append(f"  reboot needed: {deployed['pending'][:12]} is deployed and pending")
        if deployed["path_error"]:
            lines.append(f"  no update path: {deployed['path_error']}")
        elif deployed["path"] is not None and not deployed["path"]["steps"]:
            lines.append("  up to date")
        elif deployed["path"] is not None:
            for n, step in enumerate(deployed["path"]["steps"], 1):
                lines.append(f"  {n}. {step['commit'][:12]}  {step['ref']}  {step['reason']}")
    for ref in status["refs"]:
        head = ref["head"][:12] if ref["head"] else "not held"
        lines.append(
            f"ref {ref['name']}: {head}  ({ref['commits']} commits, {ref['checkpoints']} checkpoints)"
        )
    disk = status["disk"]
    if disk["used_bytes"] is None:
        used = "not measured yet"
    else:
        used = f"{format_size(disk['used_bytes'])} ({disk['used_fraction'] * 100:.1f}%)"
    lines.append(f"disk: {used} of {format_size(disk['max_bytes'])}, {len(status['pins'])} pins")
    healthy = sum(1 for p in status["peers"] if p["health"] == "healthy")
    running = sum(1 for t in status["transfers"] if t["state"] == "running")
    lines.append(f"peers: {len(status['peers'])} ({healthy} healthy); transfers running: {running}")
    saved = status["savings"]["saved_percent"]
    if saved is not None:
        lines.append(
            f"pulled: {saved:.1f}% from peers ({format_size(status['savings']['total_bytes'])} in all)"
        )
    if status["errors"]["recent"]:
        newest = status["errors"]["recent"][0]
        lines.append(f"last problem: {newest['time']} {newest['level']} {newest['message']}")
    lines.append(f"status page: http://{status['listeners']['status']}/")
    return lines


def run_status(args: argparse.Namespace) -> int:
    """Print the daemon's status: a short summary, or the whole document with ``--json``."""
    status = fetch_status(status_url(load_config(args.config)))
    if args.json:
        print_json(status)
    else:
        print("\n".join(_summary(status)))
    return EXIT_OK

"""The deployed commit: what the machine runs, what is pending, read from a deployment tool's output.

Three formats: a bare checksum, ``rpm-ostree status --json`` and ``ostree admin status``.  The
booted deployment is the deployed one; with nothing booted (an image build, an offline sysroot) the
default deployment, the first one listed, is, and the note says so.  A deployment listed before the
booted one is pending: deployed, waiting for the next boot.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from lanshare.ostree.objects import is_checksum

# How many lines of unparseable output an error quotes.
QUOTED_LINES = 4
NOTHING_BOOTED = "nothing is booted: the default (first) deployment counts as deployed"


@dataclass(frozen=True)
class Deployed:
    """The commit the machine runs, the ref its deployment follows (when the tool says), and where from.

    ``pending`` is a commit deployed but not booted yet (the next boot's); ``note`` a remark worth
    showing (nothing booted)."""

    commit: str
    ref: str | None
    source: str
    pending: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class Deployment:
    """One line of ``ostree admin status`` with its details."""

    osname: str
    commit: str
    serial: int
    booted: bool
    flags: tuple[str, ...]  # "pending", "rollback", "staged"
    version: str | None
    refspec: str | None

    @property
    def pending(self) -> bool:
        return "pending" in self.flags or "staged" in self.flags


def refspec_ref(refspec: object) -> str | None:
    """``remote:ref`` or ``ref`` → ``ref`` (OSTree refs cannot contain ":")."""
    if not isinstance(refspec, str) or not refspec:
        return None
    return refspec.rpartition(":")[2] or None


def quote(text: str) -> str:
    """The first lines of ``text``, for an error saying what was got instead."""
    lines = [line.rstrip() for line in text.strip().splitlines()]
    if not lines:
        return "got no output"
    shown = " | ".join(repr(line) for line in lines[:QUOTED_LINES])
    more = f" (+{len(lines) - QUOTED_LINES} more lines)" if len(lines) > QUOTED_LINES else ""
    return f"got {shown}{more}"


# "* debian 1a2b….0 (pending)": a mark, the osname, CHECKSUM.SERIAL, flags in parentheses.
_DEPLOYMENT_RE = re.compile(r"([* ]) (\S+) ([0-9a-f]{64})\.([0-9]+)((?: \([a-z-]+\))*)\s*")


def parse_ostree_admin(text: str) -> list[Deployment]:
    """The deployments in ``ostree admin status`` output, in its order; ValueError quoting it."""
    deployments: list[Deployment] = []
    details: dict[str, str] = {}
    head: re.Match[str] | None = None

    def close() -> None:
        if head is not None:
            flags = tuple(f.strip(" ()") for f in head[5].split(")") if f.strip(" ()"))
            deployments.append(
                Deployment(
                    head[2],
                    head[3],
                    int(head[4]),
                    head[1] == "*",
                    flags,
                    details.get("Version"),
                    details.get("origin refspec"),
                )
            )

    for line in text.splitlines():
        match = _DEPLOYMENT_RE.fullmatch(line)
        if match is not None:
            close()
            head, details = match, {}
        elif head is not None and line.startswith("    "):
            key, _, value = line.strip().partition(":")
            details.setdefault(key, value.strip())
    close()
    if not deployments:
        raise ValueError(
            "expected a bare checksum, `rpm-ostree status --json` output or `ostree admin status` output "
            f"listing deployments like '* OS CHECKSUM.SERIAL'; {quote(text)}"
        )
    return deployments


def from_deployments(deployments: list[Deployment], source: str) -> Deployed:
    """The booted deployment (else the first), and the pending one when something is booted."""
    booted = [d for d in deployments if d.booted]
    current = booted[0] if booted else deployments[0]
    pending = next((d.commit for d in deployments if d.pending and not d.booted), None)
    note = None if booted else NOTHING_BOOTED
    return Deployed(current.commit, refspec_ref(current.refspec), source, pending if booted else None, note)


def _parse_rpm_ostree(text: str, source: str) -> Deployed:
    try:
        status = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"looks like JSON but is not valid ({e})") from None
    deployments = status.get("deployments") if isinstance(status, dict) else None
    if not isinstance(deployments, list):
        raise ValueError('JSON without a "deployments" list: expected `rpm-ostree status --json` output')
    # The booted deployment, not the staged one: a checkpoint counts as deployed only once the
    # machine has booted into it, so running again before the reboot finds it pending.
    entries = [d for d in deployments if isinstance(d, dict)]
    booted = [d for d in entries if d.get("booted") is True]
    if not booted:
        raise ValueError("no deployment is marked booted in the rpm-ostree status")

    def checksum(entry: dict[str, object]) -> object:
        # With layered packages "checksum" is a local commit on top of "base-checksum", the one on the ref.
        return entry.get("base-checksum") or entry.get("checksum")

    commit = checksum(booted[0])
    if not isinstance(commit, str) or not is_checksum(commit):
        raise ValueError("the booted deployment has no 64-hex checksum")
    first = checksum(entries[0]) if entries[0] is not booted[0] else None
    pending = first if isinstance(first, str) and is_checksum(first) else None
    return Deployed(commit, refspec_ref(booted[0].get("origin")), source, pending)


def parse_status(text: str, source: str) -> Deployed:
    """The deployed commit in a checksum, ``rpm-ostree status --json`` or ``ostree admin status``.

    Raises ValueError saying what was expected and quoting what was got.
    """
    stripped = text.strip()
    if is_checksum(stripped):
        return Deployed(stripped, None, source)
    if stripped.startswith("{"):
        return _parse_rpm_ostree(stripped, source)
    return from_deployments(parse_ostree_admin(text), source)

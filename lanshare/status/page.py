"""The status page: one server-rendered HTML document, readable at a glance, offline, no scripts.

Everything shown that came from outside (ref names, subjects, peer ids, error messages) goes
through :func:`html.escape`; table cells are escaped unless wrapped in :class:`Html`, which only
this module builds.  The page reloads itself with a ``<meta http-equiv="refresh">``.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any

from lanshare.status.svg import SVG_STYLE, chain_svg, drawn_commits
from lanshare.units import format_size

REFRESH_SECONDS = 10


@dataclass(frozen=True)
class Html:
    """Markup built here from escaped parts: inserted as is."""

    text: str


Cell = str | int | float | None | Html


def _cell(value: Cell) -> str:
    if isinstance(value, Html):
        return value.text
    return escape("" if value is None else str(value))


def _table(table_id: str, headers: list[str], rows: list[list[Cell]], empty: str) -> str:
    if not rows:
        return f'<p class="empty" id="{table_id}">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _code(checksum: str | None, length: int = 12) -> Html:
    if not checksum:
        return Html("—")
    return Html(f'<code title="{escape(checksum)}">{escape(checksum[:length])}</code>')


def _bar(fraction: float | None, text: str, css: str = "") -> Html:
    width = 0.0 if fraction is None else max(0.0, min(fraction, 1.0)) * 100
    return Html(
        f'<div class="bar {escape(css)}" role="progressbar" aria-valuenow="{width:.0f}" aria-valuemin="0" '
        f'aria-valuemax="100"><div class="fill" style="width:{width:.1f}%"></div>'
        f"<span>{escape(text)}</span></div>"
    )


def _when(iso: str | None) -> Html:
    """An ISO 8601 UTC time shown to the second, the full value on hover."""
    if not iso:
        return Html("—")
    short = iso[:19].replace("T", " ")
    return Html(f'<time datetime="{escape(iso)}" title="{escape(iso)}">{escape(short)}</time>')


def _size(value: int | None) -> str:
    return "—" if value is None else format_size(value)


def _deployed(status: dict[str, Any]) -> str:
    deployed = status["deployed"]
    if deployed["commit"] is None:
        if deployed["error"]:
            return f'<p class="problem" id="deployed">{escape(deployed["error"])}</p>'
        return (
            '<p class="empty" id="deployed">Not known: set <code>[upgrade] deployed_commit_file</code> '
            "or <code>deployed_commit_command</code> to see this machine's update path.</p>"
        )
    head = (
        f'<p id="deployed">Deployed: {_code(deployed["commit"], 64).text}'
        f"{' on <b>' + escape(deployed['ref']) + '</b>' if deployed['ref'] else ''}</p>"
    )
    if deployed.get("note"):
        head += f'<p class="note">{escape(deployed["note"])}</p>'
    if deployed.get("pending"):
        head += (
            f'<p class="problem" id="pending">Reboot needed: {_code(deployed["pending"], 64).text} is '
            "deployed and pending; it runs after the next boot.</p>"
        )
    if deployed["path_error"]:
        missing = "".join(f"<li><code>{escape(m)}</code></li>" for m in deployed["missing"])
        return (
            head + f'<p class="problem" id="path">No update path: {escape(deployed["path_error"])}</p>'
            f"{'<ul>' + missing + '</ul>' if missing else ''}"
        )
    path = deployed["path"]
    if not path["steps"]:
        return head + '<p class="ok" id="path">Up to date: nothing newer to deploy.</p>'
    rows: list[list[Cell]] = [
        [
            n,
            _code(s["commit"]),
            s["ref"],
            s["version"],
            s["reason"],
            "held" if s["held"] == "complete" else "commit only: content must be pulled",
        ]
        for n, s in enumerate(path["steps"], 1)
    ]
    notes = "".join(f'<p class="note">{escape(n)}</p>' for n in path["notes"])
    return head + _table("path", ["step", "commit", "ref", "version", "why", "content"], rows, "") + notes


def _refs(status: dict[str, Any]) -> str:
    rows: list[list[Cell]] = [
        [
            r["name"],
            "[origin] refs" if r["configured"] else "held",
            _code(r["head"]),
            r["version"],
            _when(r["timestamp"]),
            r["commits"],
            r["checkpoints"],
        ]
        for r in status["refs"]
    ]
    return _table(
        "refs", ["ref", "followed because", "head", "version", "time", "commits", "checkpoints"], rows,
        "No refs followed or held yet.",
    )  # fmt: skip


def _retention_note(status: dict[str, Any]) -> str:
    retention = status["retention"]
    if retention["computed_at"] is None:
        text = "Retention plan being computed: reasons and disk use appear when it is done."
        if retention["error"]:
            text = retention["error"]
        return f'<p class="note" id="retention-note">{escape(text)}</p>'
    text = f"Retention plan of {_when(retention['computed_at']).text} UTC (took {retention['seconds']:.1f} s)"
    if not retention["current"]:
        text += "; refs changed since"
    if retention["pending"]:
        text += "; a newer one is being computed"
    if retention["error"]:
        text += f"; {escape(retention['error'])}"
    return f'<p class="note" id="retention-note">{text}.</p>'


def _why(commit: dict[str, Any]) -> str:
    if commit["evictable"]:
        return "evictable when space runs out"
    if commit["kept"]:
        return "; ".join(commit["kept"])
    if commit["commit_only"]:
        return "commit object only: " + "; ".join(commit["commit_only"])
    return "not known yet"


def _kept(status: dict[str, Any], drawn: list[dict[str, Any]], hidden: int) -> str:
    pins: list[list[Cell]] = [
        [p["ref_glob"] or "", _code(p["commit"]), p["reason"], p["source"]] for p in status["pins"]
    ]
    commits: list[list[Cell]] = [
        [_code(c["checksum"]), c["ref"], c["version"], c["subject"], _why(c)] for c in drawn
    ]
    more = f'<p class="note">{hidden} more commits: see /api/v1/status.</p>' if hidden else ""
    return (
        _table("pins", ["ref glob", "commit", "reason", "from"], pins, "No pins.")
        + "<h3>Why each commit stays</h3>"
        + _retention_note(status)
        + _table("kept", ["commit", "ref", "version", "subject", "kept because"], commits, "No commits.")
        + more
    )


def _disk(status: dict[str, Any]) -> str:
    disk = status["disk"]
    if disk["used_bytes"] is None:
        return (
            f'<div id="disk"><p class="note">Not measured yet (the retention plan measures it); '
            f"max_size is {format_size(disk['max_bytes'])}.</p></div>"
        )
    text = (
        f"{format_size(disk['used_bytes'])} of {format_size(disk['max_bytes'])} "
        f"({disk['used_fraction'] * 100:.1f}%)"
    )
    css = "over" if disk["used_fraction"] > 1 else ("warn" if disk["used_fraction"] > 0.9 else "")
    return (
        f'<div id="disk">{_bar(disk["used_fraction"], text, css).text}'
        f"<p>{disk['objects']} objects; {format_size(disk['kept_bytes'])} must stay, "
        f"{format_size(disk['evictable_bytes'])} could be evicted.</p></div>"
    )


def _peers(status: dict[str, Any]) -> str:
    rows: list[list[Cell]] = []
    for p in status["peers"]:
        health = Html(
            f'<span class="health {escape(p["health"].replace(" ", "-"))}">{escape(p["health"])}</span>'
        )
        rate = None if p["last_rate"] is None else f"{format_size(int(p['last_rate']))}/s"
        rows.append(
            [
                p["node_id"],
                ", ".join(f"{a}:{p['port']}" for a in p["addresses"]),
                health,
                _size(p["bytes_in"]),
                _size(p["bytes_out"]),
                rate,
                _when(p["last_seen"]),
            ]
        )
    headers = ["peer", "address", "health", "received from", "sent to", "last rate", "last seen"]
    return _table("peers", headers, rows, "No peers seen yet.")


def _transfers(status: dict[str, Any]) -> str:
    rows: list[list[Cell]] = []
    for t in status["transfers"]:
        total = f" of {t['objects_total']}" if t["objects_total"] else ""
        text = f"{t['objects_done']}{total} objects, {format_size(t['bytes_done'])}"
        rows.append(
            [
                _code(t["commit"]),
                t["ref"],
                t["source"],
                t["state"],
                _bar(t["progress"], text, t["state"]),
                _when(t["started_at"]),
                t["error"],
            ]
        )
    headers = ["commit", "ref", "from", "state", "progress", "started", "error"]
    return _table("transfers", headers, rows, "No transfers yet.")


def _savings(status: dict[str, Any]) -> str:
    s = status["savings"]
    served = status["served"]
    if s["saved_percent"] is None:
        pulled = "Nothing pulled yet."
    else:
        pulled = (
            f"<b>{s['saved_percent']:.1f}%</b> of pulled bytes came from peers: "
            f"{format_size(s['from_peers_bytes'])} from peers, "
            f"{format_size(s['from_origin_bytes'])} from the origin."
        )
    rows: list[list[Cell]] = [
        [
            _code(c["commit"]),
            format_size(c["origin_bytes"]),
            format_size(c["peer_bytes"]),
            format_size(c["lan_origin_bytes"]),
            format_size(c["lan_peer_bytes"]),
            str(c["lan_machines"]),
        ]
        for c in s["by_commit"]
    ]
    headers = ["commit", "from origin", "from peers", "LAN: from origin", "LAN: from peers", "machines"]
    by_commit = _table("by-commit", headers, rows, "")
    return (
        f'<p id="savings">{pulled}</p>{by_commit if rows else ""}'
        f"<p>Served to the LAN since start: {format_size(served['bytes'])} in {served['requests']} requests "
        f"to {served['clients']} addresses.</p>"
    )


def _errors(status: dict[str, Any]) -> str:
    rows: list[list[Cell]] = [
        [_when(e["time"]), e["level"], e["logger"], e["message"]] for e in status["errors"]["recent"]
    ]
    return _table("errors", ["time", "level", "where", "message"], rows, "No warnings or errors since start.")


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1em 2em;color:#1f2937;background:#fff}
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.15em;margin:1.4em 0 .4em;border-bottom:1px solid #ddd}
h3{font-size:1em}table{border-collapse:collapse}td,th{padding:2px 10px 2px 0;text-align:left;
vertical-align:top}th{font-weight:600;border-bottom:1px solid #ccc}code{font-size:12px}
.meta,.note,.empty{color:#6b7280}.problem{color:#b91c1c}.ok{color:#15803d}
.bar{position:relative;width:320px;height:18px;background:#e5e7eb;border-radius:3px}
.bar .fill{height:100%;background:#2563eb;border-radius:3px}.bar.warn .fill{background:#d97706}
.bar.over .fill,.bar.failed .fill{background:#dc2626}.bar.done .fill{background:#16a34a}
.bar span{position:absolute;left:6px;top:0;font-size:12px;line-height:18px}
.health.healthy{color:#15803d}.health.failing,.health.backing-off{color:#b91c1c}
.scroll{overflow-x:auto}.legend span{margin-right:1.2em}
"""

_LEGEND = (
    '<p class="legend"><span>● kept with its tree</span><span>○ commit object only</span>'
    "<span>grey: evictable</span><span>pale: not known yet</span><span>◆ checkpoint</span>"
    "<span>dashed arrow: ref switch</span>"
    "<span>blue ring: deployed</span><span>blue number: update path step</span></p>"
)


def render_page(status: dict[str, Any]) -> str:
    """The whole HTML document for one snapshot."""
    refs = [r["name"] for r in status["refs"]]
    drawn, hidden = drawn_commits(status["chain"], refs)
    node = escape(status["node_id"])
    lan = escape(status["listeners"]["lan"] or "not listening")
    sections = [
        ("machine", "This machine", _deployed(status)),
        ("followed", "Followed refs", _refs(status)),
        (
            "chain",
            "Checkpoint chain",
            f'{_LEGEND}<div class="scroll">{chain_svg(status["chain"], refs)}</div>',
        ),
        ("retention", "Pins and retention", _kept(status, drawn, hidden)),
        ("disk-use", "Disk use", _disk(status)),
        ("lan-peers", "Peers", _peers(status)),
        ("pulls", "Transfers", _transfers(status)),
        ("saved", "Bytes saved", _savings(status)),
        ("recent-errors", "Recent warnings and errors", _errors(status)),
    ]
    if warning := status["repo"].get("summary_warning"):
        sections.insert(0, ("summary-warning", "Summary out of date", f"<p>{escape(warning)}</p>"))
    body = "".join(
        f'<section id="{key}"><h2>{escape(title)}</h2>{html}</section>' for key, title, html in sections
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # No external resources: nothing here may reach past this machine.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src 'self' data:\">"
        f"<title>lanshare · {node}</title><style>{_STYLE}{SVG_STYLE}</style></head><body>"
        f"<h1>lanshare on {node}</h1>"
        f'<p class="meta">version {escape(status["version"])} · LAN listener {lan} · '
        f"repository <code>{escape(status['repo']['path'])}</code> · "
        f"updated {_when(status['generated_at']).text} UTC · refreshes every {REFRESH_SECONDS} s · "
        '<a href="/api/v1/status">JSON</a> · <a href="/metrics">metrics</a></p>'
        f"{body}</body></html>\n"
    )

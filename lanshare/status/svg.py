"""The checkpoint chain as an inline SVG: one lane per ref, commits oldest to newest, left to right.

Marks: a diamond is a checkpoint (``lanshare.checkpoint`` or a ref switch), a dashed arrow is a ref
switch to the lane of the target ref, a thick ring is the deployed commit, a number above a commit
is its place on the update path.  Fill says what retention does with the commit: solid (kept with
its tree), hollow (commit object only), grey (evictable when space runs out), pale (no retention
plan yet).  Every commit
carries a ``<title>`` (hover text) with its checksum, version, subject and why it is kept.
Text is escaped: subjects and ref names come from publishers and peers.
"""

from __future__ import annotations

from html import escape
from typing import Any

# Commits drawn per ref besides the ones that matter for the path (checkpoints, the deployed
# commit, path steps): a long history would make the picture unreadable.
MAX_PLAIN_PER_REF = 12
MAX_LANES = 12
# Shared by the page and the standalone /chain.svg.
SVG_STYLE = """
svg.chain{border:1px solid #e5e7eb;background:#fafafa;font-family:system-ui,sans-serif}
svg .lane{font-size:12px;font-weight:600;fill:#374151}svg .lane-line{stroke:#e5e7eb}
svg .parent{stroke:#6b7280;stroke-width:2}svg .parent.elided{stroke-dasharray:2 4}
svg .switch{stroke:#b45309;stroke-width:2;fill:none;
stroke-dasharray:5 3}svg .commit circle,svg .commit polygon{stroke:#1f2937;stroke-width:1.5}
svg .kept circle,svg .kept polygon{fill:#16a34a}svg .commit-only circle,svg .commit-only polygon{fill:#fff}
svg .evictable circle,svg .evictable polygon{fill:#9ca3af}
svg .unknown circle,svg .unknown polygon{fill:#e5e7eb}svg .checkpoint polygon{stroke:#b45309;
stroke-width:2.5}svg .commit .deployed-ring{fill:none;stroke:#2563eb;stroke-width:3}
svg .label{font-size:11px;text-anchor:middle;fill:#374151}svg .step{font-size:12px;font-weight:700;
text-anchor:middle;fill:#2563eb}
"""
_LANE_H = 64
_STEP_W = 58
_LEFT = 150
_TOP = 34
_R = 9


def _short(checksum: str) -> str:
    return checksum[:8]


def _title(commit: dict[str, Any]) -> str:
    lines = [commit["checksum"], f"ref {commit['ref']}"]
    if commit["version"]:
        lines.append(f"version {commit['version']}")
    if commit["subject"]:
        lines.append(commit["subject"])
    if commit["timestamp"]:
        lines.append(commit["timestamp"])
    if commit["checkpoint"]:
        lines.append("checkpoint")
    if commit["target"]:
        lines.append(f"continue on {commit['target']}")
    for reason in commit["kept"]:
        lines.append(f"kept: {reason}")
    for reason in commit["commit_only"]:
        lines.append(f"commit object kept: {reason}")
    if commit["evictable"]:
        lines.append("evictable when space runs out")
    return "\n".join(lines)


def _fate(commit: dict[str, Any]) -> str:
    if commit["evictable"]:
        return "evictable"
    if commit["kept"]:
        return "kept"
    if commit["commit_only"]:
        return "commit-only"
    return "unknown"  # no retention plan covers it yet


def _important(commit: dict[str, Any]) -> bool:
    return bool(commit["checkpoint"] or commit["target"] or commit["deployed"] or commit["path_step"])


def drawn_commits(chain: dict[str, Any], refs: list[str]) -> tuple[list[dict[str, Any]], int]:
    """The commits worth drawing, and how many are left out.

    At most ``MAX_LANES`` refs (those on the update path first, then in ``refs`` order); on each,
    every commit that matters for the path plus the newest ``MAX_PLAIN_PER_REF`` others.
    """
    commits = chain["commits"]
    path_refs = {c["ref"] for c in commits if c["path_step"] or c["deployed"]}
    on_path = [r for r in refs if r in path_refs]
    lanes = set((on_path + [r for r in refs if r not in on_path])[:MAX_LANES])
    plain_seen: dict[str, int] = {}
    keep: set[str] = set()
    # Commits arrive newest first within each ref.
    for commit in commits:
        if commit["ref"] not in lanes:
            continue
        count = plain_seen.get(commit["ref"], 0)
        if _important(commit) or count < MAX_PLAIN_PER_REF:
            keep.add(commit["checksum"])
        if not _important(commit):
            plain_seen[commit["ref"]] = count + 1
    drawn = [c for c in commits if c["checksum"] in keep]
    return drawn, len(commits) - len(drawn)


def _generations(commits: list[dict[str, Any]]) -> dict[str, int]:
    """How many drawn ancestors each commit has, through parents and checkpoint sources."""
    by_checksum = {c["checksum"]: c for c in commits}
    found: dict[str, int] = {}

    def ancestor(commit: dict[str, Any]) -> str | None:
        if commit["parent"] in by_checksum:
            return str(commit["parent"])
        source = (commit["checkpoint_source"] or "").rpartition("@")[2]
        return source if source in by_checksum else None

    for commit in commits:
        # Walk up to a known generation, then number the walked commits on the way back down.
        walk: list[str] = []
        checksum: str | None = commit["checksum"]
        while checksum is not None and checksum not in found and checksum not in walk:
            walk.append(checksum)
            checksum = ancestor(by_checksum[checksum])
        base = found.get(checksum, -1) if checksum is not None else -1
        for depth, walked in enumerate(reversed(walk), 1):
            found[walked] = base + depth
    return found


def _drawn_ancestor(
    commit: dict[str, Any], drawn: dict[str, dict[str, Any]], parents: dict[str, str | None]
) -> tuple[dict[str, Any] | None, int]:
    """The nearest drawn ancestor through held parents, and how many held commits lie between."""
    skipped = 0
    checksum = commit["parent"]
    while checksum is not None and checksum not in drawn and checksum in parents:
        skipped += 1
        checksum = parents[checksum]
        if skipped > len(parents):
            return None, 0  # a parent loop in a corrupt history
    return (drawn[checksum], skipped) if checksum in drawn else (None, 0)


def chain_svg(chain: dict[str, Any], refs: list[str], *, standalone: bool = False) -> str:
    """The ``<svg>`` element drawing ``chain`` (the snapshot's ``chain``) over the lanes ``refs``;
    ``standalone`` carries its own style (for ``/chain.svg``)."""
    drawn, hidden = drawn_commits(chain, refs)
    parents = {c["checksum"]: c["parent"] for c in chain["commits"]}
    lanes = [r for r in refs if any(c["ref"] == r for c in drawn)]
    if not drawn:
        return '<p class="empty">No commits held yet.</p>'
    # Oldest to newest across all refs, so a switch always points right; commits made within one
    # second are ordered by their ancestry.
    generation = _generations(drawn)
    order = sorted(drawn, key=lambda c: (c["timestamp"] or "", generation[c["checksum"]], c["checksum"]))
    x = {c["checksum"]: _LEFT + i * _STEP_W for i, c in enumerate(order)}
    y = {ref: _TOP + i * _LANE_H for i, ref in enumerate(lanes)}
    width = _LEFT + len(order) * _STEP_W + 20
    height = _TOP + len(lanes) * _LANE_H
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chain" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="checkpoint chain">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#b45309"/>'
        "</marker></defs>",
    ]
    if standalone:
        out.append(f"<style>{SVG_STYLE}</style>")
    for ref in lanes:
        out.append(
            f'<text class="lane" x="8" y="{y[ref] + 4}" data-ref="{escape(ref)}">{escape(ref)}</text>'
            f'<line x1="{_LEFT - 20}" y1="{y[ref]}" x2="{width - 10}" y2="{y[ref]}" class="lane-line"/>'
        )
    by_checksum = {c["checksum"]: c for c in drawn}
    for commit in drawn:
        parent, skipped = _drawn_ancestor(commit, by_checksum, parents)
        if parent is not None:
            # Dashed: commits between the two are held but not drawn.
            css, title = (
                ("parent elided", f"<title>{skipped} commits not drawn</title>")
                if skipped
                else ("parent", "")
            )
            out.append(
                f'<line class="{css}" x1="{x[parent["checksum"]]}" y1="{y[parent["ref"]]}" '
                f'x2="{x[commit["checksum"]]}" y2="{y[commit["ref"]]}">{title}</line>'
            )
    for switch in chain["switches"]:
        start, end = by_checksum.get(switch["from_commit"]), by_checksum.get(switch["to_commit"] or "")
        if start is None or end is None:
            continue
        x1, y1, x2, y2 = x[start["checksum"]], y[start["ref"]], x[end["checksum"]], y[end["ref"]]
        out.append(
            f'<path class="switch" d="M{x1},{y1} C{x1 + 30},{y1} {x2 - 30},{y2} {x2 - _R - 2},{y2}" '
            f'marker-end="url(#arrow)" data-from="{escape(switch["from_ref"])}" '
            f'data-to="{escape(switch["to_ref"])}"><title>{escape(switch["from_ref"])} → '
            f"{escape(switch['to_ref'])}</title></path>"
        )
    for commit in drawn:
        out.append(_node(commit, x[commit["checksum"]], y[commit["ref"]]))
    out.append("</svg>")
    if hidden:
        out.append(
            f'<p class="note">{hidden} more commits not drawn (older plain commits, refs past the '
            f"first {MAX_LANES}); all are in /api/v1/status.</p>"
        )
    return "".join(out)


def _node(commit: dict[str, Any], cx: int, cy: int) -> str:
    checkpoint = bool(commit["checkpoint"] or commit["target"])
    classes = ["commit", _fate(commit)]
    if checkpoint:
        classes.append("checkpoint")
    if commit["target"]:
        classes.append("ref-switch")
    if commit["deployed"]:
        classes.append("deployed")
    if commit["path_step"]:
        classes.append("on-path")
    attrs = (
        f'class="{" ".join(classes)}" data-commit="{escape(commit["checksum"])}" '
        f'data-checkpoint="{"true" if checkpoint else "false"}"'
    )
    if checkpoint:
        s = _R + 2
        shape = f'<polygon points="{cx},{cy - s} {cx + s},{cy} {cx},{cy + s} {cx - s},{cy}"/>'
    else:
        shape = f'<circle cx="{cx}" cy="{cy}" r="{_R}"/>'
    label = commit["version"] or _short(commit["checksum"])
    if len(label) > 10:
        label = label[:9] + "…"
    parts = [f"<g {attrs}><title>{escape(_title(commit))}</title>", shape]
    if commit["deployed"]:
        parts.append(f'<circle class="deployed-ring" cx="{cx}" cy="{cy}" r="{_R + 6}"/>')
    parts.append(f'<text class="label" x="{cx}" y="{cy + 26}">{escape(label)}</text>')
    if commit["path_step"]:
        parts.append(f'<text class="step" x="{cx}" y="{cy - 17}">{commit["path_step"]}</text>')
    parts.append("</g>")
    return "".join(parts)

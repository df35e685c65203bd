"""``lanshare summary``: regenerate (``-u``) and show the repository summary."""

from __future__ import annotations

import argparse

from lanshare.cli import EXIT_FAILURE, EXIT_OK, print_json
from lanshare.context import Context
from lanshare.ostree import signing
from lanshare.ostree.repo_summary import regenerate_summary, summary_state
from lanshare.ostree.summary import Summary, SummaryRef, parse_summary


def _to_json(summary: Summary) -> dict[str, object]:
    def refs(entries: list[SummaryRef]) -> list[dict[str, object]]:
        return [
            {"ref": r.name, "commit": r.checksum, "timestamp": r.timestamp, "version": r.version}
            for r in entries
        ]

    return {
        "collection_id": summary.collection_id,
        "last_modified": summary.last_modified,
        "refs": refs(summary.refs),
        "collection_map": {cid: refs(entries) for cid, entries in summary.collection_map.items()},
    }


def run_summary(args: argparse.Namespace) -> int:
    """Regenerate the summary when asked, then print what it lists."""
    repo = Context.from_args(args).open_repo()
    if args.update:
        secret = [signing.load_ed25519_secret_key(args.sign_ed25519)] if args.sign_ed25519 else []
        data = regenerate_summary(
            repo, gpg_key_ids=args.gpg_sign, gpg_homedir=args.gpg_homedir, ed25519_secret_keys=secret
        )
    else:
        try:
            data = (repo.path / "summary").read_bytes()
        except FileNotFoundError:
            print(f"lanshare: {repo.path} has no summary (use --update)")
            return EXIT_FAILURE
    summary = parse_summary(data)
    # upstream (a source's set, byte for byte), own, or publisher (signed, left as it is)
    state = summary_state(repo)
    if args.json:
        print_json({**_to_json(summary), "served": state.get("served"), "warning": state.get("warning")})
        return EXIT_OK
    print(f"collection id: {summary.collection_id or '-'}")
    if state.get("served"):
        print(
            f"served: {state['served']}" + (" (summary.sig)" if (repo.path / "summary.sig").exists() else "")
        )
    if state.get("warning"):
        print(f"warning: {state['warning']}")
    for ref in summary.refs:
        print(f"  {ref.name:<30} {ref.checksum}  {ref.version or ''}")
    for collection_id, entries in summary.collection_map.items():
        for ref in entries:
            print(f"  ({collection_id}, {ref.name}) {ref.checksum}  {ref.version or ''}")
    return EXIT_OK

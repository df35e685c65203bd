"""``lanshare commit``: build a commit from a directory, with checkpoint metadata and signatures."""

from __future__ import annotations

import argparse

from lanshare.cli import EXIT_OK, print_json
from lanshare.errors import UsageError
from lanshare.gvariant import Variant
from lanshare.ostree import commit_tree as ct
from lanshare.ostree import signing
from lanshare.ostree.repo import Repo, RepoError, validate_ref


def _metadata(args: argparse.Namespace) -> dict[str, Variant]:
    metadata: dict[str, Variant] = {}
    for item in args.add_metadata_string:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--add-metadata-string: expected KEY=VALUE, got {item!r}")
        metadata[key] = Variant("s", value)
    if args.commit_version is not None:
        metadata["version"] = Variant("s", args.commit_version)
    if args.checkpoint:
        metadata[ct.CHECKPOINT_KEY] = Variant("b", True)
    for key, ref in (
        (ct.CHECKPOINT_TARGET_KEY, args.checkpoint_target),
        (ct.ENDOFLIFE_REBASE_KEY, args.endoflife_rebase),
    ):
        if ref is not None:
            validate_ref(ref)
            metadata[key] = Variant("s", ref)
    if args.checkpoint_source is not None:
        ref, sep, _ = args.checkpoint_source.partition("@")
        if not sep:
            raise UsageError("--checkpoint-source: expected OLDREF@COMMIT")
        validate_ref(ref)
        metadata[ct.CHECKPOINT_SOURCE_KEY] = Variant("s", args.checkpoint_source)
    return metadata


def run_commit(args: argparse.Namespace) -> int:
    """Commit the tree, sign it if asked, then move the branch; prints the checksum."""
    if args.gpg_sign and args.gpg_homedir is None:
        raise UsageError("--gpg-sign needs --gpg-homedir")
    # Refs named on the command line are usage errors, checked before anything touches the disk.
    for ref in (args.branch, args.checkpoint_target, args.endoflife_rebase):
        if ref is not None:
            try:
                validate_ref(ref)
            except RepoError as e:
                raise UsageError(str(e)) from None
    repo = Repo.init(args.repo, args.collection_id)
    options = ct.CommitOptions(
        branch=args.branch,
        parent=args.parent,
        timestamp=args.timestamp,
        subject=args.subject,
        body=args.body,
        metadata=_metadata(args),
        owner_uid=args.owner_uid,
        owner_gid=args.owner_gid,
        xattrs=not args.no_xattrs,
        bind_ref=not args.no_bindings,
    )
    secret_keys = [signing.load_ed25519_secret_key(args.sign_ed25519)] if args.sign_ed25519 else []
    # Shared lock: a concurrent prune must not sweep an object this commit is reusing.
    with repo.lock(exclusive=False):
        checksum, data = ct.commit_tree(repo, args.tree, options)
        if args.gpg_sign or secret_keys:
            # Signatures go in before the ref moves: a signed ref never points at an unsigned commit.
            metadata = signing.sign_metadata(
                data,
                repo.load_commitmeta(checksum),
                gpg_key_ids=args.gpg_sign,
                gpg_homedir=args.gpg_homedir,
                ed25519_secret_keys=secret_keys,
            )
            repo.write_commitmeta(checksum, metadata)
        repo.write_ref(args.branch, checksum)
    if args.json:
        print_json({"commit": checksum, "branch": args.branch})
    else:
        print(checksum)
    return EXIT_OK

"""The ``lanshare`` command line: parse arguments, run one command, map errors to exit codes.

Exit status: 0 success, 1 failure (the message says what failed), 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import os
import sys
import threading
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import NoReturn

from lanshare.errors import Error, UsageError

Handler = Callable[[argparse.Namespace], int]
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def print_json(data: object) -> None:
    """Write one JSON document to stdout (the ``--json`` output of every command)."""
    json.dump(data, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


_CONFIG_HELP = "configuration file (default /etc/lanshare/lanshare.toml)"


def _add_global_options(parser: _Parser, *, repo_help: str, under_command: bool) -> None:
    """``--config``, ``--repo`` and ``--json``: accepted before the subcommand and after it.

    Under a subcommand they default to SUPPRESS, so a value given before the subcommand is not
    overwritten by the subcommand's default (argparse copies every sub-namespace attribute over).
    """
    default = argparse.SUPPRESS if under_command else None
    parser.add_argument("--config", type=Path, default=default, help=_CONFIG_HELP)
    parser.add_argument("--repo", type=Path, default=default, help=repo_help)
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if under_command else False,
        help="print JSON for scripts",
    )


def _common(repo_required: bool = False) -> _Parser:
    """Options every repository command takes: the config file and a repository override."""
    parent = _Parser(add_help=False)
    help_text = (
        "archive repository (required)"
        if repo_required
        else "repository (default: [repo] path from the config)"
    )
    _add_global_options(parent, repo_help=help_text, under_command=True)
    parent.set_defaults(repo_required=repo_required)
    return parent


# True when this process is the ``lanshare`` program (:func:`run`), not a caller of :func:`main`.
_own_process = False


def _lazy(module: str, function: str) -> Handler:
    """A handler that imports its command module only when that command runs (fast start-up)."""

    def handler(args: argparse.Namespace) -> int:
        import importlib

        # Importing allocates hundreds of thousands of objects and no garbage: collections during
        # it only walk what is being built (~5 % of a short command's run).
        collecting = gc.isenabled()
        gc.disable()
        try:
            loaded = importlib.import_module(f"lanshare.commands.{module}")
        finally:
            if collecting:
                gc.enable()
        if _own_process:
            # What the imports built lives as long as the process: kept out of every later
            # collection, which would otherwise walk those hundreds of thousands of objects again
            # and again while a pull allocates (~10 % of a small-file pull's CPU), and out of
            # forked workers' pages.  Not when main() is called by a program (a test) that goes on.
            gc.freeze()
        run: Handler = getattr(loaded, function)
        return run(args)

    return handler


def _add_commit(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "commit",
        parents=[_common(repo_required=True)],
        help="commit a directory tree, with checkpoint metadata (publisher side)",
    )
    p.add_argument("--branch", "-b", required=True, help="ref to commit on")
    p.add_argument("--tree", type=Path, required=True, help="directory to commit")
    p.add_argument("--parent", help="parent commit, or 'none' (default: the branch's head)")
    p.add_argument("--timestamp", type=int, help="commit time as Unix seconds (default: now)")
    p.add_argument("--version", dest="commit_version", help="the 'version' metadata string")
    p.add_argument("--subject", "-s", default="", help="one-line subject")
    p.add_argument("--body", "-m", default="", help="commit message body")
    p.add_argument("--checkpoint", action="store_true", help="mark as a mandatory checkpoint")
    p.add_argument("--checkpoint-target", metavar="REF", help="after this commit, continue on REF")
    p.add_argument("--endoflife-rebase", metavar="REF", help="this ref ended: continue on REF")
    p.add_argument(
        "--checkpoint-source", metavar="REF@COMMIT", help="first commit of a new ref: the way back"
    )
    p.add_argument(
        "--add-metadata-string", action="append", default=[], metavar="KEY=VALUE", help="extra metadata"
    )
    p.add_argument("--owner-uid", type=int, help="record this uid for every file")
    p.add_argument("--owner-gid", type=int, help="record this gid for every file")
    p.add_argument("--no-xattrs", action="store_true", help="do not record extended attributes")
    p.add_argument("--no-bindings", action="store_true", help="do not bind the commit to its ref")
    p.add_argument("--collection-id", help="collection ID for a repository created by this command")
    p.add_argument("--gpg-sign", metavar="KEYID", action="append", default=[], help="GPG-sign with KEYID")
    p.add_argument("--gpg-homedir", type=Path, help="GnuPG home directory holding the secret key")
    p.add_argument("--sign-ed25519", metavar="KEYFILE", type=Path, help="ed25519-sign with this secret key")
    p.set_defaults(handler=_lazy("commit", "run_commit"))


def _add_fsck(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "fsck", parents=[_common()], help="verify every object, commit closure, ref and signature"
    )
    p.add_argument("--gpg-keyring", type=Path, help="verify commit signatures against this keyring")
    p.add_argument(
        "--ed25519-key", action="append", default=[], metavar="BASE64", help="trusted ed25519 public key"
    )
    p.set_defaults(handler=_lazy("fsck", "run_fsck"))


def _add_path(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("path", parents=[_common()], help="show the update path through every checkpoint")
    p.add_argument("--from", dest="start", required=True, metavar="COMMIT", help="the deployed commit")
    p.add_argument("--ref", help="the deployed ref (default: the commit's ref binding)")
    p.add_argument(
        "--allow-downgrade", action="store_true", help="allow steps older than the deployed commit"
    )
    p.set_defaults(handler=_lazy("path", "run_path"))


def _add_network(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("serve", parents=[_common()], help="run the daemon (LAN listener, status page)")
    p.set_defaults(handler=_lazy("serve", "run_serve"))
    p = sub.add_parser("pull", parents=[_common()], help="pull a ref or commit from peers or the origin")
    p.add_argument("target", metavar="REF|COMMIT", help="ref to pull (its head) or a commit checksum")
    p.add_argument(
        "--from",
        dest="sources",
        action="append",
        default=[],
        metavar="URL",
        help="pull from this URL (an OSTree archive remote or a lanshare peer); repeatable, tried in order",
    )
    p.add_argument("--ref", help="with a COMMIT: the ref it belongs to (checked against its binding)")
    p.set_defaults(handler=_lazy("pull", "run_pull"))
    p = sub.add_parser(
        "upgrade",
        parents=[_common()],
        help="deploy the next step of the update path",
        epilog="exit status: 0 done (up to date, no more steps); 10 a step was deployed and more "
        "remain (reboot if needed, then run again); 11 reboot needed: the next step is deployed and "
        "pending, nothing was deployed; 1 failed (pull, verification, deploy); "
        "2 usage or configuration error",
    )
    p.add_argument("--all", action="store_true", help="walk every step to the end of the path")
    p.add_argument("--ref", help="the ref the deployed commit is on (default: its ref binding)")
    p.add_argument(
        "--from", dest="start", metavar="COMMIT", help="the deployed commit (default: [upgrade] config)"
    )
    p.set_defaults(handler=_lazy("upgrade", "run_upgrade"))


def _add_summary(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("summary", parents=[_common()], help="regenerate or show the repository summary")
    p.add_argument("--update", "-u", action="store_true", help="regenerate the summary from the refs")
    p.add_argument("--gpg-sign", metavar="KEYID", action="append", default=[], help="sign it with KEYID")
    p.add_argument("--gpg-homedir", type=Path, help="GnuPG home directory holding the secret key")
    p.add_argument("--sign-ed25519", metavar="KEYFILE", type=Path, help="sign it with this ed25519 key")
    p.set_defaults(handler=_lazy("summary", "run_summary"))


def _add_retention(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("prune", parents=[_common()], help="remove what retention does not keep")
    p.add_argument("--dry-run", action="store_true", help="report what would be removed, remove nothing")
    p.set_defaults(handler=_lazy("prune", "run_prune"))
    p = sub.add_parser("pin", parents=[_common()], help="keep a commit, or every commit on matching refs")
    p.add_argument("target", metavar="COMMIT|REF-GLOB")
    p.add_argument("--reason", default="", help="why (shown by prune and the status page)")
    p.set_defaults(handler=_lazy("pin", "run_pin"))
    p = sub.add_parser("unpin", parents=[_common()], help="remove a pin")
    p.add_argument("target", metavar="COMMIT|REF-GLOB")
    p.set_defaults(handler=_lazy("pin", "run_unpin"))
    p = sub.add_parser("reindex", parents=[_common()], help="rebuild the index from the repository")
    p.set_defaults(handler=_lazy("reindex", "run_reindex"))


def _add_status(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("status", help="show the running daemon's status (its status page, as text)")
    p.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=_CONFIG_HELP)
    p.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the /api/v1/status JSON document",
    )
    p.set_defaults(handler=_lazy("status", "run_status"))


def _add_peers(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("peers", parents=[_common()], help="list the peers found on the LAN or configured")
    p.set_defaults(handler=_lazy("peers", "run_peers"))


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, one subcommand per DESIGN §7 command implemented so far."""
    from lanshare import __version__

    parser = _Parser(prog="lanshare", description="LAN cache for OSTree repositories")
    parser.add_argument("--version", action="version", version=f"lanshare {__version__}")
    _add_global_options(
        parser, repo_help="repository (default: [repo] path from the config)", under_command=False
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_commit(sub)
    _add_fsck(sub)
    _add_path(sub)
    _add_retention(sub)
    _add_summary(sub)
    _add_network(sub)
    _add_peers(sub)
    _add_status(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lanshare`` console script."""
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "repo_required", False) and args.repo is None:
            raise UsageError(f"lanshare {args.command}: the following arguments are required: --repo")
        handler: Handler = args.handler
        return handler(args)
    except UsageError as e:
        print(f"lanshare: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Error as e:
        print(f"lanshare: error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("lanshare: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_FAILURE
    finally:
        # Only if a command opened one: importing it here would make every command load SQLAlchemy.
        if (context := sys.modules.get("lanshare.context")) is not None:
            context.Context.close_all()


def run() -> NoReturn:
    """The ``lanshare`` program: :func:`main`, then exit without tearing the interpreter down."""
    global _own_process
    _own_process = True
    code = main()
    # Freeing every module and object at interpreter shutdown takes ~0.1 s after a pull (SQLAlchemy,
    # aiohttp, the object walk) that nobody waits for usefully.  What exit must still do is done
    # here: atexit handlers (logging, multiprocessing) and flushed output.  A command that left a
    # thread running gets the normal exit, which waits for it.
    # So does a run under a profiler or tracer, which writes its results after this returns.
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if others or sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    run()

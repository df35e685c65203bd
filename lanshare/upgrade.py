"""``lanshare upgrade``: walk the update path one step at a time, deploying each step.

DESIGN §3, §7, §8 ``[upgrade]``.  One run:

1. reads the deployed commit (and a pending one): from the sysroot with ``deploy = "ostree-admin"``
   (:mod:`lanshare.deploy.ostree_admin`), from ``deployed_commit_file`` (a bare checksum) or from
   the output of ``deployed_commit_command`` (:mod:`lanshare.deploy.deployed`);
2. brings what the path needs into the repository: the heads of the refs the path runs along
   (full pulls through the pull engine, which verifies them), and the commit objects alone of the
   history between the deployed commit and those heads (their content is fixed by the hash chain
   from a verified head, so a commit-only copy is enough to compute the path);
3. computes the path exactly as ``lanshare path`` does; if its next step is already deployed and
   pending, stops there ("reboot needed", exit 11) rather than deploy it again;
4. pulls the next step's whole closure and deploys it: with the built-in ``ostree admin`` deployer,
   or by running ``deploy_command`` with ``LANSHARE_COMMIT``, ``LANSHARE_REF``,
   ``LANSHARE_VERSION`` and ``LANSHARE_REPO`` in its environment;
5. records the step only once the deploy succeeded, and stops there (a checkpoint needs a reboot
   before the machine may go further) unless asked to walk the whole path where nothing is booted.

Run as root, it works on the cache as the cache's owner (:mod:`lanshare.deploy.owner`) and is root
again only to deploy.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import aiohttp
from sqlalchemy import Engine

from lanshare.config import UpgradeConfig
from lanshare.control.client import DaemonPulls
from lanshare.deploy.deployed import Deployed, parse_status
from lanshare.deploy.ostree_admin import OstreeAdmin
from lanshare.deploy.owner import Identity
from lanshare.errors import CorruptObject, Error, UsageError
from lanshare.ostree.objects import ObjectType, is_checksum
from lanshare.ostree.repo import Repo
from lanshare.progress import ProgressCallback
from lanshare.pull import PullError, PullOptions, pull
from lanshare.pull.configured import record_pull
from lanshare.pull.errors import SourceFailure
from lanshare.pull.sources import PlanEntry, expand_plan, open_sources, why_no_sources
from lanshare.update_path import MAX_HISTORY, PathError, RepoGraph, Step, UpdatePath, compute_path
from lanshare.wire import ObjectName

# Exit statuses of ``lanshare upgrade`` (DESIGN §7 plus "more steps remain" and "reboot needed":
# the next step is deployed and pending, waiting for the machine to boot it).
EXIT_DONE, EXIT_FAILED, EXIT_USAGE, EXIT_MORE, EXIT_REBOOT = 0, 1, 2, 10, 11
# How much of a failing hook's stderr goes into the error message.
HOOK_STDERR_TAIL = 5

Status = Literal["done", "more", "reboot-needed", "failed"]


class UpgradeError(Error):
    """The upgrade cannot go on: the message says what failed (exit 1)."""


class HookFailed(UpgradeError):
    """The deploy hook exited non-zero; nothing was recorded."""


# -- the deployed commit ---------------------------------------------------------------------------


def parse_deployed(text: str) -> tuple[str, str | None]:
    """The deployed commit (and ref) in a checksum, ``rpm-ostree status --json`` or ``ostree admin status``.

    Raises ValueError saying what was expected and quoting what was got.
    """
    deployed = parse_status(text, "")
    return deployed.commit, deployed.ref


def read_deployed(config: UpgradeConfig) -> Deployed:
    """Read the deployed commit as ``[upgrade]`` says; UsageError when it says nothing."""
    if config.deployed_commit_file is not None:
        path = config.deployed_commit_file
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise UpgradeError(
                f"deployed_commit_file {path} does not exist: write the deployed commit's checksum there"
            ) from None
        except (OSError, UnicodeDecodeError) as e:
            raise UpgradeError(f"deployed_commit_file {path}: cannot read: {e}") from None
        if not is_checksum(text.strip()):
            raise UpgradeError(f"deployed_commit_file {path}: expected a 64-hex commit checksum")
        return Deployed(text.strip(), None, f"file {path}")
    if config.deployed_commit_command is not None:
        argv = config.deployed_commit_command
        shown = " ".join(argv)
        try:
            done = subprocess.run(argv, capture_output=True, text=True, errors="replace", check=False)
        except OSError as e:
            raise UpgradeError(f"deployed_commit_command {shown}: cannot run: {e.strerror or e}") from None
        if done.returncode != 0:
            status, stderr = done.returncode, _tail(done.stderr, 1)
            raise UpgradeError(f"deployed_commit_command {shown} exited with status {status}: {stderr}")
        try:
            return parse_status(done.stdout, f"command {shown}")
        except ValueError as e:
            raise UpgradeError(f"deployed_commit_command {shown}: {e}") from None
    if config.deploy == "ostree-admin":
        return OstreeAdmin(config.sysroot, config.os).read_deployed()
    raise UsageError(
        'cannot tell which commit is deployed: set [upgrade] deploy = "ostree-admin", '
        "deployed_commit_file or deployed_commit_command in the configuration (or pass --from COMMIT)"
    )


def record_deployed(path: Path, commit: str) -> None:
    """Write ``commit`` to the deployed-commit file atomically: temp file, fsync, rename, fsync dir."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(commit + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# -- the deploy hook -------------------------------------------------------------------------------


def _tail(text: str, lines: int) -> str:
    kept = [line.strip() for line in text.strip().splitlines()[-lines:]]
    return " | ".join(kept) if kept else "(no output on stderr)"


def run_deploy_hook(argv: Sequence[str], step: Step, repo: Repo) -> subprocess.CompletedProcess[str]:
    """Run ``deploy_command`` for ``step`` (no shell); raise HookFailed unless it exits 0."""
    env = dict(os.environ)
    env.update(
        LANSHARE_COMMIT=step.commit,
        LANSHARE_REF=step.ref,
        LANSHARE_VERSION=step.version or "",
        LANSHARE_REPO=str(repo.path.resolve()),
    )
    shown = " ".join(argv)
    try:
        done = subprocess.run(
            list(argv), env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace"
        )
    except OSError as e:
        raise HookFailed(f"deploy_command {shown}: cannot run: {e.strerror or e}") from None
    if done.returncode != 0:
        code = done.returncode
        status = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        raise HookFailed(
            f"deploy_command {shown} {status} deploying {step.commit} ({step.ref}); nothing recorded; "
            f"stderr: {_tail(done.stderr, HOOK_STDERR_TAIL)}"
        )
    return done


# -- bringing in what the path needs ---------------------------------------------------------------

ProgressFactory = Callable[[], AbstractContextManager[ProgressCallback | None]]
Notify = Callable[[str], None]


@dataclass
class Fetcher:
    """Fetches into the repository from the configured sources (the plan ``lanshare pull`` uses)."""

    repo: Repo
    plan: Sequence[PlanEntry]
    options: PullOptions
    index: Engine | None
    progress: ProgressFactory
    warn: Notify
    tried: set[str] = field(default_factory=set)  # refs and commits already asked for in this run
    # This machine's daemon, which runs the pulls when it takes them (as for ``lanshare pull``):
    # its rounds and this run then never fetch the same objects at once.
    daemon: DaemonPulls | None = None

    @property
    def has_sources(self) -> bool:
        """Whether any source is configured at all (an offline machine may have none)."""
        return bool(expand_plan(self.plan))

    async def pull(self, target: str) -> None:
        """Pull a ref's head or a commit with its whole closure, verified by the pull engine: the
        daemon's when it takes the pull, else this process's."""
        if self.daemon is not None:
            with self.progress() as progress:
                handed = await asyncio.to_thread(self.daemon.pull, target, progress=progress)
            if handed is not None:
                return
            self.daemon = None  # no daemon takes it: this run pulls itself from now on
        with self.progress() as progress:
            result = await pull(
                self.repo, target, self.plan, options=self.options, index=self.index, progress=progress
            )
        # As after `lanshare pull`: peers and stock clients see the new ref in the summary.
        await asyncio.to_thread(record_pull, self.repo, self.index, result, regenerate_summary=False)

    async def refresh_ref(self, ref: str) -> None:
        """Bring ``ref`` up to its newest verified head; a failure only leaves it as it was."""
        self.tried.add(f"ref:{ref}")
        try:
            await self.pull(ref)
        except PullError as e:
            self.warn(f"could not refresh {ref} (computing the path from what is held): {e}")

    async def fetch_history(self, first: str, stop: Iterable[str] = (), limit: int = MAX_HISTORY) -> bool:
        """Fetch the commit objects alone from ``first`` back until one already held; True if any came."""
        self.tried.add(f"commit:{first}")
        stops = set(stop)
        timeouts = self.options.timeouts
        fetched = 0
        async with aiohttp.ClientSession(timeout=timeouts.client_timeout()) as session:
            sources = await open_sources(session, expand_plan(self.plan), timeouts, self.repo.tmp_dir)
            checksum: str | None = first
            while checksum is not None and checksum not in stops and fetched < limit:
                if self.repo.has_object(checksum, ObjectType.COMMIT):
                    break
                data = None
                for source in (s for s in sources if s.usable):
                    with suppress(SourceFailure):  # the source abandons itself
                        data = await source.get_small(ObjectName(checksum, ObjectType.COMMIT))
                    if data is None:
                        continue
                    try:
                        await asyncio.to_thread(self._store_commit_only, checksum, data)
                        break
                    except CorruptObject as e:
                        source.abandon(f"served a corrupt commit: {e}", bad_data=True)
                        data = None
                if data is None:
                    break
                fetched += 1
                checksum = self.repo.load_commit(checksum).parent
        return fetched > 0

    def _store_commit_only(self, checksum: str, data: bytes) -> None:
        # The marker comes first, as in the pull engine: never a commit that looks complete.
        with self.repo.lock(exclusive=False):
            self.repo.mark_partial(checksum)
            self.repo.write_metadata(ObjectType.COMMIT, data, checksum)


def _ref_containing(repo: Repo, commit: str) -> str | None:
    """A local ref whose held history contains ``commit`` (lanshare's own pin refs aside)."""
    graph = RepoGraph(repo)
    for ref, head in repo.list_refs().items():
        if ref.startswith("lanshare/"):
            continue
        checksum: str | None = head
        for _ in range(MAX_HISTORY):
            if checksum is None:
                break
            if checksum == commit:
                return ref
            info = graph.info(checksum)
            checksum = info.parent if info else None
    return None


async def choose_ref(fetcher: Fetcher, deployed: Deployed, ref: str | None) -> str:
    """The ref the deployed commit is on: ``--ref``, its binding, the deployment's origin, a local ref."""
    repo, commit = fetcher.repo, deployed.commit
    if not repo.has_object(commit, ObjectType.COMMIT) and fetcher.has_sources:
        await fetcher.fetch_history(commit, limit=1)
    held = repo.has_object(commit, ObjectType.COMMIT)
    if ref is not None:
        return ref
    if not held and deployed.ref is None:
        where = "no source has it" if fetcher.has_sources else why_no_sources(fetcher.plan)
        raise UpgradeError(
            f"deployed commit {commit} (from {deployed.source}) is unknown: it is not in the "
            f"repository and {where}"
        )
    info = RepoGraph(repo).info(commit)
    found = (info.ref_binding[0] if info and info.ref_binding else None) or deployed.ref
    found = found or _ref_containing(repo, commit)
    if found is None:
        raise UsageError(
            f"cannot tell which ref deployed commit {commit} is on: it has no ref binding and no "
            "local ref leads to it; pass --ref REF"
        )
    return found


async def find_path(fetcher: Fetcher, start: str, ref: str) -> UpdatePath:
    """Compute the path as ``lanshare path`` does, first fetching the refs and history it runs along."""
    # Every round asks for something not asked for before, so the loop ends.
    while True:
        error: PathError | None = None
        try:
            path = compute_path(RepoGraph(fetcher.repo), start, ref)
            wanted = [f"ref:{r}" for r in dict.fromkeys([ref, *(s.ref for s in path.steps)])]
        except PathError as e:
            error, wanted = e, [m if m.startswith("ref:") else f"commit:{m}" for m in e.missing]
        todo = [w for w in wanted if w not in fetcher.tried] if fetcher.has_sources else []
        if not todo:
            if error is not None:
                missing = f" (missing: {', '.join(error.missing)})" if error.missing else ""
                raise UpgradeError(f"cannot compute the update path from {start}: {error}{missing}")
            return path
        for item in todo:
            kind, _, name = item.partition(":")
            if kind == "ref":
                await fetcher.refresh_ref(name)
            else:
                await fetcher.fetch_history(name, stop=[start])


# -- the walk --------------------------------------------------------------------------------------


@dataclass
class UpgradeReport:
    """What one ``lanshare upgrade`` run did (the ``--json`` document)."""

    deployed_before: str | None  # None when it could not be read
    ref: str | None = None
    steps_deployed: list[Step] = field(default_factory=list)
    remaining: list[Step] = field(default_factory=list)
    status: Status = "failed"
    error: str | None = None
    # A step deployed and waiting for the machine to boot it (deployed by this run or an earlier one).
    pending: Step | None = None
    note: str | None = None  # how the deployed commit was read, when worth saying (nothing booted)
    rebooting: bool = False  # the reboot policy started a reboot

    @property
    def reboot_needed(self) -> bool:
        return self.pending is not None

    @property
    def exit_code(self) -> int:
        """0 done, 10 a step was deployed and more remain, 11 reboot needed, 1 failed (usage errors raise)."""
        codes = {"done": EXIT_DONE, "more": EXIT_MORE, "reboot-needed": EXIT_REBOOT, "failed": EXIT_FAILED}
        return codes[self.status]

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dictionary."""
        return {
            "deployed_before": self.deployed_before,
            "ref": self.ref,
            "steps_deployed": [s.to_json() for s in self.steps_deployed],
            "remaining": [s.to_json() for s in self.remaining],
            "status": self.status,
            "reboot_needed": self.reboot_needed,
            "pending": self.pending.to_json() if self.pending else None,
            "rebooting": self.rebooting,
            "note": self.note,
            "error": self.error,
        }


@dataclass
class Upgrade:
    """One run of ``lanshare upgrade``: what to deploy with, and what to tell the person running it."""

    fetcher: Fetcher
    config: UpgradeConfig
    show_step: Callable[[Step, int], None]
    relay: Callable[[subprocess.CompletedProcess[str]], None]  # the hook's output, after it ran
    warn: Notify
    identity: Identity = field(default_factory=Identity)  # root again only to deploy

    async def run(self, deployed: Deployed, ref: str | None, report: UpgradeReport, walk_all: bool) -> None:
        """Deploy the next step (every step with ``walk_all``), filling in ``report`` as it goes."""
        current = deployed.commit
        report.ref = ref = await choose_ref(self.fetcher, deployed, ref)
        while True:
            path = await find_path(self.fetcher, current, ref)
            if not path.steps:
                report.remaining = []
                report.status = "done"
                return
            step = path.steps[0]
            report.remaining = path.steps
            if current == deployed.commit and deployed.pending == step.commit:
                # Deployed by an earlier run, not booted yet: deploying it again would only churn
                # deployments and push the rollback out.
                report.pending, report.status = step, "reboot-needed"
                return
            await self._bring_in(step)
            self._check_deployer(step)
            self.show_step(step, len(path.steps))
            # Deploying may take minutes: off the event loop, like the recording.
            with self.identity.as_root():
                await asyncio.to_thread(self._deploy, step)
                after = await asyncio.to_thread(self._record, step)
            report.steps_deployed.append(step)
            report.remaining = path.steps[1:]
            current, ref = step.commit, step.ref
            if after is not None and after.pending == step.commit:
                report.pending = step  # a booted machine: the step waits for the reboot
            if not report.remaining:
                report.status = "done"
                return
            if not walk_all or report.pending is not None:
                report.status = "more"
                return

    def _deploy(self, step: Step) -> None:
        if self.config.deploy == "ostree-admin":
            OstreeAdmin(self.config.sysroot, self.config.os).deploy(step, self.fetcher.repo.path.resolve())
        elif self.config.deploy_command is not None:
            self.relay(run_deploy_hook(self.config.deploy_command, step, self.fetcher.repo))

    def _check_deployer(self, step: Step) -> None:
        if self.config.deploy is None and self.config.deploy_command is None:
            raise UsageError(
                f"pulled step {step.commit} ({step.ref}) but cannot deploy it: set [upgrade] "
                'deploy = "ostree-admin" or deploy_command to the command that deploys a commit '
                "from the repository"
            )

    async def _bring_in(self, step: Step) -> None:
        repo = self.fetcher.repo
        # Everything complete in the cache entered it verified (DESIGN §6): no second check needed.
        if repo.has_object(step.commit, ObjectType.COMMIT) and not repo.is_partial(step.commit):
            return
        if not self.fetcher.has_sources:
            raise UsageError(
                f"step {step.commit} ({step.ref}) is only held as a commit object and there is no "
                f"source to fetch it from: {why_no_sources(self.fetcher.plan)}"
            )
        try:
            await self.fetcher.pull(step.commit)
        except PullError as e:
            raise UpgradeError(f"cannot pull step {step.commit} ({step.ref}): {e}") from None

    def _record(self, step: Step) -> Deployed | None:
        """Record the step in deployed_commit_file, or read back what the deployer now reports."""
        if self.config.deployed_commit_file is not None:
            path = self.config.deployed_commit_file
            try:
                record_deployed(path, step.commit)
            except OSError as e:
                raise UpgradeError(
                    f"deployed {step.commit} but cannot record it in deployed_commit_file {path}: "
                    f"{e.strerror or e}; write that checksum there before running again"
                ) from None
            return None
        config = self.config
        if config.deployed_commit_command is None and config.deploy is None:
            return None  # --from: nothing to read back
        # The deployer (or the OS tool the hook drives) records the deployment itself: check it agrees.
        try:
            now = read_deployed(self.config)
        except Error as e:
            self.warn(f"after deploying {step.commit}: {e}")
            return None
        if step.commit not in (now.commit, now.pending):
            self.warn(
                f"{now.source} still reports {now.commit} after deploying {step.commit}, and not as pending"
            )
        return now


__all__ = [
    "EXIT_DONE",
    "EXIT_FAILED",
    "EXIT_MORE",
    "EXIT_REBOOT",
    "EXIT_USAGE",
    "Deployed",
    "Fetcher",
    "HookFailed",
    "Upgrade",
    "UpgradeError",
    "UpgradeReport",
    "choose_ref",
    "find_path",
    "parse_deployed",
    "read_deployed",
    "record_deployed",
    "run_deploy_hook",
]

"""``[upgrade] deploy = "ostree-admin"``: deploy a step into an OSTree sysroot with the ostree CLI.

One step, three commands, all libostree's own:

1. ``ostree pull-local --untrusted CACHE COMMIT`` copies the step from lanshare's cache into the
   sysroot's repository, checking every object's checksum on the way (``--untrusted``);
2. the merge deployment's origin file, with its refspec switched to the step's ref (keeping the
   remote, ``origin:os/stable`` → ``origin:os/stable-v2``), is what a checkpoint's ref switch
   needs; the ref is set in the sysroot repository too, so ``ostree admin status`` and a later
   ``ostree admin upgrade`` agree;
3. ``ostree admin deploy --os=OS --origin-file=F COMMIT`` deploys it; without ``--karg*`` options
   libostree keeps the merge deployment's kernel arguments.

On a booted machine the new deployment is pending until the next boot; in a sysroot where nothing
is booted (an image build) it becomes the default deployment at once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lanshare.deploy.deployed import Deployed, Deployment, from_deployments, parse_ostree_admin
from lanshare.errors import Error
from lanshare.update_path import Step

# `ostree admin status` reads a few files; a hung one must not hang a timer or the status page.
STATUS_TIMEOUT = 60.0


class DeployFailed(Error):
    """An ostree command failed; the message names it and quotes its error."""


def _ostree() -> str:
    found = shutil.which("ostree")
    if found is None:
        raise DeployFailed(
            '[upgrade] deploy = "ostree-admin" needs the ostree command, which is not installed'
        )
    return found


def _run(argv: Sequence[str], what: str, timeout: float | None = None) -> str:
    try:
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise DeployFailed(f"{what}: `{' '.join(argv)}` did not finish in {timeout:.0f} s") from None
    except OSError as e:
        raise DeployFailed(f"{what}: cannot run {argv[0]}: {e.strerror or e}") from None
    if done.returncode != 0:
        error = " | ".join(done.stderr.strip().splitlines()[-3:]) or "(no output on stderr)"
        raise DeployFailed(f"{what}: `{' '.join(argv)}` exited with status {done.returncode}: {error}")
    return done.stdout


def switch_refspec(origin: str, ref: str) -> tuple[str, str]:
    """``origin`` (a deployment's origin file) with its refspec's ref set to ``ref``, and that refspec.

    The remote is kept; every other key and group of the file stays as it was."""
    lines = origin.splitlines()
    group, at, remote = None, None, ""
    for number, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("["):
            group = stripped
        elif group == "[origin]" and stripped.partition("=")[0].strip() == "refspec":
            at = number
            old = stripped.partition("=")[2].strip()
            remote = old.rpartition(":")[0]
    refspec = f"{remote}:{ref}" if remote else ref
    if at is not None:
        lines[at] = f"refspec={refspec}"
    elif "[origin]" in (line.strip() for line in lines):
        lines.insert([line.strip() for line in lines].index("[origin]") + 1, f"refspec={refspec}")
    else:
        lines = ["[origin]", f"refspec={refspec}", *lines]
    return "\n".join(lines) + "\n", refspec


@dataclass(frozen=True)
class OstreeAdmin:
    """The sysroot at ``sysroot`` and the stateroot ``osname`` (default: the booted deployment's)."""

    sysroot: Path
    osname: str | None = None

    @property
    def source(self) -> str:
        return f"ostree admin status --sysroot={self.sysroot}"

    def deployments(self) -> list[Deployment]:
        """``ostree admin status``, parsed; DeployFailed quoting the output when it cannot be."""
        argv = [_ostree(), "admin", "status", f"--sysroot={self.sysroot}"]
        text = _run(argv, "reading the deployed commit", STATUS_TIMEOUT)
        if text.strip() == "No deployments.":
            raise DeployFailed(
                f"no deployments in the sysroot {self.sysroot}: deploy one with `ostree admin deploy`"
            )
        try:
            return parse_ostree_admin(text)
        except ValueError as e:
            raise DeployFailed(f"{self.source}: {e}") from None

    def read_deployed(self) -> Deployed:
        """The booted deployment's commit (else the default one's) and the pending one."""
        return from_deployments(self.deployments(), self.source)

    def _merge_deployment(self, deployments: list[Deployment]) -> Deployment:
        # libostree's merge deployment: the booted one, else the first of the stateroot.
        booted = [d for d in deployments if d.booted]
        osname = self.osname or (booted[0] if booted else deployments[0]).osname
        same = [d for d in deployments if d.osname == osname]
        if same:
            return next((d for d in same if d.booted), same[0])
        raise DeployFailed(
            f"no deployment of stateroot {osname!r} in {self.sysroot} to take kernel arguments and origin "
            f"from: deploy the first one with `ostree admin deploy --os={osname}`"
        )

    def deploy(self, step: Step, cache: Path) -> str:
        """Pull ``step`` from the cache, switch the origin to its ref, deploy; returns the refspec."""
        ostree = _ostree()
        merge = self._merge_deployment(self.deployments())
        repo = self.sysroot / "ostree" / "repo"
        _run(
            [ostree, f"--repo={repo}", "pull-local", "--untrusted", str(cache), step.commit],
            f"pulling {step.commit} into the sysroot",
        )
        deploy_dir = self.sysroot / "ostree" / "deploy" / merge.osname / "deploy"
        origin_path = deploy_dir / f"{merge.commit}.{merge.serial}.origin"
        try:
            old = origin_path.read_text()
        except FileNotFoundError:
            old = ""
        except OSError as e:
            raise DeployFailed(
                f"cannot read the origin of the current deployment {origin_path}: {e.strerror or e}"
            ) from None
        origin, refspec = switch_refspec(old, step.ref)
        _run(
            [ostree, f"--repo={repo}", "refs", "--force", f"--create={refspec}", step.commit],
            f"setting {refspec}",
        )
        fd, origin_file = tempfile.mkstemp(prefix="lanshare-origin-", suffix=".origin")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(origin)
            argv = [ostree, "admin", "deploy", f"--sysroot={self.sysroot}", f"--os={merge.osname}"]
            _run([*argv, f"--origin-file={origin_file}", step.commit], f"deploying {step.commit}")
        finally:
            os.unlink(origin_file)
        return refspec

"""A Flatpak publisher and Flatpak clients for tests: Debian's ``flatpak`` 1.14 CLI, no network.

The publisher builds a runtime and an app that uses it (TESTING.md's recipe: the runtime is
installed into a private user installation so ``build-init`` can find it) and exports them with
``build-export`` / ``build-update-repo``, which also writes the appstream refs, ``xa.cache``,
``summary.idx`` and ``summaries/``.  Every client gets its own HOME.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

FLATPAK = shutil.which("flatpak")
COLLECTION = "org.test.Apps"
APP_ID = "org.test.Hello"
APP = f"app/{APP_ID}/x86_64/stable"
RUNTIME = "runtime/org.test.Platform/x86_64/1"
APPSTREAM = ("appstream/x86_64", "appstream2/x86_64")
REFS = (RUNTIME, APP, *APPSTREAM)


def home_env(home: Path) -> dict[str, str]:
    """An environment whose Flatpak user installation, config and cache live under ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "LANSHARE_"))}
    return env | {
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_CACHE_HOME": str(home / "cache"),
    }


def flatpak(env: dict[str, str], *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the flatpak CLI; a failure with ``check`` fails with its output."""
    assert FLATPAK is not None
    done = subprocess.run(
        [FLATPAK, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"flatpak {' '.join(map(str, args))} failed:\n{done.stdout}\n{done.stderr}")
    return done


@dataclass
class Publisher:
    """A Flatpak repository and the build directories to publish new versions into it."""

    root: Path
    repo: Path
    sign: tuple[str, ...]  # --gpg-sign/--gpg-homedir, or nothing for an unsigned repo
    collection: tuple[str, ...]  # --collection-id=…, or nothing
    env: dict[str, str]

    def publish_app(self, version: str, *, update_summary: bool = True) -> None:
        """Export the app with a changed file (a new commit); update the summary unless told not to."""
        app = self.root / "app"
        (app / "files" / "share").mkdir(parents=True, exist_ok=True)
        (app / "files" / "share" / "version").write_text(version + "\n")
        no_update = () if update_summary else ("--no-update-summary",)
        flatpak(self.env, "build-export", *self.collection, *self.sign, *no_update, self.repo, app, "stable")
        if update_summary:
            self.update_repo()

    def update_repo(self) -> None:
        """``flatpak build-update-repo``: appstream refs, xa.cache, summary.idx, summaries/."""
        flatpak(self.env, "build-update-repo", "--title=Test Apps", *self.collection, *self.sign, self.repo)


def build_publisher(root: Path, sign: tuple[str, ...], collection_id: str | None) -> Publisher:
    """A runtime and an app v1, exported (signed when ``sign`` is given) and summarised."""
    env = home_env(root / "home")
    collection = (f"--collection-id={collection_id}",) if collection_id else ()
    repo = root / "repo"
    runtime = root / "runtime"
    for tree in ("files", "usr"):  # build-export wants files/; the runtime's content is either
        (runtime / tree / "share").mkdir(parents=True)
        (runtime / tree / "share" / "platform").write_text("platform 1\n" * 100)
    (runtime / "metadata").write_text(
        "[Runtime]\nname=org.test.Platform\nruntime=org.test.Platform/x86_64/1\nsdk=org.test.Platform/x86_64/1\n"
    )
    flatpak(env, "build-export", "--runtime", *collection, *sign, repo, runtime, "1")
    # build-init needs the runtime installed: a private user installation, from the repo itself.
    flatpak(env, "--user", "remote-add", "--no-gpg-verify", "build", f"file://{repo}")
    flatpak(env, "--user", "install", "-y", "--noninteractive", "build", "org.test.Platform")
    app = root / "app"
    flatpak(env, "build-init", app, APP_ID, "org.test.Platform", "org.test.Platform", "1")
    (app / "files" / "bin").mkdir(parents=True)
    hello = app / "files" / "bin" / "hello"
    hello.write_text("#!/bin/sh\necho hello\n")
    hello.chmod(0o755)
    flatpak(env, "build-finish", "--command=hello", app)
    publisher = Publisher(root, repo, sign, collection, env)
    publisher.publish_app("1")
    return publisher

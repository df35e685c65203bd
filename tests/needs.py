"""One way for a test to say that something it needs is missing: skip, except under CI, where it fails.

Under ``CI=true`` (.ci/setup installs every tool and the suite runs as root) a skipped test would
hide a broken setup, so a missing tool or a non-root run fails there instead of skipping.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """Whether the suite runs under CI (``CI=true``)."""
    return os.environ.get("CI", "").lower() == "true"


def missing(what: str) -> NoReturn:
    """Skip the test because ``what`` is missing; under CI, fail it."""
    message = f"{what} (.ci/setup installs it; tests run as root)"
    if in_ci():
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


def need_tool(name: str) -> str:
    """The path of the command ``name``, or :func:`missing`."""
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed")
    return path


def need_root(why: str) -> None:
    """:func:`missing` unless running as root."""
    if os.geteuid() != 0:
        missing(f"not root: {why} needs root")


def check(what: str) -> None:
    """:func:`missing` unless ``what`` is here: ``"root"``, ``"namespaces"``, or a command's name."""
    if what == "root":
        need_root("this test")
    elif what == "namespaces":
        from lanshare.netns import unavailable_reason

        if (reason := unavailable_reason()) is not None:
            missing(reason)
    else:
        need_tool(what)

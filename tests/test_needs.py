"""A test whose tool is missing is skipped on a developer's machine and fails under CI=true."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

MODULE = """
import pytest
from tests import needs

@pytest.mark.needs("lanshare-no-such-tool")
def test_marked():
    pass

def test_called():
    needs.need_tool("lanshare-no-such-tool")

def test_present():
    needs.need_tool("sh")
"""


# Under CI the marked test fails in its setup (an error), the other in its body.
@pytest.mark.parametrize(("ci", "outcome"), [("", {"skipped": 2}), ("true", {"failed": 1, "errors": 1})])
def test_missing_tools_skip_or_fail_under_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str, outcome: dict[str, int]
) -> None:
    monkeypatch.setenv("CI", ci)
    pytester.makeconftest("from tests.conftest import pytest_configure, pytest_runtest_setup\n")
    pytester.makepyfile(test_tools=MODULE)
    # No optional plugin in the inner run (pytest-benchmark, if installed, errors under an xdist worker).
    plugins_off = ("no:cacheprovider", "no:asyncio", "no:aiohttp", "no:benchmark")
    result = pytester.runpytest_inprocess(*(arg for name in plugins_off for arg in ("-p", name)))
    result.assert_outcomes(passed=1, **outcome)
    if ci:
        assert result.stdout.str().count("CI=true and lanshare-no-such-tool is not installed") >= 2

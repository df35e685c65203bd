"""Global-looking options (``--config``, ``--repo``, ``--json``) work before the subcommand too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import build_tree, lanshare

# Every command that reads the configuration, with the arguments it needs to get that far.
COMMANDS = [
    ["prune"],
    ["reindex"],
    ["pin", "abc"],
    ["fsck"],
    ["path", "--from", "x"],
    ["pull", "os/stable"],
    ["upgrade"],
    ["peers"],
    ["summary"],
    ["status"],
]


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "lanshare.toml"
    path.write_text(
        f'[repo]\npath = "{tmp_path}/repo"\n[database]\nurl = "sqlite:///{tmp_path}/index.sqlite"\n{extra}'
    )
    return path


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_config_before_the_subcommand_is_the_config_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    # A config that is bad in a way every command notices: the error names this very file.
    config = _config(tmp_path, '[retention]\nmax_size = "-5GB"\n')
    assert lanshare("--config", config, *command) == 2
    assert f"{config}: retention.max_size: expected" in capsys.readouterr().err


def test_repo_and_json_before_the_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo, tree = tmp_path / "repo", build_tree(tmp_path / "tree")
    assert lanshare("--repo", repo, "commit", "--branch", "os/stable", "--tree", tree, "--no-xattrs") == 0
    config = _config(tmp_path)
    capsys.readouterr()
    assert lanshare("--config", config, "--json", "reindex") == 0
    assert json.loads(capsys.readouterr().out)["commits"] == 1
    # After the subcommand still wins over before it (the nearer one is what the user meant).
    other = tmp_path / "other.toml"
    other.write_text('[retention]\nmax_size = "-5GB"\n')
    assert lanshare("--config", config, "reindex", "--config", other) == 2
    assert str(other) in capsys.readouterr().err


def test_commit_still_requires_a_repo(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert lanshare("commit", "--branch", "b", "--tree", tmp_path) == 2
    assert "required: --repo" in capsys.readouterr().err


HEAVY = ("sqlalchemy", "alembic", "aiohttp", "zeroconf")
_PROBE = """
import contextlib, io, sys
from lanshare.cli import main
with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()), \\
        contextlib.redirect_stderr(io.StringIO()):
    main(sys.argv[1:])
print(" ".join(m for m in %r if m in sys.modules))
"""


@pytest.mark.parametrize("command", [["--help"], ["path", "--from", "x"], ["status"]], ids=lambda c: c[0])
def test_light_commands_do_not_import_the_database_or_network_stacks(
    tmp_path: Path, command: list[str]
) -> None:
    """Start-up time is imports: `--help`, `path` and `status` load no SQLAlchemy/Alembic/aiohttp/zeroconf."""
    import subprocess
    import sys

    config = _config(tmp_path)
    argv = [*command] if command == ["--help"] else [*command, "--config", str(config)]
    done = subprocess.run(
        [sys.executable, "-c", _PROBE % (HEAVY,), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.split() == []

"""The configuration loader: defaults, files, conf.d, environment, and one-line errors for every mistake."""

from __future__ import annotations

import base64
import dataclasses
import re
from datetime import timedelta
from pathlib import Path

import pytest

from lanshare import config
from lanshare.config import (
    Config,
    ConfigError,
    DatabaseConfig,
    ListenAddress,
    OriginConfig,
    Pin,
    PullConfig,
    RepoConfig,
    RetentionConfig,
    SharingConfig,
    StatusConfig,
    TrustConfig,
    UpgradeConfig,
    load_config,
)
from lanshare.errors import UsageError
from lanshare.units import format_duration, format_size, parse_duration, parse_size

GiB = 1024**3
KEY_A = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
KEY_B = "Pt8y+hL+I6mm2lTQnJ2FI7c6dl0yh66c9MfMLIbz0nA="
COMMIT = "0f3b1c8e6c9ad1b9e5d2a47f3c1e0b9a8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a"
EXAMPLE = Path(__file__).resolve().parent.parent / "systemd" / "lanshare.toml.example"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def defaults(state_dir: Path = Path("/var/lib/lanshare")) -> Config:
    return Config(
        state_dir=state_dir,
        repo=RepoConfig(path=state_dir / "repo"),
        database=DatabaseConfig(url=f"sqlite:///{state_dir}/index.sqlite"),
        origin=OriginConfig(),
        pull=PullConfig(),
        trust=TrustConfig(),
        sharing=SharingConfig(),
        status=StatusConfig(),
        retention=RetentionConfig(),
        pins=(),
        upgrade=UpgradeConfig(),
    )


def test_nothing_configured_gives_working_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", tmp_path / "etc" / "lanshare.toml")
    loaded = load_config(environ={})
    assert loaded == defaults()
    assert loaded.repo.path == Path("/var/lib/lanshare/repo")
    assert loaded.database.url == "sqlite:////var/lib/lanshare/index.sqlite"
    assert loaded.origin.url is None
    assert loaded.origin.poll_interval == timedelta(hours=1)
    assert loaded.pull.order == ("lan", "origin")
    assert loaded.pull.parallel == 8
    assert loaded.trust.require_signatures is True
    assert str(loaded.sharing.listen) == "0.0.0.0:8089"
    assert str(loaded.status.listen) == "127.0.0.1:8090"
    assert loaded.sharing.max_upload_rate is None
    assert loaded.retention == RetentionConfig(3, timedelta(days=30), 20 * GiB)
    assert loaded.files == ()


def test_conf_d_is_read_even_without_the_main_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    main = tmp_path / "etc" / "lanshare.toml"
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", main)
    dropin = write(tmp_path / "etc" / "conf.d" / "50-site.toml", "[pull]\nparallel = 2\n")
    loaded = load_config(environ={})
    assert loaded.pull.parallel == 2
    assert loaded.files == (dropin,)


FULL = f"""
[repo]
path = "/srv/lanshare/repo"
collection_id = "com.example.Os"

[database]
url = "postgresql+psycopg://lanshare@db.example.com/lanshare"

[origin]
url = "https://ostree.example.com/repo"
refs = ["os/eos/amd64/stable", "os/eos/amd64/stable-v2"]
poll_interval = "1h30m"

[pull]
order = ["origin", "lan"]
parallel = 16

[trust]
gpg_keyring = "/etc/lanshare/keyring.gpg"
ed25519_keys = ["{KEY_A}", "{KEY_B}"]
require_signatures = false

[sharing]
listen = "[::]:9000"
advertise = false
discovery = false
interfaces = ["eth0", "wlp2s0"]
peers = ["http://192.168.1.20:8089", "https://cache.example.com/"]
max_connections = 10
max_upload_rate = "10MiB/s"
share_on_battery = false
share_on_metered = false

[status]
listen = "localhost:9001"

[retention]
keep_latest = 0
keep_younger_than = "2w"
max_size = "1.5G"

[[pin]]
ref = "os/eos/*/stable"
reason = "the classroom laptops"

[[pin]]
commit = "{COMMIT.upper()}"

[upgrade]
deploy_command = "/usr/libexec/deploy --commit 'with space'"
deployed_commit_command = ["ostree", "admin", "status"]
"""


def test_full_file_round_trips_into_dataclasses(tmp_path: Path) -> None:
    main = write(tmp_path / "lanshare.toml", FULL)
    loaded = load_config(main, environ={"STATE_DIRECTORY": "/var/lib/lanshare"})
    assert loaded == Config(
        state_dir=Path("/var/lib/lanshare"),
        repo=RepoConfig(Path("/srv/lanshare/repo"), "com.example.Os"),
        database=DatabaseConfig("postgresql+psycopg://lanshare@db.example.com/lanshare"),
        origin=OriginConfig(
            "https://ostree.example.com/repo",
            ("os/eos/amd64/stable", "os/eos/amd64/stable-v2"),
            timedelta(minutes=90),
        ),
        pull=PullConfig(("origin", "lan"), 16),
        trust=TrustConfig(
            Path("/etc/lanshare/keyring.gpg"),
            (base64.b64decode(KEY_A), base64.b64decode(KEY_B)),
            False,
        ),
        sharing=SharingConfig(
            listen=ListenAddress("::", 9000),
            advertise=False,
            discovery=False,
            interfaces=("eth0", "wlp2s0"),
            peers=("http://192.168.1.20:8089", "https://cache.example.com/"),
            max_connections=10,
            max_upload_rate=10 * 1024**2,
            share_on_battery=False,
            share_on_metered=False,
        ),
        status=StatusConfig(ListenAddress("localhost", 9001)),
        retention=RetentionConfig(0, timedelta(weeks=2), 1536 * 1024**2),
        pins=(Pin(ref="os/eos/*/stable", reason="the classroom laptops"), Pin(commit=COMMIT)),
        upgrade=UpgradeConfig(
            deploy_command=("/usr/libexec/deploy", "--commit", "with space"),
            deployed_commit_command=("ostree", "admin", "status"),
        ),
        files=(main,),
    )
    assert str(loaded.sharing.listen) == "[::]:9000"


def test_loaded_config_is_frozen(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path / "lanshare.toml", ""), environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.retention.max_size = 1  # type: ignore[misc]


def test_conf_d_files_override_in_name_order_and_pins_append(tmp_path: Path) -> None:
    main = write(tmp_path / "lanshare.toml", '[retention]\nmax_size = "1GiB"\nkeep_latest = 7\n')
    main_pin = '[[pin]]\nref = "os/main"\n'
    write(main, main.read_text() + main_pin)
    confd = tmp_path / "conf.d"
    # String order: "10-" sorts before "9-", as the example file warns.
    write(confd / "9-last.toml", '[retention]\nmax_size = "3GiB"\n[[pin]]\nref = "os/nine"\n')
    write(confd / "10-first.toml", '[retention]\nmax_size = "2GiB"\n[origin]\nrefs = ["a", "b"]\n')
    write(confd / "50-refs.toml", '[origin]\nrefs = ["c"]\n[[pin]]\nref = "os/fifty"\n')
    write(confd / ".hidden.toml", "this is not toml")
    write(confd / "README", "not read either")
    write(confd / "60-old.toml.bak", "nor this")
    loaded = load_config(main, environ={})
    assert loaded.retention.max_size == 3 * GiB
    assert loaded.retention.keep_latest == 7
    assert loaded.origin.refs == ("c",)
    assert [pin.ref for pin in loaded.pins] == ["os/main", "os/fifty", "os/nine"]
    assert loaded.files == (main, confd / "10-first.toml", confd / "50-refs.toml", confd / "9-last.toml")


def test_empty_string_unsets_an_optional_key(tmp_path: Path) -> None:
    main = write(
        tmp_path / "lanshare.toml",
        '[origin]\nurl = "https://example.com/repo"\n[upgrade]\ndeployed_commit_file = "/run/deployed"\n',
    )
    write(
        tmp_path / "conf.d" / "50.toml",
        '[upgrade]\ndeployed_commit_file = ""\ndeployed_commit_command = "x"\n',
    )
    loaded = load_config(main, environ={"LANSHARE_ORIGIN_URL": ""})
    assert loaded.origin.url is None
    assert loaded.upgrade.deployed_commit_file is None
    assert loaded.upgrade.deployed_commit_command == ("x",)


def test_environment_overrides_files(tmp_path: Path) -> None:
    main = write(tmp_path / "lanshare.toml", '[retention]\nmax_size = "1GiB"\n[origin]\nrefs = ["old"]\n')
    environ = {
        "LANSHARE_RETENTION_MAX_SIZE": "5GiB",
        "LANSHARE_RETENTION_KEEP_YOUNGER_THAN": "12h",
        "LANSHARE_RETENTION_KEEP_LATEST": "1",
        "LANSHARE_ORIGIN_REFS": "os/stable, os/stable-v2",
        "LANSHARE_ORIGIN_URL": "file:///srv/repo",
        "LANSHARE_PULL_ORDER": '["origin"]',
        "LANSHARE_TRUST_REQUIRE_SIGNATURES": "no",
        "LANSHARE_TRUST_ED25519_KEYS": KEY_A,
        "LANSHARE_SHARING_LISTEN": "10.0.0.5:8089",
        "LANSHARE_SHARING_ADVERTISE": "off",
        "LANSHARE_SHARING_INTERFACES": "",
        "LANSHARE_SHARING_MAX_UPLOAD_RATE": "0",
        "LANSHARE_UPGRADE_DEPLOY_COMMAND": '["/bin/sh", "-c", "deploy && reboot"]',
        # Other LANSHARE_ variables belong to other parts of the program and are left alone.
        "LANSHARE_CONFIG": "/elsewhere.toml",
        "LANSHARE_LOG_LEVEL": "debug",
    }
    loaded = load_config(main, environ=environ)
    assert loaded.retention == RetentionConfig(1, timedelta(hours=12), 5 * GiB)
    assert loaded.origin == OriginConfig(
        "file:///srv/repo", ("os/stable", "os/stable-v2"), timedelta(hours=1)
    )
    assert loaded.pull.order == ("origin",)
    assert loaded.trust.require_signatures is False
    assert len(loaded.trust.ed25519_keys) == 1
    assert loaded.sharing.listen == ListenAddress("10.0.0.5", 8089)
    assert loaded.sharing.advertise is False
    assert loaded.sharing.interfaces == ()
    assert loaded.sharing.max_upload_rate is None
    assert loaded.upgrade.deploy_command == ("/bin/sh", "-c", "deploy && reboot")


def test_state_directory_comes_from_the_environment(tmp_path: Path) -> None:
    main = write(tmp_path / "lanshare.toml", "")
    systemd = load_config(main, environ={"STATE_DIRECTORY": "/var/lib/private/lanshare:/var/lib/other"})
    assert systemd == dataclasses.replace(defaults(Path("/var/lib/private/lanshare")), files=(main,))
    ours = load_config(
        main, environ={"STATE_DIRECTORY": "/var/lib/lanshare", "LANSHARE_STATE_DIR": "/srv/ls"}
    )
    assert ours.state_dir == Path("/srv/ls")
    assert ours.repo.path == Path("/srv/ls/repo")
    assert ours.database.url == "sqlite:////srv/ls/index.sqlite"


def test_config_path_replaces_the_default_and_brings_its_own_conf_d(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The default location is broken, so reading it at all would fail the test.
    write(tmp_path / "etc" / "lanshare.toml", "[nonsense]\n")
    write(tmp_path / "etc" / "conf.d" / "10.toml", "[nonsense]\n")
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", tmp_path / "etc" / "lanshare.toml")
    other = write(tmp_path / "other" / "test.toml", "[pull]\nparallel = 3\n")
    dropin = write(tmp_path / "other" / "conf.d" / "10.toml", "[pull]\nparallel = 4\n")
    loaded = load_config(other, environ={})
    assert loaded.pull.parallel == 4
    assert loaded.files == (other, dropin)


def test_example_file_documents_the_real_defaults() -> None:
    # Uncommenting every "#key = value" line of the example must change nothing.
    text = EXAMPLE.read_text()
    uncommented = re.sub(r"^#(?=[a-z0-9_]+ = )", "", text, flags=re.MULTILINE)
    assert uncommented != text
    documented = set(re.findall(r"^([a-z0-9_]+) = ", uncommented, flags=re.MULTILINE))
    every_key = {f.name for section in config._SECTIONS.values() for f in dataclasses.fields(section)}
    assert documented == every_key
    for pin_key in ("ref", "commit", "reason"):
        assert f"\n# {pin_key} = " in text


def test_example_file_loads_as_the_defaults(tmp_path: Path) -> None:
    text = re.sub(r"^#(?=[a-z0-9_]+ = )", "", EXAMPLE.read_text(), flags=re.MULTILINE)
    main = write(tmp_path / "lanshare.toml", text)
    assert load_config(main, environ={}) == dataclasses.replace(defaults(), files=(main,))


def test_pin_globs_match_refs() -> None:
    pin = Pin(ref="os/eos/*/stable")
    assert pin.matches("os/eos/amd64/stable")
    assert pin.matches("os/eos/a/b/stable")
    assert not pin.matches("os/eos/amd64/beta")
    assert Pin(ref="os/[!x]*").matches("os/stable")
    assert not Pin(commit=COMMIT).matches("os/stable")


def test_config_error_is_a_usage_error() -> None:
    error = ConfigError("/etc/x.toml", "pull.parallel", "expected an integer")
    assert isinstance(error, UsageError)
    assert (error.source, error.key, error.problem) == ("/etc/x.toml", "pull.parallel", "expected an integer")


def _dangling(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(path.parent / "gone.toml")


def _directory(path: Path) -> None:
    path.mkdir(parents=True)


SECTIONS = (
    "[database], [origin], [pull], [repo], [retention], [sharing], [status], [trust], [upgrade], [[pin]]"
)
SIZE = 'a size greater than zero like "20GiB", "500MB" or a number of bytes'
REF_GLOB = 'a ref glob like "os/*"'

# (main file, conf.d/50.toml, environment, expected message); "{d}" is the config directory and
# "{main}" the main file.
# A file given as a callable is made by calling it with the path instead of writing text.
BAD: list[tuple[str, object, object, dict[str, str], str]] = [
    (
        "unknown section",
        "[retention]\nkeep_latest = 1\n[mirror]\nurl = 1\n",
        None,
        {},
        f"{{main}}: mirror: unknown section; expected one of {SECTIONS}",
    ),
    (
        "unknown key",
        '[retention]\nmax_sise = "1GiB"\n',
        None,
        {},
        "{main}: retention.max_sise: unknown key; expected one of keep_latest, keep_younger_than, max_size",
    ),
    (
        "state_dir is not a file key",
        'state_dir = "/srv"\n',
        None,
        {},
        "{main}: state_dir: not a file setting; expected LANSHARE_STATE_DIR or systemd's StateDirectory=",
    ),
    (
        "section that is not a table",
        "retention = 5\n",
        None,
        {},
        "{main}: retention: expected a table [retention], got 5",
    ),
    (
        "wrong type",
        '[pull]\nparallel = "8"\n',
        None,
        {},
        '{main}: pull.parallel: expected an integer from 1 to 64, got "8"',
    ),
    (
        "parallel zero",
        "[pull]\nparallel = 0\n",
        None,
        {},
        "{main}: pull.parallel: expected an integer from 1 to 64, got 0",
    ),
    (
        "number for a boolean",
        "[trust]\nrequire_signatures = 1\n",
        None,
        {},
        "{main}: trust.require_signatures: expected true or false, got 1",
    ),
    (
        "negative size",
        '[retention]\nmax_size = "-5GB"\n',
        None,
        {},
        f'{{main}}: retention.max_size: expected {SIZE}, got "-5GB"',
    ),
    (
        "zero size",
        "[retention]\nmax_size = 0\n",
        None,
        {},
        f"{{main}}: retention.max_size: expected {SIZE}, got 0",
    ),
    (
        "rate in bits",
        '[sharing]\nmax_upload_rate = "10Mb"\n',
        None,
        {},
        '{main}: sharing.max_upload_rate: expected a rate in bytes per second like "10MiB" '
        '(0 for unlimited), got "10Mb"',
    ),
    (
        "bad duration",
        '[retention]\nkeep_younger_than = "30 days ago"\n',
        None,
        {},
        '{main}: retention.keep_younger_than: expected a duration like "30d", "12h" or "1h30m", '
        'got "30 days ago"',
    ),
    (
        "poll interval of zero",
        '[origin]\npoll_interval = "0s"\n',
        None,
        {},
        '{main}: origin.poll_interval: expected a duration of at least 1s like "1h" or "15m", got "0s"',
    ),
    (
        "unbalanced glob",
        '[[pin]]\nref = "os/[stable"\n',
        None,
        {},
        f'{{main}}: pin[1].ref: expected {REF_GLOB} (unmatched "["), got "os/[stable"',
    ),
    (
        "glob with a character no ref has",
        '[[pin]]\nref = "os/*"\n[[pin]]\nref = "os stable"\n',
        None,
        {},
        f'{{main}}: pin[2].ref: expected {REF_GLOB} (" " cannot appear in a ref), got "os stable"',
    ),
    (
        "glob negated the regex way",
        '[[pin]]\nref = "os/[^x]"\n',
        None,
        {},
        f'{{main}}: pin[1].ref: expected {REF_GLOB} (use "[!...]" to negate a character class), '
        'got "os/[^x]"',
    ),
    (
        "pin with both",
        f'[[pin]]\nref = "os/*"\ncommit = "{COMMIT}"\n',
        None,
        {},
        "{main}: pin[1]: expected exactly one of ref or commit, got both",
    ),
    (
        "pin with neither",
        '[[pin]]\nreason = "forgot"\n',
        None,
        {},
        "{main}: pin[1]: expected exactly one of ref or commit, got neither",
    ),
    (
        "pin commit prefix",
        '[[pin]]\ncommit = "0f3b1c8e"\n',
        None,
        {},
        '{main}: pin[1].commit: expected a commit checksum of 64 hex digits, got "0f3b1c8e"',
    ),
    (
        "pin as a single table",
        '[pin]\nref = "os/*"\n',
        None,
        {},
        "{main}: pin: expected [[pin]] tables, got a table",
    ),
    (
        "unknown pin key",
        '[[pin]]\nref = "os/*"\nwhy = "x"\n',
        None,
        {},
        "{main}: pin[1].why: unknown key; expected one of commit, reason, ref",
    ),
    (
        "origin URL with another scheme",
        '[origin]\nurl = "ftp://example.com/repo"\n',
        None,
        {},
        '{main}: origin.url: expected an http, https or file URL like "https://ostree.example.com/repo", '
        'got "ftp://example.com/repo"',
    ),
    (
        "peer URL without a host",
        '[sharing]\npeers = ["http://192.168.1.2:8089", "http:///x"]\n',
        None,
        {},
        '{main}: sharing.peers: expected an array of http(s) URLs like ["http://192.168.1.20:8089"], '
        'got "http:///x"',
    ),
    (
        "collection id with a hyphen",
        '[repo]\ncollection_id = "com.example-os.Os"\n',
        None,
        {},
        '{main}: repo.collection_id: expected a collection ID like "com.example.Os" (two or more '
        'dot-separated elements of A-Z a-z 0-9 _, none starting with a digit), got "com.example-os.Os"',
    ),
    (
        "collection id with one element",
        '[repo]\ncollection_id = "example"\n',
        None,
        {},
        '{main}: repo.collection_id: expected a collection ID like "com.example.Os" (two or more '
        'dot-separated elements of A-Z a-z 0-9 _, none starting with a digit), got "example"',
    ),
    (
        "bad ref name",
        '[origin]\nrefs = ["os/stable", "os/../etc"]\n',
        None,
        {},
        '{main}: origin.refs: expected an array of OSTree ref names like ["os/stable"], got "os/../etc"',
    ),
    (
        "refs given as a string",
        '[origin]\nrefs = "os/stable"\n',
        None,
        {},
        '{main}: origin.refs: expected an array of OSTree ref names like ["os/stable"], got "os/stable"',
    ),
    (
        "duplicate pull order",
        '[pull]\norder = ["lan", "origin", "lan"]\n',
        None,
        {},
        '{main}: pull.order: expected an array of "lan" and "origin", each at most once, like '
        '["lan", "origin"], got ["lan", "origin", "lan"]',
    ),
    (
        "unknown pull source",
        '[pull]\norder = ["lan", "usb"]\n',
        None,
        {},
        '{main}: pull.order: expected an array of "lan" and "origin", each at most once, like '
        '["lan", "origin"], got "usb"',
    ),
    (
        "listen port out of range",
        '[sharing]\nlisten = "0.0.0.0:99999"\n',
        None,
        {},
        '{main}: sharing.listen: expected a "host:port" address like "0.0.0.0:8089" or "[::]:8089", '
        'got "0.0.0.0:99999"',
    ),
    (
        "listen IPv6 without brackets",
        '[status]\nlisten = "::1:8090"\n',
        None,
        {},
        '{main}: status.listen: expected a "host:port" address like "0.0.0.0:8089" or "[::]:8089", '
        'got "::1:8090"',
    ),
    (
        "listen on a mistyped address",
        '[status]\nlisten = "127.0.0.256:8090"\n',
        None,
        {},
        '{main}: status.listen: expected a "host:port" address like "0.0.0.0:8089" or "[::]:8089", '
        'got "127.0.0.256:8090"',
    ),
    (
        "interface name too long",
        '[sharing]\ninterfaces = ["enp0s20f0u1u2u3x"]\n',
        None,
        {},
        '{main}: sharing.interfaces: expected an array of network interface names like ["eth0"], '
        'got "enp0s20f0u1u2u3x"',
    ),
    (
        "ed25519 key of the wrong length",
        '[trust]\ned25519_keys = ["AAAA"]\n',
        None,
        {},
        "{main}: trust.ed25519_keys: expected an array of base64 ed25519 public keys (32 bytes each), "
        'got "AAAA"',
    ),
    (
        "relative keyring path",
        '[trust]\ngpg_keyring = "keyring.gpg"\n',
        None,
        {},
        '{main}: trust.gpg_keyring: expected an absolute path, got "keyring.gpg"',
    ),
    (
        "database URL, password hidden",
        '[database]\nurl = "postgresq://lanshare:hunter2@db/lanshare"\n',
        None,
        {},
        '{main}: database.url: expected an SQLAlchemy URL like "sqlite:////var/lib/lanshare/index.sqlite" '
        'or "postgresql+psycopg://host/db", got "postgresq://lanshare:***@db/lanshare"',
    ),
    (
        "relative SQLite path",
        '[database]\nurl = "sqlite:///index.sqlite"\n',
        None,
        {},
        "{main}: database.url: expected an absolute SQLite path like "
        '"sqlite:////var/lib/lanshare/index.sqlite", got "sqlite:///index.sqlite"',
    ),
    (
        "unbalanced quote in a command",
        '[upgrade]\ndeploy_command = "deploy --reason \'oops"\n',
        None,
        {},
        '{main}: upgrade.deploy_command: expected a command line like "/usr/bin/deploy --now" or an '
        'array like ["/usr/bin/deploy", "--now"], got "deploy --reason \'oops"',
    ),
    (
        "deployed commit from a file and a command, across files",
        '[upgrade]\ndeployed_commit_file = "/run/deployed"\n',
        '[upgrade]\ndeployed_commit_command = "cat /run/deployed"\n',
        {},
        "{d}/conf.d/50.toml: upgrade.deployed_commit_command: expected at most one of "
        "upgrade.deployed_commit_file and upgrade.deployed_commit_command, but upgrade.deployed_commit_file "
        "is set too (in {main})",
    ),
    (
        "bad value in a conf.d file even if overridden later",
        "",
        "[pull]\nparallel = 100\n",
        {"LANSHARE_PULL_PARALLEL": "4"},
        "{d}/conf.d/50.toml: pull.parallel: expected an integer from 1 to 64, got 100",
    ),
    (
        "status listener on the LAN port",
        '[status]\nlisten = "127.0.0.1:8089"\n',
        None,
        {},
        "{main}: status.listen: expected a port other than that of sharing.listen (0.0.0.0:8089), "
        'got "127.0.0.1:8089"',
    ),
    (
        "LAN listener moved onto the status port from the environment",
        "",
        None,
        {"LANSHARE_SHARING_LISTEN": "[::]:8090"},
        "LANSHARE_SHARING_LISTEN: sharing.listen: expected a port other than that of status.listen "
        '(127.0.0.1:8090), got "[::]:8090"',
    ),
    (
        "TOML syntax error",
        "[retention]\nkeep_latest = 3\nmax_size = 20GiB\n",
        None,
        {},
        "{main}: invalid TOML: Expected newline or end of document after a statement (at line 3, column 14)",
    ),
    (
        "not UTF-8",
        b'[repo]\n# caf\xe9\ncollection_id = "a.b"\n',
        None,
        {},
        "{main}: not valid UTF-8 (line 2)",
    ),
    (
        "directory instead of the main file",
        _directory,
        None,
        {},
        "{main}: cannot read: is a directory, expected a TOML file",
    ),
    (
        "dangling symlink in conf.d",
        "",
        _dangling,
        {},
        "{d}/conf.d/50.toml: cannot read: dangling symbolic link to {d}/conf.d/gone.toml",
    ),
    (
        "control characters are escaped to keep one line",
        '[origin]\nrefs = ["os/stable\\nos/beta"]\n',
        None,
        {},
        '{main}: origin.refs: expected an array of OSTree ref names like ["os/stable"], '
        'got "os/stable\\nos/beta"',
    ),
    (
        "environment: bad size",
        "",
        None,
        {"LANSHARE_RETENTION_MAX_SIZE": "-5GB"},
        f'LANSHARE_RETENTION_MAX_SIZE: retention.max_size: expected {SIZE}, got "-5GB"',
    ),
    (
        "environment: unknown key",
        "",
        None,
        {"LANSHARE_RETENTION_MAX_SIZ": "5GiB"},
        "LANSHARE_RETENTION_MAX_SIZ: retention.max_siz: unknown key; expected one of "
        "LANSHARE_RETENTION_KEEP_LATEST, LANSHARE_RETENTION_KEEP_YOUNGER_THAN, LANSHARE_RETENTION_MAX_SIZE",
    ),
    (
        "environment: misspelt section",
        "",
        None,
        {"LANSHARE_RETENTON_MAX_SIZE": "5GiB"},
        'LANSHARE_RETENTON_MAX_SIZE: unknown section "retenton"; did you mean LANSHARE_RETENTION_…?',
    ),
    (
        "environment: not a boolean",
        "",
        None,
        {"LANSHARE_SHARING_ADVERTISE": "maybe"},
        'LANSHARE_SHARING_ADVERTISE: sharing.advertise: expected true or false, got "maybe"',
    ),
    (
        "environment: not an integer",
        "",
        None,
        {"LANSHARE_PULL_PARALLEL": "eight"},
        'LANSHARE_PULL_PARALLEL: pull.parallel: expected an integer from 1 to 64, got "eight"',
    ),
    (
        "environment: broken TOML array",
        "",
        None,
        {"LANSHARE_ORIGIN_REFS": '["os/stable"'},
        'LANSHARE_ORIGIN_REFS: origin.refs: expected an array of OSTree ref names like ["os/stable"], '
        'got "[\\"os/stable\\""',
    ),
    (
        "environment: pins",
        "",
        None,
        {"LANSHARE_PIN_REF": "os/*"},
        "LANSHARE_PIN_REF: pin: pins cannot be set from the environment; expected [[pin]] tables in a file",
    ),
    (
        "environment: relative state directory",
        "",
        None,
        {"LANSHARE_STATE_DIR": "var/lib/lanshare"},
        'LANSHARE_STATE_DIR: state_dir: expected an absolute path, got "var/lib/lanshare"',
    ),
]


@pytest.mark.parametrize(
    ("main", "dropin", "environ", "expected"), [case[1:] for case in BAD], ids=[c[0] for c in BAD]
)
def test_bad_configuration_stops_with_one_line(
    tmp_path: Path, main: object, dropin: object, environ: dict[str, str], expected: str
) -> None:
    path = tmp_path / "lanshare.toml"
    for target, spec in ((path, main), (tmp_path / "conf.d" / "50.toml", dropin)):
        if isinstance(spec, str):
            write(target, spec)
        elif isinstance(spec, bytes):
            target.write_bytes(spec)
        elif callable(spec):
            spec(target)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=environ)
    message = str(caught.value)
    assert message == expected.format(d=tmp_path, main=path)
    assert "\n" not in message


def test_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^.*/lanshre\.toml: cannot read: no such file$"):
        load_config(tmp_path / "lanshre.toml", environ={})


def test_conf_d_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    main = write(tmp_path / "lanshare.toml", "")
    write(tmp_path / "conf.d", "")
    with pytest.raises(ConfigError) as caught:
        load_config(main, environ={})
    assert str(caught.value) == f"{tmp_path}/conf.d: expected a directory of *.toml files"


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("20GiB", 20 * GiB),
        ("20G", 20 * GiB),
        ("20Gi", 20 * GiB),
        ("500MB", 500_000_000),
        ("10kB", 10_000),
        ("1.5G", 1536 * 1024**2),
        ("0.1K", 102),
        (" 4 KiB ", 4096),
        ("123", 123),
        ("0", 0),
        (4096, 4096),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "-5GB", "10Mb", "1gib", "1.5", "1e9", "GiB", "5 GiB extra", "9E"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "duration"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("90s", timedelta(seconds=90)),
        ("1h30m", timedelta(minutes=90)),
        ("1h 30min", timedelta(minutes=90)),
        ("2w", timedelta(weeks=2)),
        ("1.5h", timedelta(minutes=90)),
        ("2 weeks", timedelta(weeks=2)),
        ("90", timedelta(seconds=90)),
        ("0.25", timedelta(milliseconds=250)),
        (3600, timedelta(hours=1)),
    ],
)
def test_parse_duration(text: str | int, duration: timedelta) -> None:
    assert parse_duration(text) == duration


@pytest.mark.parametrize("text", ["", "30D", "1M", "-1h", "h", "1h-", "1 fortnight", "99999999999w"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_size_and_duration_round_trip() -> None:
    assert format_size(20 * GiB) == "20GiB"
    assert format_size(1023) == "1023B"
    assert format_size(1536 * 1024**2) == "1.5GiB"
    assert format_size(500_000_000) == "476.8MiB"
    for size in (0, 1, 1024, 20 * GiB, 3 * 1024**5):
        assert parse_size(format_size(size)) == size
    assert format_duration(timedelta(days=30)) == "30d"
    assert format_duration(timedelta(minutes=90)) == "1h30m"
    assert format_duration(timedelta(0)) == "0s"
    assert format_duration(timedelta(seconds=90.5)) == "1m30.5s"
    for duration in (timedelta(0), timedelta(weeks=2, seconds=1), timedelta(milliseconds=1500)):
        assert parse_duration(format_duration(duration)) == duration


def test_listeners_may_share_a_port_on_different_addresses(tmp_path: Path) -> None:
    main = write(tmp_path / "lanshare.toml", '[sharing]\nlisten = "192.168.1.5:8090"\n')
    assert load_config(main, environ={}).sharing.listen == ListenAddress("192.168.1.5", 8090)


def test_port_0_asks_for_a_free_port_on_both_listeners(tmp_path: Path) -> None:
    text = '[sharing]\nlisten = "127.0.0.1:0"\n[status]\nlisten = "127.0.0.1:0"\n'
    loaded = load_config(write(tmp_path / "lanshare.toml", text), environ={})
    assert loaded.sharing.listen == loaded.status.listen == ListenAddress("127.0.0.1", 0)


def test_a_missing_database_driver_stops_serve_before_it_creates_anything(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    # pg8000 is a PostgreSQL driver lanshare does not depend on: not installed here.
    main = write(tmp_path / "lanshare.toml", '[database]\nurl = "postgresql+pg8000://ls:pw@db/ls"\n')
    state = tmp_path / "state"
    result = subprocess.run(
        [sys.executable, "-m", "lanshare.cli", "serve", "--config", str(main)],
        env={**os.environ, "LANSHARE_STATE_DIR": str(state)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert f"{main}: database.url:" in line
    assert "pip install 'lanshare[postgresql]' and use postgresql+psycopg://" in line
    assert "pw" not in line and "No module named 'pg8000'" in line
    assert not state.exists()

"""Load lanshare's configuration from TOML files and the environment into frozen dataclasses.

Sources, later ones winning key by key:

1. built-in defaults, which work on one machine with nothing configured;
2. the main file, ``/etc/lanshare/lanshare.toml`` or the ``--config`` path (a missing default file
   means "all defaults"; a missing ``--config`` file is an error, since it is almost always a typo);
3. ``conf.d/*.toml`` next to the main file, in name order (files starting with ``.`` are skipped);
   a key set in a later file replaces the earlier value, lists included, while ``[[pin]]`` tables
   from every file are appended;
4. ``LANSHARE_<SECTION>_<KEY>`` environment variables, e.g. ``LANSHARE_RETENTION_MAX_SIZE=5GiB``.
   Lists are comma-separated (``LANSHARE_ORIGIN_REFS=os/stable,os/stable-v2``) or a TOML array
   (``LANSHARE_ORIGIN_REFS='["os/stable"]'``); booleans are true/false, yes/no, on/off or 1/0.
   Every ``LANSHARE_<SECTION>_…`` name is reserved: an unknown key there, or a section name one
   typo away from a real one, is an error rather than a silently ignored setting.

For an optional key (``origin.url``, ``repo.collection_id``, ``trust.gpg_keyring``, the
``[upgrade]`` keys) the empty string means "not set", so a conf.d file or the environment can unset
what the main file set.

The state directory is not a file key: it comes from ``LANSHARE_STATE_DIR``, else systemd's
``STATE_DIRECTORY`` (set by ``StateDirectory=``), else ``/var/lib/lanshare``.  It belongs to the
service manager, which creates it with the right owner and exempts it from ``ProtectSystem=strict``;
a file key could only disagree with the unit.  To put the data elsewhere set ``repo.path`` and
``database.url``, whose defaults live inside the state directory.

Every problem raises :class:`ConfigError`: one line naming the file (or environment variable), the
key as ``section.key``, what is expected and what was found.  The CLI turns it into exit status 2.
How each kind of value is read and checked is :mod:`lanshare.config_values`; this module holds the
sections, their keys and defaults, and the merging of files and environment.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

from lanshare.config_values import (
    ED25519_KEYS,
    INTERFACES,
    ORIGIN_URL,
    PEERS,
    REFS,
    Invalid,
    ListenAddress,
    PullSource,
    absolute_path,
    boolean,
    collection_id,
    command,
    commit,
    database_url,
    deployer,
    describe,
    duration,
    env_bool,
    env_command,
    env_int,
    env_list,
    integer,
    listen,
    optional,
    osname,
    pull_order,
    rate,
    reboot,
    ref_glob,
    size,
    spec,
    string,
)
from lanshare.deploy.reboot import NEVER, RebootPolicy
from lanshare.errors import UsageError

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_SHARING_PORT",
    "DEFAULT_STATE_DIR",
    "DEFAULT_STATUS_PORT",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "ListenAddress",
    "OriginConfig",
    "Pin",
    "PullConfig",
    "PullSource",
    "RepoConfig",
    "RetentionConfig",
    "SharingConfig",
    "StatusConfig",
    "TrustConfig",
    "UpgradeConfig",
    "load_config",
]

DEFAULT_CONFIG_PATH = Path("/etc/lanshare/lanshare.toml")
DEFAULT_STATE_DIR = Path("/var/lib/lanshare")
# Near the usual 8080 alternatives and clear of OSTree tooling; the status port is the LAN port + 1.
DEFAULT_SHARING_PORT = 8089
DEFAULT_STATUS_PORT = 8090
ENV_PREFIX = "LANSHARE_"


class ConfigError(UsageError):
    """A configuration problem, described in one line: source, key, what is expected and what was found."""

    def __init__(self, source: str, key: str | None, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        text = f"{source}: {key}: {problem}" if key else f"{source}: {problem}"
        super().__init__(_one_line(text))


@dataclass(frozen=True)
class RepoConfig:
    """``[repo]``: the local OSTree archive repository."""

    path: Path = field(metadata=spec(absolute_path))  # default: <state_dir>/repo
    collection_id: str | None = field(default=None, metadata=spec(optional(collection_id)))
    # Rewrite a publisher's signed or indexed summary when it is out of date (it loses the signature).
    regenerate_summary: bool = field(default=False, metadata=spec(boolean, env_bool))


@dataclass(frozen=True)
class DatabaseConfig:
    """``[database]``: the SQLAlchemy URL of the index (derived data, rebuilt by ``lanshare reindex``)."""

    url: str = field(metadata=spec(database_url))  # default: sqlite:///<state_dir>/index.sqlite


@dataclass(frozen=True)
class OriginConfig:
    """``[origin]``: where updates come from when online; ``url`` is None on an offline machine."""

    url: str | None = field(default=None, metadata=spec(optional(ORIGIN_URL)))
    refs: tuple[str, ...] = field(default=(), metadata=spec(REFS, env_list))
    poll_interval: timedelta = field(default=timedelta(hours=1), metadata=spec(duration(positive=True)))


@dataclass(frozen=True)
class PullConfig:
    """``[pull]``: where to fetch from, in order of preference, and how many fetches run at once."""

    order: tuple[PullSource, ...] = field(default=("lan", "origin"), metadata=spec(pull_order, env_list))
    parallel: int = field(default=8, metadata=spec(integer(1, 64), env_int))
    # Split a commit's objects with the LAN machines pulling it too (lanshare.pull.fleet);
    # false: each machine fetches everything it cannot get from a peer holding it (the old way).
    coordinate: bool = field(default=True, metadata=spec(boolean, env_bool))


@dataclass(frozen=True)
class TrustConfig:
    """``[trust]``: the keys a commit must be signed with before it enters the cache."""

    gpg_keyring: Path | None = field(default=None, metadata=spec(optional(absolute_path)))
    ed25519_keys: tuple[bytes, ...] = field(default=(), metadata=spec(ED25519_KEYS, env_list))
    require_signatures: bool = field(default=True, metadata=spec(boolean, env_bool))


@dataclass(frozen=True)
class SharingConfig:
    """``[sharing]``: the LAN listener, mDNS, static peers and the limits on serving them."""

    listen: ListenAddress = field(
        default=ListenAddress("0.0.0.0", DEFAULT_SHARING_PORT), metadata=spec(listen)
    )
    advertise: bool = field(default=True, metadata=spec(boolean, env_bool))
    discovery: bool = field(default=True, metadata=spec(boolean, env_bool))
    # Empty: every interface.
    interfaces: tuple[str, ...] = field(default=(), metadata=spec(INTERFACES, env_list))
    peers: tuple[str, ...] = field(default=(), metadata=spec(PEERS, env_list))
    max_connections: int = field(default=64, metadata=spec(integer(1), env_int))
    # Bytes per second; None: unlimited (written as 0).
    max_upload_rate: int | None = field(default=None, metadata=spec(rate))
    share_on_battery: bool = field(default=True, metadata=spec(boolean, env_bool))
    share_on_metered: bool = field(default=True, metadata=spec(boolean, env_bool))


@dataclass(frozen=True)
class StatusConfig:
    """``[status]``: the local status page, JSON API and metrics."""

    listen: ListenAddress = field(
        default=ListenAddress("127.0.0.1", DEFAULT_STATUS_PORT), metadata=spec(listen)
    )


@dataclass(frozen=True)
class RetentionConfig:
    """``[retention]``: what prune keeps besides checkpoints and pins, and the repo's size budget."""

    keep_latest: int = field(default=3, metadata=spec(integer(0), env_int))
    keep_younger_than: timedelta = field(default=timedelta(days=30), metadata=spec(duration(positive=False)))
    max_size: int = field(default=20 * 1024**3, metadata=spec(size(positive=True)))


@dataclass(frozen=True)
class Pin:
    """A ``[[pin]]`` table: keep commits on refs matching ``ref`` (an fnmatch glob) or one ``commit``."""

    ref: str | None = field(default=None, metadata=spec(ref_glob))
    commit: str | None = field(default=None, metadata=spec(commit))
    reason: str = field(default="", metadata=spec(string))

    def matches(self, ref: str) -> bool:
        """Whether this pin's glob matches ``ref``; ``*`` also matches across "/"."""
        return self.ref is not None and fnmatch.fnmatchcase(ref, self.ref)


@dataclass(frozen=True)
class UpgradeConfig:
    """``[upgrade]``: how to deploy a step of the update path and how to learn what is deployed."""

    deploy_command: tuple[str, ...] | None = field(
        default=None, metadata=spec(optional(command), env_command)
    )
    deployed_commit_file: Path | None = field(default=None, metadata=spec(optional(absolute_path)))
    deployed_commit_command: tuple[str, ...] | None = field(
        default=None, metadata=spec(optional(command), env_command)
    )
    # The built-in deployer (lanshare/deploy/ostree_admin.py) and the reboot policy (deploy/reboot.py).
    deploy: str | None = field(default=None, metadata=spec(optional(deployer)))
    sysroot: Path = field(default=Path("/"), metadata=spec(absolute_path))
    os: str | None = field(default=None, metadata=spec(optional(osname)))
    reboot: RebootPolicy = field(default=NEVER, metadata=spec(reboot))
    reboot_command: tuple[str, ...] = field(
        default=("systemctl", "reboot"), metadata=spec(command, env_command)
    )


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``files`` lists the files it was read from, in order."""

    state_dir: Path
    repo: RepoConfig
    database: DatabaseConfig
    origin: OriginConfig
    pull: PullConfig
    trust: TrustConfig
    sharing: SharingConfig
    status: StatusConfig
    retention: RetentionConfig
    pins: tuple[Pin, ...]
    upgrade: UpgradeConfig
    files: tuple[Path, ...] = ()


_SECTIONS: dict[str, type[Any]] = {
    "repo": RepoConfig,
    "database": DatabaseConfig,
    "origin": OriginConfig,
    "pull": PullConfig,
    "trust": TrustConfig,
    "sharing": SharingConfig,
    "status": StatusConfig,
    "retention": RetentionConfig,
    "upgrade": UpgradeConfig,
}
_SECTION_LIST = ", ".join([*(f"[{name}]" for name in sorted(_SECTIONS)), "[[pin]]"])


def _keys(cls: type[Any]) -> dict[str, Mapping[str, Any]]:
    return {spec.name: spec.metadata for spec in fields(cls)}


def _one_line(text: str) -> str:
    """Escape anything that could break the message over lines or hide in a terminal."""
    return "".join(char if char.isprintable() else json.dumps(char)[1:-1] for char in text)


class _Values:
    """Parsed values per section and key, remembering where each came from and in what order."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
        self.origins: dict[tuple[str, str], tuple[int, str]] = {}
        self.pins: list[Pin] = []

    def set(self, section: str, key: str, raw: object, source: str) -> None:
        """Parse ``raw`` for ``section.key`` and record it, or raise ConfigError naming ``source``."""
        spec = _keys(_SECTIONS[section])[key]
        try:
            value = spec["parse"](raw)
        except Invalid as error:
            raise ConfigError(source, f"{section}.{key}", error.describe(raw)) from None
        self.values[section][key] = value
        self.origins[section, key] = (len(self.origins), source)


def _read_toml(path: Path, *, required: bool) -> dict[str, Any] | None:
    """Read one TOML file; None if it is absent and not ``required``."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if path.is_symlink():
            raise ConfigError(
                str(path), None, f"cannot read: dangling symbolic link to {os.readlink(path)}"
            ) from None
        if required:
            raise ConfigError(str(path), None, "cannot read: no such file") from None
        return None
    except IsADirectoryError:
        raise ConfigError(str(path), None, "cannot read: is a directory, expected a TOML file") from None
    except PermissionError:
        raise ConfigError(str(path), None, "cannot read: permission denied") from None
    except OSError as error:
        raise ConfigError(str(path), None, f"cannot read: {error.strerror or error}") from None
    try:
        text = data.decode()
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ConfigError(str(path), None, f"not valid UTF-8 (line {line})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        # tomllib's message ends with "(at line L, column C)".
        raise ConfigError(str(path), None, f"invalid TOML: {error}") from None


def _dropins(directory: Path) -> list[Path]:
    """The conf.d files to read, in name order."""
    try:
        names = sorted(entry.name for entry in os.scandir(directory))
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise ConfigError(str(directory), None, "expected a directory of *.toml files") from None
    except OSError as error:
        raise ConfigError(str(directory), None, f"cannot read: {error.strerror or error}") from None
    # Dot files are editor and package-manager droppings (".#x.toml", ".x.toml.dpkg-new" …).
    return [directory / name for name in names if name.endswith(".toml") and not name.startswith(".")]


def _apply_file(source: str, document: dict[str, Any], values: _Values) -> None:
    """Merge one parsed file into ``values``, checking every section, key and value."""
    for name, content in document.items():
        if name == "pin":
            if not isinstance(content, list) or not all(isinstance(item, dict) for item in content):
                raise ConfigError(source, "pin", f"expected [[pin]] tables, got {describe(content)}")
            for number, table in enumerate(content, start=1):
                values.pins.append(_pin(source, f"pin[{number}]", table))
        elif name in _SECTIONS:
            if not isinstance(content, dict):
                raise ConfigError(source, name, f"expected a table [{name}], got {describe(content)}")
            known = _keys(_SECTIONS[name])
            for key, raw in content.items():
                if key not in known:
                    expected = ", ".join(sorted(known))
                    raise ConfigError(source, f"{name}.{key}", f"unknown key; expected one of {expected}")
                values.set(name, key, raw, source)
        elif name == "state_dir":
            raise ConfigError(
                source, name, "not a file setting; expected LANSHARE_STATE_DIR or systemd's StateDirectory="
            )
        else:
            raise ConfigError(source, name, f"unknown section; expected one of {_SECTION_LIST}")


def _pin(source: str, label: str, table: dict[str, Any]) -> Pin:
    """Parse one ``[[pin]]`` table; ``label`` names it in errors ("pin[2]", counting from 1 per file)."""
    known = _keys(Pin)
    parsed: dict[str, Any] = {}
    for key, raw in table.items():
        if key not in known:
            raise ConfigError(
                source, f"{label}.{key}", f"unknown key; expected one of {', '.join(sorted(known))}"
            )
        try:
            parsed[key] = known[key]["parse"](raw)
        except Invalid as error:
            raise ConfigError(source, f"{label}.{key}", error.describe(raw)) from None
    if ("ref" in parsed) == ("commit" in parsed):
        found = "both" if "ref" in parsed else "neither"
        raise ConfigError(source, label, f"expected exactly one of ref or commit, got {found}")
    return Pin(**parsed)


def _apply_environment(environ: Mapping[str, str], values: _Values) -> None:
    """Apply ``LANSHARE_<SECTION>_<KEY>`` variables, in name order so errors are reproducible."""
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name == "LANSHARE_STATE_DIR":
            continue
        word, _, key_part = name[len(ENV_PREFIX) :].partition("_")
        section, key = word.lower(), key_part.lower()
        if section == "pin":
            raise ConfigError(
                name, "pin", "pins cannot be set from the environment; expected [[pin]] tables in a file"
            )
        if section in _SECTIONS:
            known = _keys(_SECTIONS[section])
            if key not in known:
                expected = ", ".join(
                    f"{ENV_PREFIX}{section.upper()}_{other.upper()}" for other in sorted(known)
                )
                raise ConfigError(
                    name, f"{section}.{key}" if key else section, f"unknown key; expected one of {expected}"
                )
            values.set(section, key, known[key]["env"](environ[name]), name)
        elif close := difflib.get_close_matches(section, _SECTIONS, n=1, cutoff=0.8):
            # Other LANSHARE_ variables may belong to other tools, but one a typo away from a
            # section is almost certainly a setting that would otherwise be silently ignored.
            raise ConfigError(
                name, None, f'unknown section "{section}"; did you mean {ENV_PREFIX}{close[0].upper()}_…?'
            )


def _state_dir(environ: Mapping[str, str]) -> Path:
    """The state directory: LANSHARE_STATE_DIR, else systemd's STATE_DIRECTORY, else the default."""
    for name in ("LANSHARE_STATE_DIR", "STATE_DIRECTORY"):
        text = environ.get(name, "")
        if not text:
            continue
        # systemd joins several StateDirectory= entries with ":"; ours is the first.
        first = text.split(":")[0] if name == "STATE_DIRECTORY" else text
        try:
            return absolute_path(first)
        except Invalid as error:
            raise ConfigError(name, "state_dir", error.describe(first)) from None
    return DEFAULT_STATE_DIR


def _check_upgrade(values: _Values) -> None:
    """Refuse two ways of learning the deployed commit, or of deploying; the key set last is reported."""
    _check_exclusive(values, ("deployed_commit_file", "deployed_commit_command"))
    _check_exclusive(values, ("deploy", "deploy_command"))


def _check_exclusive(values: _Values, pair: tuple[str, str]) -> None:
    upgrade = values.values["upgrade"]
    if all(upgrade.get(key) is not None for key in pair):
        last = max(pair, key=lambda key: values.origins["upgrade", key][0])
        other = pair[0] if last == pair[1] else pair[1]
        source = values.origins["upgrade", last][1]
        problem = (
            f"expected at most one of upgrade.{pair[0]} and upgrade.{pair[1]}, but upgrade.{other} is set too"
        )
        if values.origins["upgrade", other][1] != source:
            problem += f" (in {values.origins['upgrade', other][1]})"
        raise ConfigError(source, f"upgrade.{last}", problem)


_WILDCARDS = ("0.0.0.0", "::")


def _check_listeners(values: _Values, sharing: ListenAddress, status: ListenAddress) -> None:
    """Refuse a status listener that would collide with the LAN listener, naming the one set last."""
    same_host = sharing.host == status.host or sharing.host in _WILDCARDS or status.host in _WILDCARDS
    # Two port-0 listeners each get their own free port.
    if sharing.port != status.port or sharing.port == 0 or not same_host:
        return
    addresses = {"sharing": sharing, "status": status}
    order = {name: values.origins.get((name, "listen"), (-1, ""))[0] for name in addresses}
    # The defaults never collide, so at least one of the two was set somewhere.
    key, other = ("status", "sharing") if order["status"] > order["sharing"] else ("sharing", "status")
    source = values.origins[key, "listen"][1]
    problem = (
        f'expected a port other than that of {other}.listen ({addresses[other]}), got "{addresses[key]}"'
    )
    raise ConfigError(source, f"{key}.listen", problem)


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load the configuration: ``path`` (default /etc/lanshare/lanshare.toml), its conf.d, the environment."""
    environ = os.environ if environ is None else environ
    main = DEFAULT_CONFIG_PATH if path is None else path
    state_dir = _state_dir(environ)
    values = _Values()
    files: list[Path] = []
    document = _read_toml(main, required=path is not None)
    if document is not None:
        _apply_file(str(main), document, values)
        files.append(main)
    for file in _dropins(main.parent / "conf.d"):
        _apply_file(str(file), _read_toml(file, required=True) or {}, values)
        files.append(file)
    _apply_environment(environ, values)
    _check_upgrade(values)

    defaults: dict[str, dict[str, Any]] = {
        "repo": {"path": state_dir / "repo"},
        "database": {"url": f"sqlite:///{state_dir / 'index.sqlite'}"},
    }
    sections = {
        name: cls(**(defaults.get(name, {}) | values.values[name])) for name, cls in _SECTIONS.items()
    }
    if ("status", "listen") not in values.origins and sections["sharing"].listen.port == 0:
        # An ad-hoc daemon on a free LAN port (tests, a second daemon on one machine) gets a free
        # status port too, instead of colliding on the default one; <state>/status-address names it.
        sections["status"] = StatusConfig(ListenAddress(sections["status"].listen.host, 0))
    _check_listeners(values, sections["sharing"].listen, sections["status"].listen)
    return Config(state_dir=state_dir, pins=tuple(values.pins), files=tuple(files), **sections)

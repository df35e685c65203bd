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
"""

from __future__ import annotations

import base64
import binascii
import difflib
import fnmatch
import ipaddress
import json
import os
import re
import shlex
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import date, time, timedelta
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from lanshare.deploy.reboot import NEVER, WINDOW_EXPECTED, RebootPolicy, parse_reboot
from lanshare.errors import UsageError
from lanshare.units import parse_duration, parse_size

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

PullSource = Literal["lan", "origin"]


class ConfigError(UsageError):
    """A configuration problem, described in one line: source, key, what is expected and what was found."""

    def __init__(self, source: str, key: str | None, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        text = f"{source}: {key}: {problem}" if key else f"{source}: {problem}"
        super().__init__(_one_line(text))


class _Invalid(Exception):
    """Raised by a value parser; the loader adds the source and the key."""

    def __init__(self, expected: str, got: str | None = None) -> None:
        super().__init__(expected)
        self.expected = expected
        self.got = got

    def describe(self, value: object) -> str:
        """Say what was expected and what was found instead."""
        return f"expected {self.expected}, got {self.got if self.got is not None else _describe(value)}"


# Value parsers: each takes the TOML value (or what an environment parser made of the string),
# returns the typed value, and raises _Invalid saying what it expected.

Parser = Callable[[Any], Any]


def _text(value: object, expected: str) -> str:
    if not isinstance(value, str):
        raise _Invalid(expected)
    return value


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("true or false")
    return value


def _integer(low: int, high: int | None = None) -> Parser:
    expected = f"an integer from {low} to {high}" if high is not None else f"an integer of at least {low}"

    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(expected)
        if value < low or (high is not None and value > high):
            raise _Invalid(expected)
        return value

    return parse


def _size(*, positive: bool) -> Parser:
    expected = 'a size like "20GiB", "500MB" or a number of bytes'
    if positive:
        expected = 'a size greater than zero like "20GiB", "500MB" or a number of bytes'

    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise _Invalid(expected)
        try:
            size = parse_size(value)
        except ValueError:
            raise _Invalid(expected) from None
        if positive and size == 0:
            raise _Invalid(expected)
        return size

    return parse


def _rate(value: object) -> int | None:
    expected = 'a rate in bytes per second like "10MiB" (0 for unlimited)'
    if isinstance(value, str):
        # "10MiB/s" is how people say it; the unit is per second either way.
        value = value.strip().removesuffix("/s")
    try:
        rate: int = _size(positive=False)(value)
    except _Invalid:
        raise _Invalid(expected) from None
    return rate or None


def _duration(*, positive: bool) -> Parser:
    expected = 'a duration like "30d", "12h" or "1h30m"'
    if positive:
        expected = 'a duration of at least 1s like "1h" or "15m"'

    def parse(value: object) -> timedelta:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise _Invalid(expected)
        try:
            duration = parse_duration(value)
        except ValueError:
            raise _Invalid(expected) from None
        if positive and duration < timedelta(seconds=1):
            raise _Invalid(expected)
        return duration

    return parse


def _absolute_path(value: object) -> Path:
    expected = "an absolute path"
    text = _text(value, expected)
    # The daemon runs with / as its working directory, so a relative path would not mean what
    # the admin who wrote it in /etc meant.
    if not text.startswith("/") or "\0" in text:
        raise _Invalid(expected)
    return Path(text)


def _optional(parse: Parser) -> Parser:
    def parse_optional(value: object) -> Any:
        if value is None or value == "":
            return None
        return parse(value)

    return parse_optional


def _array(parse_item: Parser, expected: str) -> Parser:
    def parse(value: object) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _Invalid(expected)
        items = []
        for item in value:
            try:
                items.append(parse_item(item))
            except _Invalid:
                raise _Invalid(expected, _describe(item)) from None
        return tuple(items)

    return parse


# As GLib's g_dbus_is_interface_name, which ostree_validate_collection_id uses: no hyphens.
_COLLECTION_ID_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


def _collection_id(value: object) -> str:
    expected = (
        'a collection ID like "com.example.Os" (two or more dot-separated elements of '
        "A-Z a-z 0-9 _, none starting with a digit)"
    )
    text = _text(value, expected)
    if len(text) > 255 or not _COLLECTION_ID_RE.fullmatch(text):
        raise _Invalid(expected)
    return text


# libostree's OSTREE_REF_REGEXP; GLib's regexes are Unicode-aware, as Python's \w is.
_REF_COMPONENT = r"[\w\d][-._\w\d]*"
_REF_RE = re.compile(rf"(?:{_REF_COMPONENT}/)*{_REF_COMPONENT}")
_REF_EXPECTED = 'an OSTree ref name like "os/stable"'


def _ref(value: object) -> str:
    text = _text(value, _REF_EXPECTED)
    if not _REF_RE.fullmatch(text):
        raise _Invalid(_REF_EXPECTED)
    return text


def _ref_glob(value: object) -> str:
    text = _text(value, 'a ref glob like "os/*"')
    problem = _glob_problem(text)
    if problem is not None:
        raise _Invalid(f'a ref glob like "os/*" ({problem})')
    return text


def _is_ref_char(char: str) -> bool:
    return char.isalnum() or char in "_-."


def _glob_problem(pattern: str) -> str | None:
    """Say why ``pattern`` is not a glob (fnmatch syntax) that can match OSTree ref names, or None."""
    if not pattern:
        return "it is empty"
    if pattern.startswith("/") or pattern.endswith("/") or "//" in pattern:
        return 'a ref cannot start or end with "/" or contain "//"'
    # Python's fnmatch quietly takes an unmatched "[" as a literal, which can never match a ref:
    # the admin meant something else, so say so instead of keeping a pin that pins nothing.
    index, component_start = 0, True
    while index < len(pattern):
        char = pattern[index]
        if char == "[":
            start = index + 1
            if pattern[start : start + 1] == "!":
                start += 1
            close = pattern.find("]", start + 1 if pattern[start : start + 1] == "]" else start)
            if close == -1:
                return 'unmatched "["'
            problem = _class_problem(pattern[start:close])
            if problem is not None:
                return problem
            index = close + 1
        elif char in "*?":
            index += 1
        elif char == "/":
            index += 1
            component_start = True
            continue
        elif char == "]":
            return 'unmatched "]"'
        elif not _is_ref_char(char):
            return f"{json.dumps(char, ensure_ascii=False)} cannot appear in a ref"
        elif component_start and char in "-.":
            return 'a ref component cannot start with "-" or "."'
        else:
            index += 1
        component_start = False
    return None


def _class_problem(body: str) -> str | None:
    """Say what is wrong with the inside of a ``[...]`` character class, or None."""
    if body.startswith("^"):
        return 'use "[!...]" to negate a character class'
    index = 0
    while index < len(body):
        char = body[index]
        if char == "/":
            return '"/" cannot appear inside "[...]"'
        if not _is_ref_char(char):
            return f"{json.dumps(char, ensure_ascii=False)} cannot appear in a ref"
        if index + 2 < len(body) and body[index + 1] == "-":
            if body[index + 2] < char:
                return f'empty range "{char}-{body[index + 2]}"'
            index += 3
        else:
            index += 1
    return None


def _commit(value: object) -> str:
    expected = "a commit checksum of 64 hex digits"
    text = _text(value, expected)
    # Full checksums only: a prefix could become ambiguous as the repo grows, and a pin that
    # silently stops matching would let prune delete a checkpoint.
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise _Invalid(expected)
    return text.lower()


_SQLALCHEMY_EXPECTED = (
    'an SQLAlchemy URL like "sqlite:////var/lib/lanshare/index.sqlite" or "postgresql+psycopg://host/db"'
)


def _hide_password(url: str) -> str:
    return json.dumps(re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", url), ensure_ascii=False)


_PLAIN_SQLITE = re.compile(r"sqlite(\+pysqlite)?:////[^?]*")


def _database_url(value: object) -> str:
    text = _text(value, _SQLALCHEMY_EXPECTED)
    if _PLAIN_SQLITE.fullmatch(text):  # the usual URL, valid without importing SQLAlchemy (~0.15 s)
        return text
    # Imported here so that commands which never open the database do not pay for SQLAlchemy.
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(text)
        url.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError):
        raise _Invalid(_SQLALCHEMY_EXPECTED, _hide_password(text)) from None
    try:  # the driver is checked now, so a missing one stops a command before it creates anything
        url.get_dialect().import_dbapi()
    except ImportError as e:
        hint = "pip install 'lanshare[postgresql]' and use postgresql+psycopg://"
        expected = "a database URL whose driver is installed" + (
            f" (for PostgreSQL: {hint})" if url.get_backend_name() == "postgresql" else ""
        )
        raise _Invalid(expected, f"{_hide_password(text)}, whose driver is missing ({e})") from None
    database = url.database or ""
    if (
        url.get_backend_name() == "sqlite"
        and database not in ("", ":memory:")
        and not database.startswith("/")
    ):
        raise _Invalid(
            'an absolute SQLite path like "sqlite:////var/lib/lanshare/index.sqlite"', _hide_password(text)
        )
    return text


def _url(schemes: tuple[str, ...], expected: str) -> Parser:
    def parse(value: object) -> str:
        text = _text(value, expected)
        if any(not char.isprintable() or char.isspace() for char in text):
            raise _Invalid(expected)
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 -- raises ValueError for a port out of range
        except ValueError:
            raise _Invalid(expected) from None
        if parts.scheme not in schemes or parts.fragment:
            raise _Invalid(expected)
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
                raise _Invalid(expected)
        elif not parts.hostname:
            raise _Invalid(expected)
        return text

    return parse


_HOSTNAME_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


@dataclass(frozen=True)
class ListenAddress:
    """A TCP address to listen on; ``host`` is an IP address or a host name, without brackets."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _listen(value: object) -> ListenAddress:
    expected = 'a "host:port" address like "0.0.0.0:8089" or "[::]:8089"'
    text = _text(value, expected)
    host, colon, port_text = text.rpartition(":")
    # Port 0 asks the kernel for a free port; the daemon writes the one it got to
    # <state>/lan-address (tests and ad-hoc daemons use it).
    if not colon or not re.fullmatch(r"[0-9]{1,5}", port_text) or not 0 <= int(port_text) <= 65535:
        raise _Invalid(expected)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _Invalid(expected) from None
    elif not _is_host(host):
        raise _Invalid(expected)
    return ListenAddress(host, int(port_text))


def _is_host(host: str) -> bool:
    """Whether ``host`` is an IPv4 address or a DNS host name (IPv6 must come in brackets)."""
    try:
        ipaddress.IPv4Address(host)
        return True
    except ValueError:
        pass
    labels = host.split(".")
    if len(host) > 253 or not all(_HOSTNAME_LABEL_RE.fullmatch(label) for label in labels):
        return False
    # An all-numeric name such as "256.1.1.1" is a mistyped address, not a host name.
    return not labels[-1].isdigit()


def _interface(value: object) -> str:
    expected = 'an array of network interface names like "eth0"'
    text = _text(value, expected)
    # The kernel's own rule (dev_valid_name): at most 15 bytes, no "/", ":" or white space.
    if (
        not text
        or len(text.encode()) > 15
        or text in (".", "..")
        or any(char in "/:" or char.isspace() or not char.isprintable() for char in text)
    ):
        raise _Invalid(expected)
    return text


def _pull_order(value: object) -> tuple[PullSource, ...]:
    expected = 'an array of "lan" and "origin", each at most once, like ["lan", "origin"]'
    if not isinstance(value, list) or not value:
        raise _Invalid(expected)
    for item in value:
        if item not in ("lan", "origin"):
            raise _Invalid(expected, _describe(item))
    if len(set(value)) != len(value):
        raise _Invalid(expected)
    return cast("tuple[PullSource, ...]", tuple(value))


def _ed25519_key(value: object) -> bytes:
    expected = "an array of base64 ed25519 public keys (32 bytes each)"
    text = _text(value, expected)
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise _Invalid(expected) from None
    if len(key) != 32:
        raise _Invalid(expected)
    return key


def _command(value: object) -> tuple[str, ...]:
    expected = 'a command line like "/usr/bin/deploy --now" or an array like ["/usr/bin/deploy", "--now"]'
    # A string is split like a shell would split it, but never run by a shell: write
    # ["/bin/sh", "-c", "..."] to get one.  Splitting here turns a quoting mistake into an error now
    # rather than a failed upgrade later.
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError:
            raise _Invalid(expected) from None
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        argv = value
    else:
        raise _Invalid(expected)
    if not argv or not argv[0]:
        raise _Invalid(expected)
    return tuple(argv)


# Environment parsers turn the variable's text into what the TOML parser would have produced;
# text they cannot read is passed through unchanged so the value parser reports it.

EnvParser = Callable[[str], object]


def _env_text(text: str) -> object:
    return text


def _env_int(text: str) -> object:
    return int(text) if re.fullmatch(r"\s*[-+]?[0-9]+\s*", text) else text


_ENV_BOOLEANS = {
    "true": True,
    "yes": True,
    "on": True,
    "1": True,
    "false": False,
    "no": False,
    "off": False,
    "0": False,
}


def _env_bool(text: str) -> object:
    return _ENV_BOOLEANS.get(text.strip().lower(), text)


def _env_toml_array(text: str) -> object:
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def _env_list(text: str) -> object:
    if text.lstrip().startswith("["):
        return _env_toml_array(text)
    return [item.strip() for item in text.split(",") if item.strip()]


def _env_command(text: str) -> object:
    return _env_toml_array(text) if text.lstrip().startswith("[") else text


def _deployer(value: object) -> str:
    if value != "ostree-admin":
        raise _Invalid('"ostree-admin" (or deploy_command for any other tool)')
    return value


def _osname(value: object) -> str:
    expected = 'an OSTree stateroot name like "fedora-iot", as in `ostree admin os-init`'
    text = _text(value, expected)
    if not text or text in (".", "..") or any(c == "/" or c.isspace() or not c.isprintable() for c in text):
        raise _Invalid(expected)
    return text


def _reboot(value: object) -> RebootPolicy:
    try:
        return parse_reboot(_text(value, WINDOW_EXPECTED))
    except ValueError:
        raise _Invalid(WINDOW_EXPECTED) from None


def _spec(parse: Parser, env: EnvParser = _env_text) -> dict[str, Any]:
    """The dataclass field metadata of a config key: its value parser and its environment parser."""
    return {"parse": parse, "env": env}


def _string(value: object) -> str:
    return _text(value, "a string")


_ORIGIN_URL = _url(
    ("http", "https", "file"), 'an http, https or file URL like "https://ostree.example.com/repo"'
)
_REFS = _array(_ref, 'an array of OSTree ref names like ["os/stable"]')
_ED25519_KEYS = _array(_ed25519_key, "an array of base64 ed25519 public keys (32 bytes each)")
_INTERFACES = _array(_interface, 'an array of network interface names like ["eth0"]')
_PEERS = _array(
    _url(("http", "https"), "an http(s) URL"), 'an array of http(s) URLs like ["http://192.168.1.20:8089"]'
)


@dataclass(frozen=True)
class RepoConfig:
    """``[repo]``: the local OSTree archive repository."""

    path: Path = field(metadata=_spec(_absolute_path))  # default: <state_dir>/repo
    collection_id: str | None = field(default=None, metadata=_spec(_optional(_collection_id)))
    # Rewrite a publisher's signed or indexed summary when it is out of date (it loses the signature).
    regenerate_summary: bool = field(default=False, metadata=_spec(_boolean, _env_bool))


@dataclass(frozen=True)
class DatabaseConfig:
    """``[database]``: the SQLAlchemy URL of the index (derived data, rebuilt by ``lanshare reindex``)."""

    url: str = field(metadata=_spec(_database_url))  # default: sqlite:///<state_dir>/index.sqlite


@dataclass(frozen=True)
class OriginConfig:
    """``[origin]``: where updates come from when online; ``url`` is None on an offline machine."""

    url: str | None = field(default=None, metadata=_spec(_optional(_ORIGIN_URL)))
    refs: tuple[str, ...] = field(default=(), metadata=_spec(_REFS, _env_list))
    poll_interval: timedelta = field(default=timedelta(hours=1), metadata=_spec(_duration(positive=True)))


@dataclass(frozen=True)
class PullConfig:
    """``[pull]``: where to fetch from, in order of preference, and how many fetches run at once."""

    order: tuple[PullSource, ...] = field(default=("lan", "origin"), metadata=_spec(_pull_order, _env_list))
    parallel: int = field(default=8, metadata=_spec(_integer(1, 64), _env_int))
    # Split a commit's objects with the LAN machines pulling it too (lanshare.pull.fleet);
    # false: each machine fetches everything it cannot get from a peer holding it (the old way).
    coordinate: bool = field(default=True, metadata=_spec(_boolean, _env_bool))


@dataclass(frozen=True)
class TrustConfig:
    """``[trust]``: the keys a commit must be signed with before it enters the cache."""

    gpg_keyring: Path | None = field(default=None, metadata=_spec(_optional(_absolute_path)))
    ed25519_keys: tuple[bytes, ...] = field(default=(), metadata=_spec(_ED25519_KEYS, _env_list))
    require_signatures: bool = field(default=True, metadata=_spec(_boolean, _env_bool))


@dataclass(frozen=True)
class SharingConfig:
    """``[sharing]``: the LAN listener, mDNS, static peers and the limits on serving them."""

    listen: ListenAddress = field(
        default=ListenAddress("0.0.0.0", DEFAULT_SHARING_PORT), metadata=_spec(_listen)
    )
    advertise: bool = field(default=True, metadata=_spec(_boolean, _env_bool))
    discovery: bool = field(default=True, metadata=_spec(_boolean, _env_bool))
    # Empty: every interface.
    interfaces: tuple[str, ...] = field(default=(), metadata=_spec(_INTERFACES, _env_list))
    peers: tuple[str, ...] = field(default=(), metadata=_spec(_PEERS, _env_list))
    max_connections: int = field(default=64, metadata=_spec(_integer(1), _env_int))
    # Bytes per second; None: unlimited (written as 0).
    max_upload_rate: int | None = field(default=None, metadata=_spec(_rate))
    share_on_battery: bool = field(default=True, metadata=_spec(_boolean, _env_bool))
    share_on_metered: bool = field(default=True, metadata=_spec(_boolean, _env_bool))


@dataclass(frozen=True)
class StatusConfig:
    """``[status]``: the local status page, JSON API and metrics."""

    listen: ListenAddress = field(
        default=ListenAddress("127.0.0.1", DEFAULT_STATUS_PORT), metadata=_spec(_listen)
    )


@dataclass(frozen=True)
class RetentionConfig:
    """``[retention]``: what prune keeps besides checkpoints and pins, and the repo's size budget."""

    keep_latest: int = field(default=3, metadata=_spec(_integer(0), _env_int))
    keep_younger_than: timedelta = field(
        default=timedelta(days=30), metadata=_spec(_duration(positive=False))
    )
    max_size: int = field(default=20 * 1024**3, metadata=_spec(_size(positive=True)))


@dataclass(frozen=True)
class Pin:
    """A ``[[pin]]`` table: keep commits on refs matching ``ref`` (an fnmatch glob) or one ``commit``."""

    ref: str | None = field(default=None, metadata=_spec(_ref_glob))
    commit: str | None = field(default=None, metadata=_spec(_commit))
    reason: str = field(default="", metadata=_spec(_string))

    def matches(self, ref: str) -> bool:
        """Whether this pin's glob matches ``ref``; ``*`` also matches across "/"."""
        return self.ref is not None and fnmatch.fnmatchcase(ref, self.ref)


@dataclass(frozen=True)
class UpgradeConfig:
    """``[upgrade]``: how to deploy a step of the update path and how to learn what is deployed."""

    deploy_command: tuple[str, ...] | None = field(
        default=None, metadata=_spec(_optional(_command), _env_command)
    )
    deployed_commit_file: Path | None = field(default=None, metadata=_spec(_optional(_absolute_path)))
    deployed_commit_command: tuple[str, ...] | None = field(
        default=None, metadata=_spec(_optional(_command), _env_command)
    )
    # The built-in deployer (lanshare/deploy/ostree_admin.py) and the reboot policy (deploy/reboot.py).
    deploy: str | None = field(default=None, metadata=_spec(_optional(_deployer)))
    sysroot: Path = field(default=Path("/"), metadata=_spec(_absolute_path))
    os: str | None = field(default=None, metadata=_spec(_optional(_osname)))
    reboot: RebootPolicy = field(default=NEVER, metadata=_spec(_reboot))
    reboot_command: tuple[str, ...] = field(
        default=("systemctl", "reboot"), metadata=_spec(_command, _env_command)
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


def _describe(value: object) -> str:
    """Render a TOML value the way it would be written, shortened to fit in an error line."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, int | float):
        text = repr(value)
    elif isinstance(value, dict):
        return "a table"
    elif isinstance(value, list):
        if any(isinstance(item, dict) for item in value):
            return "an array of tables"
        text = "[" + ", ".join(_describe(item) for item in value) + "]"
    elif isinstance(value, date | time):
        text = value.isoformat()
    else:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


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
        except _Invalid as error:
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
                raise ConfigError(source, "pin", f"expected [[pin]] tables, got {_describe(content)}")
            for number, table in enumerate(content, start=1):
                values.pins.append(_pin(source, f"pin[{number}]", table))
        elif name in _SECTIONS:
            if not isinstance(content, dict):
                raise ConfigError(source, name, f"expected a table [{name}], got {_describe(content)}")
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
        except _Invalid as error:
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
            return _absolute_path(first)
        except _Invalid as error:
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

"""How each configuration value is read and checked (the parsers behind :mod:`lanshare.config`).

A value parser takes what TOML produced for one key (or what an environment parser made of a
``LANSHARE_…`` variable's text), returns the typed value, and raises :class:`Invalid` saying what
it expected; the loader adds the file and the key.  Sizes, durations, refs and globs, URLs,
listen addresses, commands, keys and the upgrade settings each have theirs here.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
import shlex
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, time, timedelta
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from lanshare.deploy.reboot import WINDOW_EXPECTED, RebootPolicy, parse_reboot
from lanshare.units import parse_duration, parse_size

PullSource = Literal["lan", "origin"]


class Invalid(Exception):
    """Raised by a value parser; the loader adds the source and the key."""

    def __init__(self, expected: str, got: str | None = None) -> None:
        super().__init__(expected)
        self.expected = expected
        self.got = got

    def describe(self, value: object) -> str:
        """Say what was expected and what was found instead."""
        return f"expected {self.expected}, got {self.got if self.got is not None else describe(value)}"


# Value parsers: each takes the TOML value (or what an environment parser made of the string),
# returns the typed value, and raises Invalid saying what it expected.

Parser = Callable[[Any], Any]


def _text(value: object, expected: str) -> str:
    if not isinstance(value, str):
        raise Invalid(expected)
    return value


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise Invalid("true or false")
    return value


def integer(low: int, high: int | None = None) -> Parser:
    expected = f"an integer from {low} to {high}" if high is not None else f"an integer of at least {low}"

    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(expected)
        if value < low or (high is not None and value > high):
            raise Invalid(expected)
        return value

    return parse


def size(*, positive: bool) -> Parser:
    expected = 'a size like "20GiB", "500MB" or a number of bytes'
    if positive:
        expected = 'a size greater than zero like "20GiB", "500MB" or a number of bytes'

    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise Invalid(expected)
        try:
            size = parse_size(value)
        except ValueError:
            raise Invalid(expected) from None
        if positive and size == 0:
            raise Invalid(expected)
        return size

    return parse


def rate(value: object) -> int | None:
    expected = 'a rate in bytes per second like "10MiB" (0 for unlimited)'
    if isinstance(value, str):
        # "10MiB/s" is how people say it; the unit is per second either way.
        value = value.strip().removesuffix("/s")
    try:
        rate: int = size(positive=False)(value)
    except Invalid:
        raise Invalid(expected) from None
    return rate or None


def duration(*, positive: bool) -> Parser:
    expected = 'a duration like "30d", "12h" or "1h30m"'
    if positive:
        expected = 'a duration of at least 1s like "1h" or "15m"'

    def parse(value: object) -> timedelta:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise Invalid(expected)
        try:
            duration = parse_duration(value)
        except ValueError:
            raise Invalid(expected) from None
        if positive and duration < timedelta(seconds=1):
            raise Invalid(expected)
        return duration

    return parse


def absolute_path(value: object) -> Path:
    expected = "an absolute path"
    text = _text(value, expected)
    # The daemon runs with / as its working directory, so a relative path would not mean what
    # the admin who wrote it in /etc meant.
    if not text.startswith("/") or "\0" in text:
        raise Invalid(expected)
    return Path(text)


def optional(parse: Parser) -> Parser:
    def parse_optional(value: object) -> Any:
        if value is None or value == "":
            return None
        return parse(value)

    return parse_optional


def _array(parse_item: Parser, expected: str) -> Parser:
    def parse(value: object) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise Invalid(expected)
        items = []
        for item in value:
            try:
                items.append(parse_item(item))
            except Invalid:
                raise Invalid(expected, describe(item)) from None
        return tuple(items)

    return parse


# As GLib's g_dbus_is_interface_name, which ostree_validate_collection_id uses: no hyphens.
_COLLECTION_ID_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


def collection_id(value: object) -> str:
    expected = (
        'a collection ID like "com.example.Os" (two or more dot-separated elements of '
        "A-Z a-z 0-9 _, none starting with a digit)"
    )
    text = _text(value, expected)
    if len(text) > 255 or not _COLLECTION_ID_RE.fullmatch(text):
        raise Invalid(expected)
    return text


# libostree's OSTREE_REF_REGEXP; GLib's regexes are Unicode-aware, as Python's \w is.
_REF_COMPONENT = r"[\w\d][-._\w\d]*"
_REF_RE = re.compile(rf"(?:{_REF_COMPONENT}/)*{_REF_COMPONENT}")
_REF_EXPECTED = 'an OSTree ref name like "os/stable"'


def _ref(value: object) -> str:
    text = _text(value, _REF_EXPECTED)
    if not _REF_RE.fullmatch(text):
        raise Invalid(_REF_EXPECTED)
    return text


def ref_glob(value: object) -> str:
    text = _text(value, 'a ref glob like "os/*"')
    problem = _glob_problem(text)
    if problem is not None:
        raise Invalid(f'a ref glob like "os/*" ({problem})')
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


def commit(value: object) -> str:
    expected = "a commit checksum of 64 hex digits"
    text = _text(value, expected)
    # Full checksums only: a prefix could become ambiguous as the repo grows, and a pin that
    # silently stops matching would let prune delete a checkpoint.
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise Invalid(expected)
    return text.lower()


_SQLALCHEMY_EXPECTED = (
    'an SQLAlchemy URL like "sqlite:////var/lib/lanshare/index.sqlite" or "postgresql+psycopg://host/db"'
)


def _hide_password(url: str) -> str:
    return json.dumps(re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", url), ensure_ascii=False)


_PLAIN_SQLITE = re.compile(r"sqlite(\+pysqlite)?:////[^?]*")


def database_url(value: object) -> str:
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
        raise Invalid(_SQLALCHEMY_EXPECTED, _hide_password(text)) from None
    try:  # the driver is checked now, so a missing one stops a command before it creates anything
        url.get_dialect().import_dbapi()
    except ImportError as e:
        hint = "pip install 'lanshare[postgresql]' and use postgresql+psycopg://"
        expected = "a database URL whose driver is installed" + (
            f" (for PostgreSQL: {hint})" if url.get_backend_name() == "postgresql" else ""
        )
        raise Invalid(expected, f"{_hide_password(text)}, whose driver is missing ({e})") from None
    database = url.database or ""
    if (
        url.get_backend_name() == "sqlite"
        and database not in ("", ":memory:")
        and not database.startswith("/")
    ):
        raise Invalid(
            'an absolute SQLite path like "sqlite:////var/lib/lanshare/index.sqlite"', _hide_password(text)
        )
    return text


def _url(schemes: tuple[str, ...], expected: str) -> Parser:
    def parse(value: object) -> str:
        text = _text(value, expected)
        if any(not char.isprintable() or char.isspace() for char in text):
            raise Invalid(expected)
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 -- raises ValueError for a port out of range
        except ValueError:
            raise Invalid(expected) from None
        if parts.scheme not in schemes or parts.fragment:
            raise Invalid(expected)
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
                raise Invalid(expected)
        elif not parts.hostname:
            raise Invalid(expected)
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


def listen(value: object) -> ListenAddress:
    expected = 'a "host:port" address like "0.0.0.0:8089" or "[::]:8089"'
    text = _text(value, expected)
    host, colon, port_text = text.rpartition(":")
    # Port 0 asks the kernel for a free port; the daemon writes the one it got to
    # <state>/lan-address (tests and ad-hoc daemons use it).
    if not colon or not re.fullmatch(r"[0-9]{1,5}", port_text) or not 0 <= int(port_text) <= 65535:
        raise Invalid(expected)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise Invalid(expected) from None
    elif not _is_host(host):
        raise Invalid(expected)
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
        raise Invalid(expected)
    return text


def pull_order(value: object) -> tuple[PullSource, ...]:
    expected = 'an array of "lan" and "origin", each at most once, like ["lan", "origin"]'
    if not isinstance(value, list) or not value:
        raise Invalid(expected)
    for item in value:
        if item not in ("lan", "origin"):
            raise Invalid(expected, describe(item))
    if len(set(value)) != len(value):
        raise Invalid(expected)
    return cast("tuple[PullSource, ...]", tuple(value))


def _ed25519_key(value: object) -> bytes:
    expected = "an array of base64 ed25519 public keys (32 bytes each)"
    text = _text(value, expected)
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise Invalid(expected) from None
    if len(key) != 32:
        raise Invalid(expected)
    return key


def command(value: object) -> tuple[str, ...]:
    expected = 'a command line like "/usr/bin/deploy --now" or an array like ["/usr/bin/deploy", "--now"]'
    # A string is split like a shell would split it, but never run by a shell: write
    # ["/bin/sh", "-c", "..."] to get one.  Splitting here turns a quoting mistake into an error now
    # rather than a failed upgrade later.
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError:
            raise Invalid(expected) from None
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        argv = value
    else:
        raise Invalid(expected)
    if not argv or not argv[0]:
        raise Invalid(expected)
    return tuple(argv)


# Environment parsers turn the variable's text into what the TOML parser would have produced;
# text they cannot read is passed through unchanged so the value parser reports it.

EnvParser = Callable[[str], object]


def _env_text(text: str) -> object:
    return text


def env_int(text: str) -> object:
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


def env_bool(text: str) -> object:
    return _ENV_BOOLEANS.get(text.strip().lower(), text)


def _env_toml_array(text: str) -> object:
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def env_list(text: str) -> object:
    if text.lstrip().startswith("["):
        return _env_toml_array(text)
    return [item.strip() for item in text.split(",") if item.strip()]


def env_command(text: str) -> object:
    return _env_toml_array(text) if text.lstrip().startswith("[") else text


def deployer(value: object) -> str:
    if value != "ostree-admin":
        raise Invalid('"ostree-admin" (or deploy_command for any other tool)')
    return value


def osname(value: object) -> str:
    expected = 'an OSTree stateroot name like "fedora-iot", as in `ostree admin os-init`'
    text = _text(value, expected)
    if not text or text in (".", "..") or any(c == "/" or c.isspace() or not c.isprintable() for c in text):
        raise Invalid(expected)
    return text


def reboot(value: object) -> RebootPolicy:
    try:
        return parse_reboot(_text(value, WINDOW_EXPECTED))
    except ValueError:
        raise Invalid(WINDOW_EXPECTED) from None


def spec(parse: Parser, env: EnvParser = _env_text) -> dict[str, Any]:
    """The dataclass field metadata of a config key: its value parser and its environment parser."""
    return {"parse": parse, "env": env}


def string(value: object) -> str:
    return _text(value, "a string")


ORIGIN_URL = _url(
    ("http", "https", "file"), 'an http, https or file URL like "https://ostree.example.com/repo"'
)
REFS = _array(_ref, 'an array of OSTree ref names like ["os/stable"]')
ED25519_KEYS = _array(_ed25519_key, "an array of base64 ed25519 public keys (32 bytes each)")
INTERFACES = _array(_interface, 'an array of network interface names like ["eth0"]')
PEERS = _array(
    _url(("http", "https"), "an http(s) URL"), 'an array of http(s) URLs like ["http://192.168.1.20:8089"]'
)


def describe(value: object) -> str:
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
        text = "[" + ", ".join(describe(item) for item in value) + "]"
    elif isinstance(value, date | time):
        text = value.isoformat()
    else:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."

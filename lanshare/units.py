"""Parse and format the byte sizes and durations that people write in config and on the command line.

Sizes follow coreutils (``dd``, ``sort -S``) and systemd: a bare prefix or an ``iB`` suffix is a power
of 1024 (``20G`` = ``20GiB``), a ``B`` suffix is a power of 1000 (``500MB``).  A lowercase ``b`` is
refused, because ``10Mb`` usually means megabits and a silent factor of 8 is worse than an error.

Durations are sums of ``<number><unit>`` with units ``w d h m s`` (and the spelled-out forms systemd
accepts: ``sec``, ``min``, ``hour``, ``day``, ``week`` and their plurals), e.g. ``1h30m`` or ``2w``.
Units are case-sensitive so that ``M`` can never be mistaken for months.  A bare number is seconds.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal, InvalidOperation

__all__ = ["format_duration", "format_size", "parse_duration", "parse_size"]

# The largest size we accept: it must fit a signed 64-bit SQL integer column.
MAX_SIZE = 2**63 - 1

_PREFIXES = "KMGTPE"
_SIZE_RE = re.compile(r"(?P<number>\d+(?:\.\d+)?|\.\d+)\s*(?P<unit>[A-Za-z]*)")
_SIZE_UNIT_RE = re.compile(r"(?P<prefix>[KkMmGgTtPpEe])(?P<iec>[iI]?)(?P<byte>B?)|(?P<bytes>B?)")

_DURATION_UNITS: dict[str, int] = {}
for _unit_seconds, _names in (
    (1, ("s", "sec", "secs", "second", "seconds")),
    (60, ("m", "min", "mins", "minute", "minutes")),
    (3600, ("h", "hr", "hrs", "hour", "hours")),
    (86400, ("d", "day", "days")),
    (604800, ("w", "week", "weeks")),
):
    for _name in _names:
        _DURATION_UNITS[_name] = _unit_seconds
_DURATION_TERM_RE = re.compile(r"\s*(?P<number>\d+(?:\.\d+)?|\.\d+)\s*(?P<unit>[a-z]+)\s*")


def parse_size(value: str | int) -> int:
    """Return the number of bytes in ``value`` ("20GiB", "500MB", "1.5G", or an integer of bytes)."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative: {value}")
        if value > MAX_SIZE:
            raise ValueError(f"size too large: {value}")
        return value
    match = _SIZE_RE.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"not a size: {value!r}")
    unit = _SIZE_UNIT_RE.fullmatch(match["unit"])
    if unit is None:
        raise ValueError(f"unknown size unit {match['unit']!r} in {value!r}")
    if unit["prefix"] is None:
        multiplier = 1
    else:
        power = _PREFIXES.index(unit["prefix"].upper()) + 1
        # "KB" is SI; "K", "Ki" and "KiB" are binary, as coreutils and systemd read them.
        decimal = unit["byte"] == "B" and not unit["iec"]
        multiplier = (1000 if decimal else 1024) ** power
    try:
        exact = Decimal(match["number"]) * multiplier
    except InvalidOperation:
        raise ValueError(f"not a size: {value!r}") from None
    if multiplier == 1 and exact != exact.to_integral_value():
        raise ValueError(f"a size in bytes must be a whole number: {value!r}")
    # A fraction of a larger unit rounds down to whole bytes ("0.1K" is 102 bytes).
    result = int(exact)
    if result > MAX_SIZE:
        raise ValueError(f"size too large: {value!r}")
    return result


def format_size(size: int) -> str:
    """Format a byte count with binary units, exactly when it divides ("20GiB"), else to one decimal."""
    if size < 0:
        return "-" + format_size(-size)
    if size < 1024:
        return f"{size}B"
    power = 0
    while power < len(_PREFIXES) and size >= 1024 ** (power + 1):
        power += 1
    unit = 1024**power
    suffix = f"{_PREFIXES[power - 1]}iB"
    if size % unit == 0:
        return f"{size // unit}{suffix}"
    return f"{size / unit:.1f}{suffix}"


def parse_duration(value: str | int) -> timedelta:
    """Return the duration written in ``value`` ("30d", "1h30m", "90s", "2w", or an integer of seconds)."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a duration cannot be negative: {value}")
        return _seconds(Decimal(value), value)
    text = value.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?|\.\d+", text):
        return _seconds(Decimal(text), value)
    total = Decimal(0)
    position = 0
    for term in _DURATION_TERM_RE.finditer(text):
        if term.start() != position:
            break
        seconds = _DURATION_UNITS.get(term["unit"])
        if seconds is None:
            raise ValueError(f"unknown duration unit {term['unit']!r} in {value!r}")
        total += Decimal(term["number"]) * seconds
        position = term.end()
    if position != len(text) or not text:
        raise ValueError(f"not a duration: {value!r}")
    return _seconds(total, value)


def _seconds(seconds: Decimal, original: object) -> timedelta:
    """Build a timedelta from an exact number of seconds, refusing ones timedelta cannot hold."""
    try:
        return timedelta(seconds=int(seconds), microseconds=int((seconds % 1) * 1_000_000))
    except OverflowError:
        raise ValueError(f"duration too long: {original!r}") from None


def format_duration(duration: timedelta) -> str:
    """Format a duration as parse_duration reads it, largest units first ("1h30m", "30d", "0s")."""
    if duration < timedelta(0):
        return "-" + format_duration(-duration)
    # Weeks are left out on purpose: "30d" reads better than "4w2d".
    days, rest = duration.days, duration.seconds
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if n]
    if duration.microseconds:
        fraction = f"{duration.microseconds:06d}".rstrip("0")
        parts.append(f"{seconds}.{fraction}s")
    elif seconds or not parts:
        parts.append(f"{seconds}s")
    return "".join(parts)

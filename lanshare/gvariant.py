"""A GVariant serialization codec for the types OSTree stores, byte-exact with GLib.

GVariant data is little-endian and self-framing: containers carry "framing offsets" at their
end instead of length prefixes, and every value is aligned relative to the start of its
container.  This module knows nothing about OSTree; OSTree's big-endian fields are swapped by
the caller (see :func:`swap32` and :func:`swap64`).

Python values: ``b`` bool, integer codes int, ``d`` float, ``s``/``o``/``g`` str, ``ay`` bytes,
``a{..}`` dict (insertion order is serialization order), other arrays list, tuples tuple,
``v`` :class:`Variant`, ``m`` None or the value.

Decoding is strict: anything that is not well-formed raises :class:`GVariantError` with a short
reason.  Sizes are always bounded by the input buffer and nesting depth is bounded too.  Each byte
of input can still become a Python object (an ``a(y)`` costs about 56 bytes of memory per input
byte), so one decode creates at most :data:`MAX_VALUES` array elements: a hostile 16 MiB object
cannot cost a gigabyte.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

MAX_DEPTH = 64
MAX_TYPE_STRING = 255
# Array elements one decode may create: far above any real OSTree object (a dirtree of 100,000
# files is 100,000 elements), far below what a hostile input could otherwise ask for.
MAX_VALUES = 1_000_000

_budget = threading.local()  # elements left for the decode running in this thread


def _spend(count: int) -> None:
    left = getattr(_budget, "left", MAX_VALUES) - count
    if left < 0:
        raise GVariantError(f"more than {MAX_VALUES} array elements in one value")
    _budget.left = left


class GVariantError(ValueError):
    """The bytes are not a well-formed serialization of the expected type."""


@dataclass(frozen=True)
class Variant:
    """A value of type ``v``: a type string and a value of that type."""

    signature: str
    value: Any


def swap32(value: int) -> int:
    """Byte-swap a u32 (OSTree stores uid, gid and mode big-endian inside LE GVariants)."""
    return int.from_bytes(value.to_bytes(4, "little"), "big")


def swap64(value: int) -> int:
    """Byte-swap a u64 (OSTree's commit timestamps and archive sizes are big-endian)."""
    return int.from_bytes(value.to_bytes(8, "little"), "big")


def _offset_size(total: int) -> int:
    if total == 0:
        return 0
    if total <= 0xFF:
        return 1
    if total <= 0xFFFF:
        return 2
    if total <= 0xFFFFFFFF:
        return 4
    return 8


def _pad(size: int, alignment: int) -> int:
    return -size % alignment


def _framed_size(body: int, n_offsets: int) -> tuple[int, int]:
    """Total size and offset width for a container body followed by n framing offsets."""
    for width, limit in ((1, 0xFF), (2, 0xFFFF), (4, 0xFFFFFFFF)):
        if body + n_offsets * width <= limit:
            return body + n_offsets * width, width
    return body + n_offsets * 8, 8


def _read_offset(buf: memoryview, pos: int, width: int) -> int:
    return int.from_bytes(buf[pos : pos + width], "little")


class GType:
    """One parsed GVariant type: knows its alignment, fixed size (or None) and codec."""

    alignment: int = 1
    fixed_size: int | None = None
    signature: str = ""

    def encode(self, value: Any) -> bytes:
        raise NotImplementedError

    def decode(self, buf: memoryview, depth: int) -> Any:
        raise NotImplementedError


class _Basic(GType):
    _formats: ClassVar[dict[str, str]] = {
        "b": "<?",
        "y": "<B",
        "n": "<h",
        "q": "<H",
        "i": "<i",
        "u": "<I",
        "x": "<q",
        "t": "<Q",
        "h": "<i",
        "d": "<d",
    }

    def __init__(self, code: str) -> None:
        self.signature = code
        self._struct = struct.Struct(self._formats[code])
        self.fixed_size = self._struct.size
        self.alignment = self._struct.size

    def encode(self, value: Any) -> bytes:
        try:
            return self._struct.pack(value)
        except struct.error as e:
            raise GVariantError(f"bad value {value!r} for type {self.signature}: {e}") from None

    def decode(self, buf: memoryview, depth: int) -> Any:
        if len(buf) != self.fixed_size:
            raise GVariantError(f"type {self.signature} needs {self.fixed_size} bytes, got {len(buf)}")
        if self.signature == "b" and buf[0] > 1:
            raise GVariantError("boolean byte is neither 0 nor 1")
        return self._struct.unpack(buf)[0]


class _String(GType):
    def __init__(self, code: str) -> None:
        self.signature = code

    def encode(self, value: Any) -> bytes:
        if not isinstance(value, str):
            raise GVariantError(f"type {self.signature} needs a str, got {type(value).__name__}")
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError:
            raise GVariantError("string is not valid UTF-8") from None
        if b"\0" in data:
            raise GVariantError("string contains a NUL byte")
        return data + b"\0"

    def decode(self, buf: memoryview, depth: int) -> Any:
        if len(buf) == 0 or buf[-1] != 0:
            raise GVariantError("string is not NUL-terminated")
        data = bytes(buf[:-1])
        if b"\0" in data:
            raise GVariantError("string contains an embedded NUL byte")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise GVariantError("string is not valid UTF-8") from None


class _Variant(GType):
    alignment = 8
    signature = "v"

    def encode(self, value: Any) -> bytes:
        if not isinstance(value, Variant):
            raise GVariantError(f"expected a Variant, got {type(value).__name__}")
        inner = parse_type(value.signature)
        return inner.encode(value.value) + b"\0" + value.signature.encode("ascii")

    def decode(self, buf: memoryview, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise GVariantError("variants nested too deeply")
        sep = bytes(buf[-MAX_TYPE_STRING - 1 :]).rfind(b"\0")
        if sep < 0:
            raise GVariantError("variant has no type string")
        start = max(0, len(buf) - MAX_TYPE_STRING - 1) + sep
        try:
            signature = bytes(buf[start + 1 :]).decode("ascii")
            inner = parse_type(signature)
        except (UnicodeDecodeError, GVariantError):
            raise GVariantError("variant has an invalid type string") from None
        return Variant(signature, inner.decode(buf[:start], depth + 1))


class _Maybe(GType):
    def __init__(self, element: GType) -> None:
        self.element = element
        self.alignment = element.alignment
        self.signature = "m" + element.signature

    def encode(self, value: Any) -> bytes:
        if value is None:
            return b""
        data = self.element.encode(value)
        return data if self.element.fixed_size is not None else data + b"\0"

    def decode(self, buf: memoryview, depth: int) -> Any:
        if len(buf) == 0:
            return None
        if self.element.fixed_size is not None:
            return self.element.decode(buf, depth + 1)
        if buf[-1] != 0:
            raise GVariantError("maybe value lacks its trailing NUL")
        return self.element.decode(buf[:-1], depth + 1)


class _Array(GType):
    def __init__(self, element: GType) -> None:
        self.element = element
        self.alignment = element.alignment
        self.signature = "a" + element.signature
        self.is_dict = element.signature.startswith("{")
        self.is_bytes = element.signature == "y"

    def _items(self, value: Any) -> list[Any]:
        if self.is_dict:
            if not isinstance(value, dict):
                raise GVariantError(f"type {self.signature} needs a dict")
            return list(value.items())
        if self.is_bytes:
            raise AssertionError("unreachable")
        return list(value)

    def encode(self, value: Any) -> bytes:
        if self.is_bytes:
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise GVariantError(f"type ay needs bytes, got {type(value).__name__}")
            return bytes(value)
        items = self._items(value)
        element = self.element
        if element.fixed_size is not None:
            return b"".join(element.encode(item) for item in items)
        out = bytearray()
        ends = []
        for item in items:
            out += b"\0" * _pad(len(out), element.alignment)
            out += element.encode(item)
            ends.append(len(out))
        if not ends:
            return b""
        _, width = _framed_size(len(out), len(ends))
        for end in ends:
            out += end.to_bytes(width, "little")
        return bytes(out)

    def decode(self, buf: memoryview, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise GVariantError("containers nested too deeply")
        if self.is_bytes:
            return bytes(buf)
        element = self.element
        size = len(buf)
        items: list[Any] = []
        if element.fixed_size is not None:
            if size % element.fixed_size:
                raise GVariantError(
                    f"{self.signature}: size {size} is not a multiple of {element.fixed_size}"
                )
            step = element.fixed_size
            _spend(size // step)
            items = [element.decode(buf[i : i + step], depth + 1) for i in range(0, size, step)]
        elif size:
            width = _offset_size(size)
            table = _read_offset(buf, size - width, width)
            if table > size or (size - table) % width:
                raise GVariantError(
                    f"{self.signature}: framing offset {table} is outside the {size}-byte value"
                )
            count = (size - table) // width
            _spend(count)
            start = 0
            for i in range(count):
                end = _read_offset(buf, table + i * width, width)
                start += _pad(start, element.alignment)
                if not start <= end <= table:
                    raise GVariantError(
                        f"{self.signature}: element {i} has framing offset {end} out of bounds"
                    )
                items.append(element.decode(buf[start:end], depth + 1))
                start = end
        if self.is_dict:
            return dict(items)
        return items


class _Tuple(GType):
    def __init__(self, members: list[GType], dict_entry: bool = False) -> None:
        self.members = members
        self.dict_entry = dict_entry
        inner = "".join(m.signature for m in members)
        self.signature = "{" + inner + "}" if dict_entry else "(" + inner + ")"
        self.alignment = max((m.alignment for m in members), default=1)
        size = 0
        fixed = True
        for m in members:
            if m.fixed_size is None:
                fixed = False
                break
            size += _pad(size, m.alignment) + m.fixed_size
        if fixed:
            size += _pad(size, self.alignment)
            self.fixed_size = size or 1  # the unit tuple "()" occupies one zero byte
        self._n_offsets = sum(1 for m in members[:-1] if m.fixed_size is None)

    def encode(self, value: Any) -> bytes:
        values = tuple(value)
        if len(values) != len(self.members):
            raise GVariantError(f"{self.signature} needs {len(self.members)} members, got {len(values)}")
        if not self.members:
            return b"\0"
        out = bytearray()
        ends = []
        last = len(self.members) - 1
        for i, (member, item) in enumerate(zip(self.members, values, strict=True)):
            out += b"\0" * _pad(len(out), member.alignment)
            out += member.encode(item)
            if member.fixed_size is None and i != last:
                ends.append(len(out))
        if self.fixed_size is not None:
            out += b"\0" * (self.fixed_size - len(out))
            return bytes(out)
        if ends:
            _, width = _framed_size(len(out), len(ends))
            for end in reversed(ends):
                out += end.to_bytes(width, "little")
        return bytes(out)

    def decode(self, buf: memoryview, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise GVariantError("containers nested too deeply")
        size = len(buf)
        if self.fixed_size is not None and size != self.fixed_size:
            raise GVariantError(f"{self.signature} needs {self.fixed_size} bytes, got {size}")
        width = _offset_size(size)
        table_end = size - self._n_offsets * width
        if table_end < 0:
            raise GVariantError(f"{self.signature}: too short for its framing offsets")
        values = []
        pos = 0
        offset_index = 0
        last = len(self.members) - 1
        for i, member in enumerate(self.members):
            pos += _pad(pos, member.alignment)
            if member.fixed_size is not None:
                end = pos + member.fixed_size
            elif i == last:
                end = table_end
            else:
                offset_index += 1
                end = _read_offset(buf, size - offset_index * width, width)
            if not pos <= end <= table_end:
                raise GVariantError(f"{self.signature}: member {i} spans {pos}..{end}, outside the value")
            values.append(member.decode(buf[pos:end], depth + 1))
            pos = end
        if self.dict_entry:
            return tuple(values)
        return tuple(values)


def _parse_one(sig: str, pos: int, depth: int) -> tuple[GType, int]:
    if depth > MAX_DEPTH or pos >= len(sig):
        raise GVariantError(f"invalid type string {sig!r}")
    code = sig[pos]
    if code in _Basic._formats:
        return _Basic(code), pos + 1
    if code in "sog":
        return _String(code), pos + 1
    if code == "v":
        return _Variant(), pos + 1
    if code == "a":
        element, end = _parse_one(sig, pos + 1, depth + 1)
        return _Array(element), end
    if code == "m":
        element, end = _parse_one(sig, pos + 1, depth + 1)
        return _Maybe(element), end
    if code in "({":
        close = ")" if code == "(" else "}"
        members = []
        pos += 1
        while pos < len(sig) and sig[pos] != close:
            member, pos = _parse_one(sig, pos, depth + 1)
            members.append(member)
        if pos >= len(sig):
            raise GVariantError(f"unterminated container in type string {sig!r}")
        if code == "{" and (len(members) != 2 or not isinstance(members[0], (_Basic, _String))):
            raise GVariantError(f"invalid dict entry in type string {sig!r}")
        return _Tuple(members, dict_entry=code == "{"), pos + 1
    raise GVariantError(f"invalid type string {sig!r}")


@lru_cache(maxsize=256)
def parse_type(signature: str) -> GType:
    """Parse a complete GVariant type string (e.g. ``"(a{sv}ay)"``)."""
    if len(signature) > MAX_TYPE_STRING:
        raise GVariantError("type string too long")
    gtype, end = _parse_one(signature, 0, 0)
    if end != len(signature):
        raise GVariantError(f"invalid type string {signature!r}")
    return gtype


def encode(signature: str, value: Any) -> bytes:
    """Serialize ``value`` as GVariant type ``signature`` in normal form."""
    return parse_type(signature).encode(value)


def decode(signature: str, data: bytes | memoryview) -> Any:
    """Deserialize bytes of GVariant type ``signature``; raises GVariantError if malformed."""
    gtype = parse_type(signature)
    _budget.left = MAX_VALUES
    try:
        return gtype.decode(memoryview(data).cast("B"), 0)
    finally:
        del _budget.left

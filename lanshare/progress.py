"""Progress bars for long work, shown only when a person is watching a terminal.

Light on purpose: ``lanshare pull`` handed to the running daemon imports this and the config
only, so tqdm is imported when a bar is drawn, not before.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal

from lanshare.units import format_size

Phase = Literal["metadata", "content"]


@dataclass(frozen=True)
class ProgressUpdate:
    """Where a pull stands, after each object stored."""

    phase: Phase
    objects_done: int
    objects_total: int | None  # None while the tree walk has not found every object yet
    bytes_done: int
    source: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProgressUpdate:
        """The update a daemon sent; a malformed one raises ValueError."""
        try:
            update = cls(**data)
        except TypeError as e:
            raise ValueError(f"malformed progress update: {e}") from None
        if update.phase not in ("metadata", "content"):
            raise ValueError(f"malformed progress update: phase {update.phase!r}")
        return update


ProgressCallback = Callable[[ProgressUpdate], None]


@contextmanager
def progress_bar(description: str, total: int | None, unit: str = "obj") -> Iterator[Callable[[int], None]]:
    """Yield an ``advance(n)`` callback; draws a bar on stderr only when it is a terminal."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=description, unit=unit, unit_scale=True, leave=False) as bar:

        def advance(n: int) -> None:
            bar.update(n)

        yield advance


@contextmanager
def pull_progress_bar(enabled: bool) -> Iterator[ProgressCallback | None]:
    """A pull's bar on stderr (objects, bytes, rate, source) when a person is watching; else None."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm  # only for a person watching: ~20 ms of every pull's start-up otherwise

    with tqdm(desc="pull", unit="obj", leave=False) as bar:

        def update(u: ProgressUpdate) -> None:
            if bar.total != u.objects_total:
                bar.total = u.objects_total
            elapsed = bar.format_dict["elapsed"] or 1e-9
            rate = format_size(int(u.bytes_done / elapsed))
            text = f"{u.phase} {format_size(u.bytes_done)} {rate}/s from {u.source}"
            bar.set_postfix_str(text, refresh=False)
            bar.update(u.objects_done - bar.n)

        yield update

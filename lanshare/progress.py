"""Progress bars for long work, shown only when a person is watching a terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tqdm import tqdm


@contextmanager
def progress_bar(description: str, total: int | None, unit: str = "obj") -> Iterator[Callable[[int], None]]:
    """Yield an ``advance(n)`` callback; draws a bar on stderr only when it is a terminal."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    with tqdm(total=total, desc=description, unit=unit, unit_scale=True, leave=False) as bar:

        def advance(n: int) -> None:
            bar.update(n)

        yield advance

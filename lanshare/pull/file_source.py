"""An OSTree archive repository on a local filesystem as a pull source (``file:///…``).

The offline site's update path: a mirror on a local disk or NFS, or a USB drive an admin carried
in.  Objects are read from the archive layout on disk and handed to the same sink as HTTP
objects, so they are verified the same way (checksum, signatures, ref binding, no downgrade):
a file source is exactly as trusted as an HTTP origin, no more.  Reads block, so they run in
worker threads; the buffers that hold them are bounded as for HTTP, so a corrupt or runaway file
cannot fill memory.
"""

from __future__ import annotations

import asyncio
import configparser
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import aiohttp

from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import ARCHIVE_MODES, RepoError, validate_ref
from lanshare.pull.errors import SourceFailure
from lanshare.pull.http import MAX_SMALL_DOCUMENT, ObjectBuffer, Timeouts
from lanshare.pull.sources import Source, SourceSpec, object_path
from lanshare.wire import ObjectName

_CHUNK = 1024 * 1024


def is_file_url(url: str) -> bool:
    """Whether ``url`` names a local directory (``file:///path``)."""
    return urlsplit(url).scheme == "file"


def url_path(url: str) -> Path:
    """The directory a ``file://`` URL names."""
    return Path(url2pathname(urlsplit(url).path))


class FileSource(Source):
    """An archive repository in a local directory."""

    kind = "archive"

    def __init__(
        self, session: aiohttp.ClientSession, spec: SourceSpec, timeouts: Timeouts, tmp_dir: Path
    ) -> None:
        super().__init__(session, spec, timeouts, tmp_dir)
        self.root = url_path(self.url)
        if (problem := _not_an_archive(self.root)) is not None:
            # Said once, as the reason this source is skipped: not a traceback on every poll.
            self.failure = problem

    async def resolve_ref(self, ref: str) -> str | None:
        """The commit the repository's summary or ``refs/heads/<ref>`` names, or None."""
        try:
            validate_ref(ref)
        except RepoError:
            return None
        return await super().resolve_ref(ref)

    async def fetch_file(self, path: str, limit: int = MAX_SMALL_DOCUMENT) -> bytes | None:
        # Reads block: in a worker thread, as downloads are.
        return await asyncio.to_thread(self._read_small, path, limit)

    async def download(self, name: ObjectName) -> ObjectBuffer | None:
        """Read one object into a bounded buffer; None when absent."""
        buffer = ObjectBuffer(str(name), self.tmp_dir, filez=name.kind is ObjectType.FILE)
        try:
            found = await asyncio.to_thread(self._read_into, object_path(name), buffer)
        except BaseException:
            buffer.close()
            raise
        if not found:
            buffer.close()
            return None
        return buffer

    def _read_small(self, relative: str, limit: int) -> bytes | None:
        try:
            with open(self.root / relative, "rb") as f:
                data = f.read(limit + 1)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise SourceFailure(f"cannot read {self.root / relative}: {e.strerror or e}") from None
        if len(data) > limit:
            raise SourceFailure(f"{relative} is larger than {limit} bytes", bad_data=True)
        return data

    def _read_into(self, relative: str, buffer: ObjectBuffer) -> bool:
        try:
            with open(self.root / relative, "rb") as f:
                while chunk := f.read(_CHUNK):
                    buffer.write(chunk)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as e:
            raise SourceFailure(f"cannot read {self.root / relative}: {e.strerror or e}") from None
        return True


def _not_an_archive(root: Path) -> str | None:
    """Why ``root`` cannot be read as an archive repository, or None if it can."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string((root / "config").read_text())
    except FileNotFoundError:
        return f"{root} is not an OSTree repository (no config file; is the drive mounted?)"
    except (OSError, UnicodeDecodeError, configparser.Error) as e:
        return f"{root}/config is unreadable: {e}"
    mode = parser.get("core", "mode", fallback="bare")
    if mode not in ARCHIVE_MODES:
        return f"{root} is a {mode!r} repository; lanshare pulls from archive repositories"
    return None

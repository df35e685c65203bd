"""Write a file all or nothing through an unnamed temporary file, as libostree does.

A verified object is written into an unnamed file (``O_TMPFILE``) in the repository's tmp/ and
then given its name with ``linkat``.  Against the usual named staging file + rename this creates
and removes no name in tmp/, so writers in several processes do not queue on tmp/'s directory
lock.  That lock matters on ext4 after many deletions (a prune, a removed repository): each new
inode is then found by skipping recently deleted ones, slowly, and while one writer does that
under the lock the others spin on it (`perf`: ~40% of a pull's CPU).  A crash leaves nothing
behind either: an unnamed file vanishes with its descriptor.

Naming an unnamed file takes ``linkat(fd, "", …, AT_EMPTY_PATH)``, which needs
CAP_DAC_READ_SEARCH, or ``linkat("/proc/self/fd/N", …, AT_SYMLINK_FOLLOW)``, which some sandboxes
refuse (EXDEV).  Whichever works is remembered; where neither does, or the filesystem has no
``O_TMPFILE``, :meth:`UnnamedWriter.write` returns False and the caller uses a named file.
"""

from __future__ import annotations

import ctypes
import errno
import os
from contextlib import suppress

_LIBC = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
# Errors that say "this way of naming an unnamed file is not available here".
_UNAVAILABLE = (errno.ENOENT, errno.EPERM, errno.EACCES, errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP)


def _link_empty_path(fd: int, target: bytes) -> int:
    if _LIBC.linkat(fd, b"", _AT_FDCWD, target, _AT_EMPTY_PATH) == 0:
        return 0
    return ctypes.get_errno()


def _link_proc(fd: int, target: bytes) -> int:
    try:
        os.link(f"/proc/self/fd/{fd}", target, follow_symlinks=True)
    except OSError as e:
        return e.errno or errno.EIO
    return 0


class UnnamedWriter:
    """Writes files through unnamed files in one directory (a repository's tmp/)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        # The ways of naming still worth trying here, the one that worked first.
        self._ways = [_link_empty_path, _link_proc]

    @property
    def available(self) -> bool:
        """False once this directory turned out not to support it (then callers stop trying)."""
        return bool(self._ways)

    def write(self, path: str, data: bytes, mode: int = 0o644) -> bool:
        """Write ``data`` as the new file ``path`` (its directory is made if missing); an existing
        ``path`` is left as it is.  False when unnamed files cannot be used here: nothing written."""
        if not self._ways:
            return False
        fd = open_unnamed(self.directory)
        if fd is None:
            self._ways = []
            return False
        try:
            write_all(fd, data)
            os.fchmod(fd, mode)  # whatever the umask
            return self.link(fd, path)
        finally:
            os.close(fd)

    def link(self, fd: int, path: str, *, own_file: bool = True) -> bool:
        """Give the unnamed file open as ``fd`` the name ``path`` (an existing ``path`` stays);
        False when unnamed files cannot be named here.  ``own_file``: ``fd`` came from
        :meth:`write`, so a refusal says the way does not work here and it is not tried again;
        a file opened elsewhere may just not be linkable (``O_EXCL``), which teaches nothing."""
        target = os.fsencode(path)
        for link in list(self._ways):
            err = link(fd, target)
            if err == errno.ENOENT:
                # The objects/XX directory may not exist yet (only the first object of each pays
                # for the mkdir), or another writer may be making it right now: make sure, retry.
                with suppress(FileExistsError):
                    os.mkdir(os.path.dirname(path))
                err = link(fd, target)
            if err in (0, errno.EEXIST):
                return True
            if err not in _UNAVAILABLE:
                raise OSError(err, os.strerror(err), path)
            if own_file:
                with suppress(ValueError):  # another thread learnt the same just now
                    self._ways.remove(link)
        return False


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def open_unnamed(directory: str) -> int | None:
    """A new unnamed file in ``directory`` that :meth:`UnnamedWriter.link` can name later
    (``O_TMPFILE`` without ``O_EXCL``, unlike :func:`tempfile.TemporaryFile`'s); None where the
    filesystem has none."""
    try:
        return os.open(directory, os.O_RDWR | os.O_TMPFILE | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            return None
        raise

"""An OSTree ``archive`` repository on disk, read and written in pure Python.

Layout and semantics follow libostree so that the ``ostree`` CLI and lanshare can share one
repository: ``config``, ``objects/XX/YYYY….ext``, ``refs/heads``, ``refs/mirrors/<collection-id>``,
``state/<commit>.commitpartial``, and a ``tmp/`` directory where every write is staged.

Durability follows libostree too: objects are written to ``tmp/`` and renamed into place only
after their checksum is verified (so a crash never leaves a visible half-object), and the
filesystem is synced before a ref is moved to point at them.
"""

from __future__ import annotations

import configparser
import ctypes
import ctypes.util
import fcntl
import hashlib
import io
import itertools
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from lanshare.errors import CorruptObject, Error, MissingObject
from lanshare.gvariant import Variant
from lanshare.ostree import content
from lanshare.ostree.content import FileHeader
from lanshare.ostree.objects import (
    MAX_METADATA_SIZE,
    Commit,
    DirMeta,
    DirTree,
    ObjectType,
    encode_metadata,
    is_checksum,
    parse_metadata,
    sha256_hex,
    validate_metadata_object,
)
from lanshare.ostree.unnamed import UnnamedWriter, write_all

ARCHIVE_MODES = ("archive-z2", "archive")
# libostree's OSTREE_REF_FRAGMENT_REGEXP, joined by slashes.
_REF_RE = re.compile(r"^[\w\d][-._\w\d]*(/[\w\d][-._\w\d]*)*$", re.ASCII)
_COLLECTION_ID_RE = re.compile(r"^[A-Za-z_-][A-Za-z0-9_-]*(\.[A-Za-z_-][A-Za-z0-9_-]*)+$", re.ASCII)
_PARTIAL_RE = re.compile(r"^[0-9a-f]{4,63}$")
_SUFFIX_RE = re.compile(r"^(.*?)(\^*)$")
# Staging file names in tmp/ (itertools.count's next() is atomic under the GIL).
_TMP_COUNTER = itertools.count()
# Objects asked about in one objects/XX directory from which listing it beats a stat per object.
_LIST_DIR_FROM = 4


class RepoError(Error):
    """The repository is missing, malformed or not an archive repository."""


def validate_ref(name: str) -> str:
    """Return ``name`` if it is a valid OSTree ref name, else raise RepoError."""
    if len(name) > 255 or not _REF_RE.fullmatch(name) or ".." in name.split("/"):
        raise RepoError(f"invalid ref name {name!r}: use slash-separated [A-Za-z0-9_][-._A-Za-z0-9]* parts")
    return name


def validate_collection_id(collection_id: str) -> str:
    """Return ``collection_id`` if it is a valid reverse-DNS collection ID, else raise RepoError."""
    if len(collection_id) > 255 or not _COLLECTION_ID_RE.fullmatch(collection_id):
        raise RepoError(f"invalid collection ID {collection_id!r}: expected reverse-DNS like org.example.Os")
    return collection_id


def _check_filez(expected: str, actual: str) -> None:
    """Refuse a ``.filez`` whose content does not hash to the name it was offered under."""
    if actual != expected:
        raise CorruptObject(f"{expected}.filez", f"checksum mismatch (content hashes to {actual})")


def _syncfs(path: Path) -> None:
    """Flush every file of the filesystem holding ``path`` (what libostree does per transaction)."""
    libc_name = ctypes.util.find_library("c")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True) if libc_name else None
        if libc is None or libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Repo:
    """An open archive repository; cheap to create, holds no file descriptors."""

    def __init__(self, path: Path, collection_id: str | None) -> None:
        self.path = path
        self.collection_id = collection_id
        self.objects_dir = path / "objects"
        self.tmp_dir = path / "tmp"
        self._unnamed = UnnamedWriter(os.fspath(self.tmp_dir))
        self.state_dir = path / "state"

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def init(cls, path: Path, collection_id: str | None = None) -> Repo:
        """Create an empty archive repository (like ``ostree init --mode=archive``), or open it."""
        if (path / "config").exists():
            return cls.open(path)
        if collection_id is not None:
            validate_collection_id(collection_id)
        for sub in ("objects", "tmp", "state", "extensions", "refs/heads", "refs/mirrors", "refs/remotes"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        (path / ".lock").touch()
        text = "[core]\nrepo_version=1\nmode=archive-z2\n"
        if collection_id:
            text += f"collection-id={collection_id}\n"
        repo = cls(path, collection_id)
        repo.atomic_write(path / "config", [text.encode()], durable=True)
        return repo

    @classmethod
    def open(cls, path: Path) -> Repo:
        """Open an existing archive repository, checking its config."""
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        try:
            text = (path / "config").read_text()
            parser.read_string(text)
        except FileNotFoundError:
            raise RepoError(f"{path}: not an OSTree repository (no config file)") from None
        except (OSError, UnicodeDecodeError, configparser.Error) as e:
            raise RepoError(f"{path}/config: unreadable: {e}") from None
        mode = parser.get("core", "mode", fallback="bare")
        if mode not in ARCHIVE_MODES:
            raise RepoError(f"{path}: repository mode is {mode!r}; lanshare needs an archive repository")
        collection_id = parser.get("core", "collection-id", fallback=None) or None
        for sub in ("objects", "tmp", "state", "refs/heads"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        return cls(path, collection_id)

    @contextmanager
    def lock(self, *, exclusive: bool) -> Iterator[None]:
        """Hold the repository lock: shared while writing objects, exclusive while pruning.

        Prune's sweep must not interleave with a writer that relies on an object already being
        there, so writers hold it shared for a whole transaction and prune holds it exclusively.
        """
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    # -- writing primitives ----------------------------------------------------------------

    def atomic_write(self, target: Path, chunks: Iterable[bytes], *, durable: bool = False) -> None:
        """Stage ``chunks`` in tmp/ and rename over ``target``; fsync when ``durable``."""
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp_dir, prefix="tmpobject-")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.chmod(tmp_name, 0o644)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp_name, target)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
        if durable:
            _fsync_dir(target.parent)

    def _create_tmp(self) -> tuple[int, str]:
        """A new, empty staging file in tmp/, like mkstemp's (clean_tmp finds it) but cheaper:
        a counter instead of random names, no Python file object (for 10⁴ small objects)."""
        while True:
            name = f"{os.fspath(self.tmp_dir)}/tmpobject-{os.getpid()}-{next(_TMP_COUNTER)}"
            try:
                return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), name
            except FileExistsError:
                continue  # left by an earlier process with this pid

    def _publish_bytes(self, path: str, data: bytes) -> None:
        """Write verified in-memory ``data`` as the file ``path``, all or nothing: through an
        unnamed file where the system allows it (:mod:`lanshare.ostree.unnamed`), else a named
        staging file in tmp/ and a rename.  An object already present stays."""
        if self._unnamed.write(path, data):
            return
        fd, tmp_name = self._create_tmp()
        try:
            try:
                write_all(fd, data)
                os.fchmod(fd, 0o644)
            finally:
                os.close(fd)
            try:
                os.rename(tmp_name, path)
            except FileNotFoundError:
                # Only the first object of each objects/XX directory pays for the mkdir.
                with suppress(FileExistsError):
                    os.mkdir(os.path.dirname(path))
                os.rename(tmp_name, path)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise

    def sync(self) -> None:
        """Make every object written so far durable, before a ref may point at it."""
        _syncfs(self.path)

    def clean_tmp(self) -> int:
        """Remove staging files a crashed writer left in tmp/; returns how many."""
        removed = 0
        for entry in self.tmp_dir.glob("tmpobject-*"):
            with suppress(FileNotFoundError):
                entry.unlink()
                removed += 1
        return removed

    # -- objects ---------------------------------------------------------------------------

    def object_path(self, checksum: str, object_type: ObjectType) -> Path:
        """Where an object lives: ``objects/XX/YYYY….ext``."""
        return Path(self._object_file(checksum, object_type))

    def _object_file(self, checksum: str, object_type: ObjectType) -> str:
        # A plain string: building a Path per object is a visible cost in walks and pulls of 10⁵ objects.
        if not is_checksum(checksum):
            raise ValueError(f"not a checksum: {checksum!r}")
        return f"{os.fspath(self.objects_dir)}/{checksum[:2]}/{checksum[2:]}.{object_type.value}"

    def has_object(self, checksum: str, object_type: ObjectType) -> bool:
        """True if the object's file exists."""
        return self.object_path(checksum, object_type).exists()

    def absent(self, objects: Sequence[tuple[str, ObjectType]]) -> list[int]:
        """Positions in ``objects`` of those not in the repository.

        For the thousands of objects a pull checks at once: objects sharing an ``objects/XX``
        directory are looked up in one listing of it (or one failed open, in a new repository)
        instead of a stat each; a directory asked about once or twice still gets stats."""
        by_dir: dict[str, list[int]] = {}
        for i, (checksum, _) in enumerate(objects):
            if not is_checksum(checksum):
                raise ValueError(f"not a checksum: {checksum!r}")
            by_dir.setdefault(checksum[:2], []).append(i)
        base = os.fspath(self.objects_dir)
        missing: list[int] = []
        for prefix, positions in by_dir.items():
            if len(positions) < _LIST_DIR_FROM:
                missing += [i for i in positions if not os.path.exists(self._object_file(*objects[i]))]
                continue
            try:
                present = set(os.listdir(f"{base}/{prefix}"))
            except FileNotFoundError:
                present = set()
            for i in positions:
                checksum, object_type = objects[i]
                if f"{checksum[2:]}.{object_type.value}" not in present:
                    missing.append(i)
        missing.sort()
        return missing

    def iter_objects(self) -> Iterator[tuple[str, ObjectType, Path]]:
        """Every object file in the repository, with its type (stray files skipped)."""
        for checksum, kind, entry in self.iter_object_entries():
            yield checksum, kind, Path(entry.path)

    def iter_object_entries(self) -> Iterator[tuple[str, ObjectType, os.DirEntry[str]]]:
        """As :meth:`iter_objects`, with the directory entry (cheaper than a Path for 10⁵ objects)."""
        if not self.objects_dir.is_dir():
            return
        for prefix in sorted(os.listdir(self.objects_dir)):
            if len(prefix) != 2:
                continue
            with os.scandir(self.objects_dir / prefix) as entries:
                for entry in entries:
                    rest, _, ext = entry.name.partition(".")
                    checksum = prefix + rest
                    if not is_checksum(checksum):
                        continue
                    with suppress(ValueError):
                        yield checksum, ObjectType.from_extension(ext), entry

    def read_metadata_bytes(self, checksum: str, object_type: ObjectType, *, verify: bool = True) -> bytes:
        """Read a metadata object, checking (by default) that its bytes match its name."""
        path = self._object_file(checksum, object_type)
        where = f"{checksum}.{object_type.value}"
        try:
            with open(path, "rb") as f:
                # Size first: read(MAX_METADATA_SIZE + 1) would allocate that whole buffer each time.
                if os.fstat(f.fileno()).st_size > MAX_METADATA_SIZE:
                    raise CorruptObject(where, "larger than the metadata size limit")
                data = f.read()
        except FileNotFoundError:
            raise MissingObject(f"{where}: object is missing") from None
        if len(data) > MAX_METADATA_SIZE:
            raise CorruptObject(where, "larger than the metadata size limit")
        if verify and object_type is not ObjectType.COMMIT_META and sha256_hex(data) != checksum:
            raise CorruptObject(where, f"checksum mismatch (content hashes to {sha256_hex(data)})")
        return data

    def load_commit(self, checksum: str, *, verify: bool = True) -> Commit:
        """Load and parse a commit object."""
        data = self.read_metadata_bytes(checksum, ObjectType.COMMIT, verify=verify)
        return Commit.from_bytes(data, f"{checksum}.commit")

    def load_dirtree(self, checksum: str, *, verify: bool = True) -> DirTree:
        """Load and parse a dirtree object."""
        data = self.read_metadata_bytes(checksum, ObjectType.DIR_TREE, verify=verify)
        return DirTree.from_bytes(data, f"{checksum}.dirtree")

    def load_dirmeta(self, checksum: str, *, verify: bool = True) -> DirMeta:
        """Load and parse a dirmeta object."""
        data = self.read_metadata_bytes(checksum, ObjectType.DIR_META, verify=verify)
        return DirMeta.from_bytes(data, f"{checksum}.dirmeta")

    def load_commitmeta(self, commit: str) -> dict[str, Variant] | None:
        """The detached metadata (signatures) of a commit, or None if it has none."""
        try:
            data = self.read_metadata_bytes(commit, ObjectType.COMMIT_META)
        except MissingObject:
            return None
        return parse_metadata(data, f"{commit}.commitmeta")

    def write_metadata(self, object_type: ObjectType, data: bytes, expected: str | None = None) -> str:
        """Store a metadata object after parsing it and checking its name; returns the checksum."""
        checksum = sha256_hex(data)
        where = f"{expected or checksum}.{object_type.value}"
        if expected is not None and checksum != expected:
            raise CorruptObject(where, f"checksum mismatch (content hashes to {checksum})")
        validate_metadata_object(object_type, data, where)
        path = self._object_file(checksum, object_type)
        if not os.path.exists(path):
            self._publish_bytes(path, data)
        return checksum

    def write_commitmeta(self, commit: str, metadata: dict[str, Variant]) -> None:
        """Store a commit's detached metadata, named after the commit."""
        self.atomic_write(self.object_path(commit, ObjectType.COMMIT_META), [encode_metadata(metadata)])

    def write_commitmeta_bytes(self, commit: str, data: bytes) -> None:
        """Store detached metadata received from elsewhere, after checking that it parses."""
        parse_metadata(data, f"{commit}.commitmeta")
        self.atomic_write(self.object_path(commit, ObjectType.COMMIT_META), [data])

    def write_content(self, header: FileHeader, chunks: Iterable[bytes]) -> str:
        """Compress and store a file's data as ``.filez``; returns its checksum."""
        digest = hashlib.sha256(header.checksum_prefix())

        def hashed() -> Iterator[bytes]:
            for chunk in chunks:
                digest.update(chunk)
                yield chunk

        fd, tmp_name = tempfile.mkstemp(dir=self.tmp_dir, prefix="tmpobject-")
        try:
            with os.fdopen(fd, "wb") as f:
                for out in content.compress_chunks(header, hashed()):
                    f.write(out)
            checksum = digest.hexdigest()
            path = self.object_path(checksum, ObjectType.FILE)
            if path.exists():
                os.unlink(tmp_name)
            else:
                os.chmod(tmp_name, 0o644)
                path.parent.mkdir(exist_ok=True)
                os.rename(tmp_name, path)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
        return checksum

    def write_filez(self, expected: str, stream: BinaryIO) -> None:
        """Store a ``.filez`` received from elsewhere, byte for byte, once it verifies."""
        if self._adopt_filez(expected, stream):
            return
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp_dir, prefix="tmpobject-")
        try:
            with os.fdopen(fd, "w+b") as f:
                shutil.copyfileobj(stream, f, content.CHUNK)
                f.seek(0)
                _check_filez(expected, content.checksum_filez(f, f"{expected}.filez")[0])
            os.chmod(tmp_name, 0o644)
            path = self.object_path(expected, ObjectType.FILE)
            path.parent.mkdir(exist_ok=True)
            os.rename(tmp_name, path)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise

    def _adopt_filez(self, expected: str, stream: BinaryIO) -> bool:
        """Verify ``stream`` and give it the object's name in place, when it is an unnamed file of
        this filesystem (how a pull spools a big download): no copy of a file of many MB.  False,
        having changed nothing, for any other stream or where unnamed files cannot be named."""
        try:
            fd = stream.fileno()
            st = os.fstat(fd)
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            return False
        if st.st_nlink != 0 or not stat.S_ISREG(st.st_mode) or st.st_dev != os.stat(self.tmp_dir).st_dev:
            return False
        stream.seek(0)
        _check_filez(expected, content.checksum_filez(stream, f"{expected}.filez")[0])
        os.fchmod(fd, 0o644)
        if self._unnamed.link(fd, self._object_file(expected, ObjectType.FILE), own_file=False):
            return True
        stream.seek(0)
        return False

    def write_filez_bytes(self, expected: str, data: bytes) -> None:
        """Like :meth:`write_filez` for data already in memory: verified before it touches the disk."""
        _check_filez(expected, content.checksum_filez_bytes(data, f"{expected}.filez"))
        self._publish_bytes(self._object_file(expected, ObjectType.FILE), data)

    def open_content(self, checksum: str) -> tuple[FileHeader, Iterator[bytes]]:
        """A content object's header and its data as chunks (checked against the declared size)."""
        path = self.object_path(checksum, ObjectType.FILE)
        where = f"{checksum}.filez"
        try:
            f = path.open("rb")
        except FileNotFoundError:
            raise MissingObject(f"{where}: object is missing") from None
        header = content.read_archive_header(f, where)

        def chunks() -> Iterator[bytes]:
            with f:
                yield from content.inflate(f, header, where)

        return header, chunks()

    def verify_content(self, checksum: str) -> FileHeader:
        """Decompress and checksum a content object; raises CorruptObject on any mismatch."""
        where = f"{checksum}.filez"
        try:
            with self.object_path(checksum, ObjectType.FILE).open("rb") as f:
                actual, header = content.checksum_filez(f, where)
        except FileNotFoundError:
            raise MissingObject(f"{where}: object is missing") from None
        if actual != checksum:
            raise CorruptObject(where, f"checksum mismatch (content hashes to {actual})")
        return header

    # -- closure ---------------------------------------------------------------------------

    def iter_closure(self, commit: str) -> Iterator[tuple[str, ObjectType]]:
        """Every object a commit reaches, each once; raises MissingObject on the first gap."""
        yield commit, ObjectType.COMMIT
        parsed = self.load_commit(commit, verify=False)
        yield parsed.root_meta, ObjectType.DIR_META
        seen_meta = {parsed.root_meta}
        seen_trees: set[str] = set()
        seen_files: set[str] = set()
        stack = [parsed.root_tree]
        while stack:
            tree_checksum = stack.pop()
            if tree_checksum in seen_trees:
                continue
            seen_trees.add(tree_checksum)
            yield tree_checksum, ObjectType.DIR_TREE
            tree = self.load_dirtree(tree_checksum, verify=False)
            for _, file_checksum in tree.files:
                if file_checksum not in seen_files:
                    seen_files.add(file_checksum)
                    yield file_checksum, ObjectType.FILE
            for _, sub_tree, sub_meta in tree.dirs:
                if sub_meta not in seen_meta:
                    seen_meta.add(sub_meta)
                    yield sub_meta, ObjectType.DIR_META
                stack.append(sub_tree)

    def missing_objects(self, commit: str) -> list[tuple[str, ObjectType]]:
        """Objects of a commit's closure that are absent (empty when the commit is complete)."""
        missing: list[tuple[str, ObjectType]] = []
        if not self.has_object(commit, ObjectType.COMMIT):
            return [(commit, ObjectType.COMMIT)]
        parsed = self.load_commit(commit, verify=False)
        stack: list[tuple[str, ObjectType]] = [
            (parsed.root_meta, ObjectType.DIR_META),
            (parsed.root_tree, ObjectType.DIR_TREE),
        ]
        seen: set[str] = set()
        while stack:
            checksum, kind = stack.pop()
            if (checksum + kind.value) in seen:
                continue
            seen.add(checksum + kind.value)
            if not self.has_object(checksum, kind):
                missing.append((checksum, kind))
                continue
            if kind is ObjectType.DIR_TREE:
                tree = self.load_dirtree(checksum, verify=False)
                stack.extend((c, ObjectType.FILE) for _, c in tree.files)
                for _, sub_tree, sub_meta in tree.dirs:
                    stack.append((sub_meta, ObjectType.DIR_META))
                    stack.append((sub_tree, ObjectType.DIR_TREE))
        return missing

    # -- partial commits -------------------------------------------------------------------

    def _partial_path(self, commit: str) -> Path:
        if not is_checksum(commit):
            raise ValueError(f"not a checksum: {commit!r}")
        return self.state_dir / f"{commit}.commitpartial"

    def mark_partial(self, commit: str) -> None:
        """Record that only part of a commit's closure is present (libostree's commitpartial)."""
        self._partial_path(commit).touch()

    def clear_partial(self, commit: str) -> None:
        """Record that a commit's closure is complete."""
        with suppress(FileNotFoundError):
            self._partial_path(commit).unlink()

    def is_partial(self, commit: str) -> bool:
        """True if the commit is marked as having an incomplete closure."""
        return self._partial_path(commit).exists()

    def partial_commits(self) -> set[str]:
        """All commits marked partial."""
        return {p.name.split(".")[0] for p in self.state_dir.glob("*.commitpartial")}

    # -- refs ------------------------------------------------------------------------------

    def _ref_path(self, name: str, collection_id: str | None) -> Path:
        validate_ref(name)
        if collection_id is None or collection_id == self.collection_id:
            return self.path / "refs" / "heads" / name
        validate_collection_id(collection_id)
        return self.path / "refs" / "mirrors" / collection_id / name

    def read_ref(self, name: str, collection_id: str | None = None) -> str | None:
        """The commit a ref points to, or None if the ref does not exist."""
        try:
            text = self._ref_path(name, collection_id).read_text().strip()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        if not is_checksum(text):
            raise RepoError(f"ref {name}: file does not hold a checksum")
        return text

    def write_ref(self, name: str, commit: str | None, collection_id: str | None = None) -> None:
        """Point a ref at a commit (syncing objects first), or delete it when ``commit`` is None."""
        path = self._ref_path(name, collection_id)
        if commit is None:
            with suppress(FileNotFoundError):
                path.unlink()
            return
        if not self.has_object(commit, ObjectType.COMMIT):
            raise MissingObject(f"{commit}.commit: cannot point ref {name} at a commit that is not here")
        self.sync()
        self.atomic_write(path, [f"{commit}\n".encode()], durable=True)

    def _walk_refs(self, base: Path) -> Iterator[tuple[str, str]]:
        if not base.is_dir():
            return
        for root, _, files in os.walk(base):
            for name in files:
                path = Path(root) / name
                ref = path.relative_to(base).as_posix()
                with suppress(OSError, UnicodeDecodeError):
                    text = path.read_text().strip()
                    if is_checksum(text) and _REF_RE.fullmatch(ref):
                        yield ref, text

    def list_refs(self) -> dict[str, str]:
        """Local refs (``refs/heads``) mapped to their commits, sorted by name."""
        return dict(sorted(self._walk_refs(self.path / "refs" / "heads")))

    def list_mirror_refs(self) -> dict[tuple[str, str], str]:
        """Refs under ``refs/mirrors/<collection-id>/`` as (collection id, ref) → commit."""
        result: dict[tuple[str, str], str] = {}
        mirrors = self.path / "refs" / "mirrors"
        if mirrors.is_dir():
            for cid_dir in sorted(mirrors.iterdir()):
                for ref, commit in self._walk_refs(cid_dir):
                    result[(cid_dir.name, ref)] = commit
        return dict(sorted(result.items()))

    def list_collection_refs(self) -> dict[tuple[str | None, str], str]:
        """Every ref as (collection id, ref) → commit; local refs carry the repo's collection id."""
        result: dict[tuple[str | None, str], str] = {
            (self.collection_id, ref): commit for ref, commit in self.list_refs().items()
        }
        for key, commit in self.list_mirror_refs().items():
            result[key] = commit
        return result

    def list_remote_refs(self) -> dict[str, str]:
        """Refs under ``refs/remotes/<remote>/`` as ``remote:ref`` → commit."""
        result: dict[str, str] = {}
        remotes = self.path / "refs" / "remotes"
        if remotes.is_dir():
            for remote_dir in sorted(remotes.iterdir()):
                for ref, commit in self._walk_refs(remote_dir):
                    result[f"{remote_dir.name}:{ref}"] = commit
        return result

    def resolve_rev(self, rev: str) -> str:
        """Resolve ``REF``, ``REF^``…, ``remote:REF``, a full checksum or a unique prefix."""
        match = _SUFFIX_RE.match(rev)
        assert match is not None
        base, carets = match.group(1), len(match.group(2))
        commit = self._resolve_base(base)
        for _ in range(carets):
            parent = self.load_commit(commit).parent
            if parent is None:
                raise RepoError(f"{rev}: commit {commit} has no parent")
            commit = parent
        return commit

    def _resolve_base(self, base: str) -> str:
        if is_checksum(base):
            return base
        if ":" in base:
            remote_ref = self.list_remote_refs().get(base)
            if remote_ref:
                return remote_ref
            raise RepoError(f"ref {base} not found")
        if _REF_RE.fullmatch(base) and ".." not in base.split("/"):
            local = self.read_ref(base)
            if local:
                return local
            for (_, ref), commit in self.list_mirror_refs().items():
                if ref == base:
                    return commit
        if _PARTIAL_RE.fullmatch(base):
            matches = sorted(
                base[:2] + p.name.split(".")[0]
                for p in (self.objects_dir / base[:2]).glob(f"{base[2:]}*.commit")
            )
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise RepoError(f"{base}: ambiguous commit prefix ({len(matches)} commits match)")
        raise RepoError(f"{base}: no such ref or commit")

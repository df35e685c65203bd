"""Generate a deterministic, OS-like directory tree to commit in benchmarks.

The default shape is ~10,000 files and ~200 MB, close to a small OS image: many small text files
(configs, docs, scripts), a fair number of medium binaries, a few big files of several MB, data
that compresses well (text, code-like binaries) and data that does not (already-compressed
archives and images), symlinks, executables, empty files, empty directories and a few duplicates.

The ``small`` shape (:func:`generate_small_tree`) is the worst case for per-object overhead:
thousands of files, most under 1 KB (a median of ~300 bytes, none over 16 KB), compressible
text and random bytes mixed, in a few hundred directories.

The same ``seed`` gives the same names, modes and bytes, so the commit checksum is reproducible.

    python -m bench.treegen DIR [--shape os|small] [--files N] [--size BYTES] [--seed S]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_FILES = 10_000
DEFAULT_SIZE = 200 * 1000 * 1000
SHAPES = ("os", "small")
DEFAULT_SMALL_FILES = 5_000

# Top-level layout of a typical OS tree; directories are grown below these.
_ROOTS = (
    "usr/bin",
    "usr/sbin",
    "usr/lib",
    "usr/lib/x86_64-linux-gnu",
    "usr/lib/python3/dist-packages",
    "usr/share/doc",
    "usr/share/locale",
    "usr/share/man/man1",
    "usr/share/icons/hicolor",
    "usr/include",
    "usr/libexec",
    "etc",
    "etc/systemd/system",
    "var/lib",
    "opt",
)
_EXEC_ROOTS = ("usr/bin", "usr/sbin", "usr/libexec")
_WORDS_TEXT = (
    "the of and to in is for on that with as by this be are from or it an at which not you can all "
    "config service system file path user group default value enable disable option network device "
    "package library module function return error warning debug info version license copyright "
    "install update remove daemon socket timer target mount kernel driver firmware boot image "
    "static const void int char struct include define ifdef endif unsigned long size_t buffer"
)
_WORDS = _WORDS_TEXT.split()
_SYLLABLES_TEXT = "lib gtk glib dbus xml ssl core util net fs io py ost ree sys tem d pkg kit font icon"
_SYLLABLES = _SYLLABLES_TEXT.split()
_TEXT_EXT = (".conf", ".txt", ".py", ".h", ".sh", ".md", ".json", ".xml", ".service", "")
_BIN_EXT = (".so", ".bin", ".o", ".a", "")
_PACKED_EXT = (".gz", ".xz", ".png", ".jpg", ".zip")
_CORPUS_SIZE = 4 * 1024 * 1024


@dataclass
class TreeStats:
    """What was generated."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    executables: int = 0
    empty_files: int = 0
    empty_dirs: int = 0
    duplicates: int = 0
    total_bytes: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


class _Content:
    """Fast data sources: slices of pre-built corpora instead of per-byte generation."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.text = self._text_corpus()
        self.code = self._code_corpus()

    def _text_corpus(self) -> bytes:
        rng = self.rng
        lines = []
        size = 0
        while size < _CORPUS_SIZE:
            words = rng.choices(_WORDS, k=rng.randint(3, 14))
            indent = " " * (4 * rng.randint(0, 3))
            line = f"{indent}{' '.join(words)} = {rng.randint(0, 99999)}\n"
            lines.append(line)
            size += len(line)
        return "".join(lines).encode()

    def _code_corpus(self) -> bytes:
        # Machine-code-like: random runs interleaved with zero padding and repeated tables,
        # which deflate to roughly 40-50% like real shared objects.
        rng = self.rng
        parts = []
        size = 0
        while size < _CORPUS_SIZE:
            choice = rng.random()
            n = rng.randint(16, 512)
            if choice < 0.45:
                part = rng.randbytes(n)
            elif choice < 0.65:
                part = bytes(n)
            else:
                part = rng.randbytes(rng.randint(2, 8)) * (n // 4)
            parts.append(part)
            size += len(part)
        return b"".join(parts)

    def _slice(self, corpus: bytes, size: int) -> bytes:
        out = []
        while size > 0:
            n = min(size, len(corpus) // 2)
            start = self.rng.randrange(len(corpus) - n + 1)
            out.append(corpus[start : start + n])
            size -= n
        return b"".join(out)

    def make(self, kind: str, size: int) -> bytes:
        """``size`` bytes of the given kind: text, code or packed (incompressible)."""
        if kind == "text":
            return self._slice(self.text, size)
        if kind == "code":
            return self._slice(self.code, size)
        return self.rng.randbytes(size)


def _name(rng: random.Random) -> str:
    return "".join(rng.choices(_SYLLABLES, k=rng.randint(1, 3))) + str(rng.randint(0, 99) or "")


def _make_dirs(rng: random.Random, count: int, max_depth: int) -> list[str]:
    dirs = list(_ROOTS)
    seen = set(dirs)
    while len(dirs) < count:
        parent = rng.choice(dirs)
        depth = parent.count("/") + 1
        # Deeper parents are picked less often, so most directories sit 3-5 levels down.
        if depth >= max_depth or rng.random() > 0.7 ** (depth - 1):
            continue
        child = f"{parent}/{_name(rng)}"
        if child not in seen:
            seen.add(child)
            dirs.append(child)
    return dirs


def _sizes(rng: random.Random, files: int, total_bytes: int) -> list[tuple[str, int]]:
    """(category, size) per file: the small ones follow a log-normal, the rest share what is left."""
    n_big = max(1, files // 500)
    n_medium = max(1, files * 15 // 100)
    n_small = max(0, files - n_big - n_medium)
    small = [min(16384, int(rng.lognormvariate(7.2, 1.0))) for _ in range(n_small)]
    if sum(small) > total_bytes // 4:
        scale = total_bytes / 4 / max(1, sum(small))
        small = [int(s * scale) for s in small]
    rest = total_bytes - sum(small)
    medium_weights = [rng.lognormvariate(0, 1.0) for _ in range(n_medium)]
    big_weights = [rng.lognormvariate(0, 0.5) for _ in range(n_big)]
    medium_total, big_total = rest * 2 // 5, rest - rest * 2 // 5
    medium = [int(medium_total * w / sum(medium_weights)) for w in medium_weights]
    big = [int(big_total * w / sum(big_weights)) for w in big_weights]
    sized = [("small", s) for s in small] + [("medium", s) for s in medium] + [("big", s) for s in big]
    rng.shuffle(sized)
    return sized


def _kind(rng: random.Random, category: str) -> str:
    r = rng.random()
    if category == "small":
        return "text" if r < 0.8 else "code" if r < 0.95 else "packed"
    if category == "medium":
        return "text" if r < 0.3 else "code" if r < 0.8 else "packed"
    return "text" if r < 0.3 else "code" if r < 0.75 else "packed"


def _ext(rng: random.Random, kind: str) -> str:
    return rng.choice(_TEXT_EXT if kind == "text" else _BIN_EXT if kind == "code" else _PACKED_EXT)


def _begin(path: Path | str, seed: int) -> tuple[Path, random.Random, _Content, TreeStats]:
    """The tree's root (created; FileExistsError if it holds anything), the seeded random
    source and content maker, and empty stats: how every generator starts."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        raise FileExistsError(f"{root}: not empty")
    rng = random.Random(seed)
    return root, rng, _Content(rng), TreeStats()


def generate_tree(
    path: Path | str,
    files: int = DEFAULT_FILES,
    total_bytes: int = DEFAULT_SIZE,
    seed: int = 0,
    max_depth: int = 6,
) -> TreeStats:
    """Write the tree under ``path`` (created; must not exist or be empty) and return its stats.

    ``files`` counts every non-directory entry (regular files and ~3% symlinks); ``total_bytes``
    is the sum of the regular files' sizes, give or take rounding.
    """
    root, rng, content, stats = _begin(path, seed)
    n_symlinks = files * 3 // 100
    n_regular = files - n_symlinks
    dirs = _make_dirs(rng, max(len(_ROOTS), files // 30), max_depth)
    n_empty_dirs = max(1, len(dirs) // 100)
    empty_dirs = set(rng.sample(dirs[len(_ROOTS) :], n_empty_dirs)) if len(dirs) > len(_ROOTS) else set()
    leaf_dirs = [d for d in dirs if d not in empty_dirs]
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    # Directories get explicit modes so the commit does not depend on the caller's umask.
    for d in sorted(dirs, key=len, reverse=True):
        os.chmod(root / d, 0o755)
        parts = d.split("/")
        for i in range(1, len(parts)):
            os.chmod(root.joinpath(*parts[:i]), 0o755)
    os.chmod(root, 0o755)
    stats.dirs = len({p for d in dirs for p in _parents(d)})
    stats.empty_dirs = len(empty_dirs)

    written: list[tuple[str, bytes]] = []
    for category, size in _sizes(rng, n_regular, total_bytes):
        d = rng.choice(leaf_dirs)
        kind = _kind(rng, category)
        small = category == "small"
        if small and rng.random() < 0.005:
            size = 0
        if small and written and size and rng.random() < 0.01:
            # Identical content under another name (licenses, copies): one object in the repo.
            _, data = rng.choice(written)
            stats.duplicates += 1
            kind = "duplicate"
        else:
            data = content.make(kind, size)
        rel = _unique(root, f"{d}/{_name(rng)}{_ext(rng, kind)}")
        (root / rel).write_bytes(data)
        executable = d.startswith(_EXEC_ROOTS) or (kind == "code" and rng.random() < 0.2)
        os.chmod(root / rel, 0o755 if executable else 0o644)
        if len(written) < 2000 and 0 < len(data) < 65536:
            written.append((rel, data))
        stats.files += 1
        stats.executables += executable
        stats.empty_files += not data
        stats.total_bytes += len(data)
        stats.by_kind[kind] = stats.by_kind.get(kind, 0) + len(data)

    for _ in range(n_symlinks):
        d = rng.choice(leaf_dirs)
        r = rng.random()
        if r < 0.6 and written:
            target = os.path.relpath(rng.choice(written)[0], d)
        elif r < 0.9:
            target = f"/etc/alternatives/{_name(rng)}"
        else:
            target = f"../{_name(rng)}.so.{rng.randint(0, 9)}"  # dangling, as in real trees
        rel = _unique(root, f"{d}/{_name(rng)}.link")
        os.symlink(target, root / rel)
        stats.symlinks += 1
    return stats


def generate_small_tree(path: Path | str, files: int = DEFAULT_SMALL_FILES, seed: int = 0) -> TreeStats:
    """Write ``files`` small regular files under ``path`` (created, must be absent or empty).

    Sizes are log-normal around 300 bytes (about 85% under 1 KB, capped at 16 KB); 60% of the
    files are text, 40% random bytes, so both deflate paths (shrinks, does not) are exercised.
    """
    root, rng, content, stats = _begin(path, seed)
    dirs = _make_dirs(rng, max(len(_ROOTS), files // 20), max_depth=5)
    for d in sorted(dirs, key=len):
        (root / d).mkdir(parents=True, exist_ok=True)
        for parent in _parents(d):
            os.chmod(root / parent, 0o755)
    os.chmod(root, 0o755)
    stats.dirs = len({p for d in dirs for p in _parents(d)})
    for _ in range(files):
        size = min(16384, max(1, int(rng.lognormvariate(5.7, 0.9))))
        kind = "text" if rng.random() < 0.6 else "packed"
        data = content.make(kind, size)
        rel = _unique(root, f"{rng.choice(dirs)}/{_name(rng)}{_ext(rng, kind)}")
        (root / rel).write_bytes(data)
        os.chmod(root / rel, 0o644)
        stats.files += 1
        stats.total_bytes += size
        stats.by_kind[kind] = stats.by_kind.get(kind, 0) + size
    return stats


def generate_shape(
    path: Path | str, shape: str, files: int = DEFAULT_FILES, total_bytes: int = DEFAULT_SIZE, seed: int = 0
) -> TreeStats:
    """The tree of ``shape`` ("os": :func:`generate_tree`; "small": ``total_bytes`` is not used)."""
    if shape == "small":
        return generate_small_tree(path, files, seed)
    if shape != "os":
        raise ValueError(f"unknown tree shape {shape!r} (expected one of {', '.join(SHAPES)})")
    return generate_tree(path, files, total_bytes, seed)


def _parents(d: str) -> list[str]:
    parts = d.split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _unique(root: Path, rel: str) -> str:
    candidate, n = rel, 0
    while os.path.lexists(root / candidate):
        n += 1
        candidate = f"{rel}.{n}"
    return candidate


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: generate a tree and print its stats."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", type=Path, help="directory to create (must be absent or empty)")
    parser.add_argument("--shape", choices=SHAPES, default="os", help="os-like, or many small files")
    parser.add_argument("--files", type=int, help="non-directory entries (default by shape)")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="total bytes of file data (os shape)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    files = args.files or (DEFAULT_SMALL_FILES if args.shape == "small" else DEFAULT_FILES)
    stats = generate_shape(args.path, args.shape, files, args.size, args.seed)
    print(stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())

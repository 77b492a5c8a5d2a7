"""What the compiler reads: named sources, each a file or content held in memory.

A folder walk is one way to get them; a cluster's AuthPolicy objects (the operator) are another. The
front end only needs a name for diagnostics, a way to read the bytes, an order (which duplicate is
"first"), and, for files, a stamp that says whether the file may have changed since it was read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nauthera.compile.loading import walk_paths
from nauthera.errors import InputError

#: (modification time in ns, size, inode): equal stamps mean the file was not rewritten.
Stamp = tuple[int, int, int]


@dataclass(frozen=True)
class Source:
    """One named input. `content` when it is held in memory, else `path` is read when needed."""

    name: str
    path: Path | None = None
    content: bytes | None = None
    #: Sources are analysed in this order (for files: command-line root, then path order).
    order: tuple[Any, ...] = field(default=(), compare=False)
    stamp: Stamp | None = field(default=None, compare=False)

    def read(self) -> bytes:
        if self.content is not None:
            return self.content
        if self.path is None:
            raise InputError(f"{self.name}: neither content nor a path to read")
        try:
            return self.path.read_bytes()
        except OSError as error:
            raise InputError(f"{self.name}: cannot read: {error.strerror or error}") from error

    @property
    def size(self) -> int:
        if self.content is not None:
            return len(self.content)
        return self.stamp[1] if self.stamp else 0


def in_memory(name: str, content: bytes) -> Source:
    return Source(name, content=content, order=(name,))


def file_stamp(path: Path) -> Stamp | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


def file_source(path: Path, order: tuple[Any, ...]) -> Source | None:
    """The file as a source, stamped now; None when it is gone."""
    stamp = file_stamp(path)
    return None if stamp is None else Source(str(path), path=path, order=order, stamp=stamp)


def folder_sources(paths: Sequence[Path]) -> list[Source]:
    """Every YAML file under `paths`, stamped, in the order `nauthera compile` reads them."""
    return [s for order, path in walk_paths(paths) if (s := file_source(path, order)) is not None]

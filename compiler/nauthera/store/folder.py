"""The folder backend of the bundle store: revisions and channel pointers as files.

Layout of a store folder (`bundles/` by default):

    DIR/store.json                        {"format": "nauthera-bundle-store/1"}
    DIR/.lock                             writers hold an exclusive flock on it
    DIR/revisions/<revision>/bundle.tar.gz   the bundle, byte for byte as published (immutable)
    DIR/revisions/<revision>/meta.json       RevisionInfo as JSON (immutable)
    DIR/channels/<name>.json              {"channel", "revision", "history", "updated", "generation"}
    DIR/tmp/                              staging; leftovers of a crashed writer are removed by gc

Crash safety: a revision is written into `tmp/`, fsynced, then renamed into `revisions/` in one step, so
a revision folder is either complete or absent. A channel moves by writing a new pointer file beside the
old one, fsyncing it and `os.replace`-ing it over the old one (then fsyncing the folder), so at every
instant each channel names a complete revision. Writers serialise on `flock(DIR/.lock)`, which the kernel
releases when a writer dies. Readers take no lock: they read one pointer file and immutable files.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import Any

from nauthera.store.base import (
    CHANNEL_NAME,
    BundleStore,
    RevisionInfo,
    StoreError,
    canonical_json,
    check_channel_name,
    next_pointer,
)
from nauthera.targets.opa.bundle import check_revision_id, is_revision_id

STORE_FORMAT = "nauthera-bundle-store/1"
BUNDLE_FILE = "bundle.tar.gz"
META_FILE = "meta.json"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, content: bytes) -> None:
    with path.open("xb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())


class FolderStore(BundleStore):
    """A folder of immutable bundle revisions and channels pointing at them. Safe across processes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.location = str(self.root)
        #: Sequence number of each revision this object has seen, so a publish reads only the
        #: metadata of revisions that appeared since (each holds a digest per policy).
        self._sequences: dict[str, int] = {}

    # --- paths -----------------------------------------------------------------------------------------

    @property
    def _revisions_dir(self) -> Path:
        return self.root / "revisions"

    @property
    def _channels_dir(self) -> Path:
        return self.root / "channels"

    @property
    def _tmp_dir(self) -> Path:
        return self.root / "tmp"

    def pointer_file(self, channel: str) -> Path:
        """The file that is replaced on every move of `channel` (it may not exist yet)."""
        return self._channels_dir / f"{check_channel_name(channel)}.json"

    def _revision_dir(self, revision: str) -> Path:
        return self._revisions_dir / check_revision_id(revision)

    # --- reading (no lock) -----------------------------------------------------------------------------

    def bundle_path(self, revision: str) -> Path:
        path = self._revision_dir(revision) / BUNDLE_FILE
        if not path.is_file():
            raise StoreError(f"unknown revision {revision!r} in store {self.root}")
        return path

    def bundle_reference(self, revision: str) -> str:
        return str(self.bundle_path(revision))

    def bundle_bytes(self, revision: str) -> bytes:
        return self.bundle_path(revision).read_bytes()

    def read_info(self, revision: str) -> RevisionInfo | None:
        path = self._revision_dir(revision) / META_FILE
        try:
            return RevisionInfo.from_json(json.loads(path.read_bytes()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise StoreError(f"{path}: unreadable revision metadata: {error}") from error

    def revision_names(self) -> list[str]:
        return sorted(name for name in self._listing(self._revisions_dir) if is_revision_id(name))

    def _listing(self, folder: Path) -> list[str]:
        """Names in one of the store's folders; none when the store has not been written yet."""
        try:
            return [p.name for p in folder.iterdir()]
        except FileNotFoundError:
            return []
        except OSError as error:
            raise StoreError(f"{folder}: cannot read the store: {error.strerror or error}") from error

    def channel_pointer(self, channel: str) -> dict[str, Any] | None:
        path = self.pointer_file(channel)
        try:
            doc = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise StoreError(f"{path}: unreadable channel pointer: {error}") from error
        if not isinstance(doc, dict) or not isinstance(doc.get("revision"), str):
            raise StoreError(f"{path}: not a channel pointer")
        return doc

    def channel_names(self) -> list[str]:
        return sorted(
            name[: -len(".json")]
            for name in self._listing(self._channels_dir)
            if name.endswith(".json") and CHANNEL_NAME.match(name[: -len(".json")])
        )

    def channel_stamps(self) -> dict[str, Hashable]:
        """The pointer file's identity: it is replaced (new inode) on every move."""
        stamps: dict[str, Hashable] = {}
        for channel in self.channel_names():
            try:
                stat = self.pointer_file(channel).stat()
            except OSError:
                continue
            stamps[channel] = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        return stamps

    # --- writing (under the lock) ----------------------------------------------------------------------

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        try:
            for folder in (self.root, self._revisions_dir, self._channels_dir, self._tmp_dir):
                folder.mkdir(parents=True, exist_ok=True)
            marker = self.root / "store.json"
            if not marker.exists():
                self._replace_file(marker, canonical_json({"format": STORE_FORMAT}) + b"\n")
            handle = (self.root / ".lock").open("a+b")
        except OSError as error:
            raise StoreError(f"{self.root}: cannot open the store: {error.strerror or error}") from error
        with handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _replace_file(self, target: Path, content: bytes) -> None:
        """Write `content` beside `target`, fsync, rename over it, fsync the folder."""
        staged = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            _write_durably(staged, content)
            staged.replace(target)
        except BaseException:
            with contextlib.suppress(OSError):
                staged.unlink()
            raise
        _fsync_dir(target.parent)

    def store_revision(self, content: bytes, info: RevisionInfo) -> RevisionInfo:
        staging = self._tmp_dir / f"rev-{info.revision}.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            staging.mkdir()
            _write_durably(staging / BUNDLE_FILE, content)
            _write_durably(staging / META_FILE, json.dumps(info.as_json(), indent=2).encode() + b"\n")
            _fsync_dir(staging)
            staging.rename(self._revision_dir(info.revision))
            _fsync_dir(self._revisions_dir)
        except OSError as error:
            shutil.rmtree(staging, ignore_errors=True)
            raise StoreError(f"{self.root}: cannot write revision {info.revision}: {error}") from error
        self._sequences[info.revision] = info.sequence
        return info

    def newest(self, channel: str | None) -> tuple[int, str | None]:
        """Sequences count up; reads the metadata only of revisions that appeared since the last call."""
        names = set(self.revision_names())
        for gone in self._sequences.keys() - names:
            del self._sequences[gone]
        for name in sorted(names - self._sequences.keys()):
            info = self.read_info(name)
            if info is not None:  # else removed by a concurrent gc
                self._sequences[name] = info.sequence
        newest = max(self._sequences.items(), key=lambda item: item[1], default=None)
        parent = self.channel_revision(channel) if channel is not None else None
        if newest is None:
            return 1, parent
        return newest[1] + 1, parent or newest[0]

    def move_channel(self, channel: str, revision: str | None) -> str:
        doc = next_pointer(self.channel_pointer(channel), channel, revision)
        if doc is None:
            assert revision is not None
            return revision
        try:
            self._replace_file(self.pointer_file(channel), json.dumps(doc, indent=2).encode() + b"\n")
        except OSError as error:
            raise StoreError(f"cannot move channel {channel!r}: {error}") from error
        return str(doc["revision"])

    def delete_revision(self, revision: str) -> None:
        # Rename first, so the revision disappears in one step and never half-deleted.
        graveyard = self._tmp_dir / f"gc-{revision}.{secrets.token_hex(4)}"
        self._revision_dir(revision).rename(graveyard)
        shutil.rmtree(graveyard, ignore_errors=True)
        _fsync_dir(self._revisions_dir)

    def gc_leftovers(self) -> None:
        for leftover in self._tmp_dir.iterdir():
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        for stale in self._channels_dir.glob(".*.tmp"):
            stale.unlink(missing_ok=True)

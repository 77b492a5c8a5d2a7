"""The versioned bundle store: immutable revisions and channels that point at them.

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
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nauthera.errors import NautheraError
from nauthera.targets.opa.bundle import (
    check_revision_id,
    is_revision_id,
    parse_nauthera_bundle,
    policy_digest,
    read_bundle_file,
)
from nauthera.targets.opa.signing import SIGNATURES_FILE, token_header

STORE_FORMAT = "nauthera-bundle-store/1"
BUNDLE_FILE = "bundle.tar.gz"
META_FILE = "meta.json"
_CHANNEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
#: How many earlier revisions a channel remembers for `rollback`.
HISTORY_LIMIT = 100
#: A revision prefix must be at least this long to name a revision.
_MIN_PREFIX = 4


class StoreError(NautheraError):
    """The store cannot do what was asked (unknown revision, conflicting publish, I/O failure)."""


@dataclass(frozen=True)
class RevisionInfo:
    """What the store records about one published bundle."""

    revision: str
    sequence: int
    parent: str | None
    created: str
    digest: str
    size: int
    git_commit: str | None = None
    git_dirty: bool | None = None
    author: str | None = None
    message: str | None = None
    signer_key_id: str | None = None
    compiler: str | None = None
    policies: Mapping[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "sequence": self.sequence,
            "parent": self.parent,
            "created": self.created,
            "digest": self.digest,
            "size": self.size,
            "git": {"commit": self.git_commit, "dirty": self.git_dirty} if self.git_commit else None,
            "author": self.author,
            "message": self.message,
            "signer_key_id": self.signer_key_id,
            "compiler": self.compiler,
            "policies": dict(sorted(self.policies.items())),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> RevisionInfo:
        git = doc.get("git") or {}
        return cls(
            revision=str(doc["revision"]),
            sequence=int(doc["sequence"]),
            parent=doc.get("parent"),
            created=str(doc["created"]),
            digest=str(doc["digest"]),
            size=int(doc["size"]),
            git_commit=git.get("commit"),
            git_dirty=git.get("dirty"),
            author=doc.get("author"),
            message=doc.get("message"),
            signer_key_id=doc.get("signer_key_id"),
            compiler=doc.get("compiler"),
            policies=dict(doc.get("policies") or {}),
        )


@dataclass(frozen=True)
class BundleFacts:
    """What publishing reads out of a bundle before it takes the lock."""

    revision: str
    digest: str
    size: int
    metadata: Mapping[str, Any]
    policies: Mapping[str, str]
    signer_key_id: str | None


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def policy_digests(data: Mapping[str, Any]) -> dict[str, str]:
    """sha256 of each policy's canonical JSON in the bundle data's `policies`."""
    policies = data.get("policies") if isinstance(data, Mapping) else None
    if not isinstance(policies, Mapping):
        return {}
    return {str(pid): policy_digest(params).hex() for pid, params in policies.items()}


def bundle_facts(content: bytes, label: str) -> BundleFacts:
    bundle = parse_nauthera_bundle(content, label)
    if bundle.revision is None:
        raise StoreError(f"{label}: the bundle's .manifest has no revision")
    check_revision_id(bundle.revision)
    metadata = bundle.manifest.get("metadata")
    signatures = bundle.files.get(SIGNATURES_FILE)
    kid = token_header(signatures).get("kid") if signatures is not None else None
    return BundleFacts(
        revision=bundle.revision,
        digest=hashlib.sha256(content).hexdigest(),
        size=len(content),
        metadata=metadata if isinstance(metadata, dict) else {},
        policies=policy_digests(bundle.data),
        signer_key_id=kid if isinstance(kid, str) else None,
    )


def shadows(channel: str, revision: str) -> bool:
    """Whether `channel` would be read as `revision` (or the other way round) where both are accepted:
    the same name, or a prefix long enough to name a revision."""
    return channel == revision or (len(channel) >= _MIN_PREFIX and revision.startswith(channel))


def check_channel_name(channel: str) -> str:
    if not _CHANNEL.match(channel):
        raise StoreError(
            f"channel name {channel!r} is invalid: use letters, digits, '.', '_', '-' "
            "(at most 64, starting with a letter or digit)"
        )
    return channel


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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


def git_details(commit: str, folder: Path) -> tuple[str | None, str | None]:
    """Author and subject of `commit`, when `folder` sits in a checkout that has it."""
    try:
        completed = subprocess.run(
            ["git", "-C", str(folder), "log", "-1", "--format=%an <%ae>%x00%s", commit, "--"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None, None
    if completed.returncode != 0 or "\0" not in completed.stdout:
        return None, None
    author, subject = completed.stdout.rstrip("\n").split("\0", 1)
    return author or None, subject or None


class BundleStore:
    """A folder of immutable bundle revisions and channels pointing at them. Safe across processes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
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

    def info(self, revision: str) -> RevisionInfo:
        path = self._revision_dir(revision) / META_FILE
        try:
            return RevisionInfo.from_json(json.loads(path.read_bytes()))
        except FileNotFoundError:
            raise StoreError(f"unknown revision {revision!r} in store {self.root}") from None
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise StoreError(f"{path}: unreadable revision metadata: {error}") from error

    def verified_bundle(self, revision: str) -> bytes:
        """The revision's bundle, checked against the sha256 and size its metadata records: what a server
        may hand out. StoreError when the revision is missing, its metadata unreadable or it changed."""
        info = self.info(revision)
        try:
            content = self.bundle_path(revision).read_bytes()
        except OSError as error:
            raise StoreError(
                f"revision {revision}: cannot read its bundle: {error.strerror or error}"
            ) from error
        if info.revision != revision:
            raise StoreError(f"revision {revision}: its metadata names {info.revision}")
        if len(content) != info.size or hashlib.sha256(content).hexdigest() != info.digest:
            raise StoreError(f"revision {revision}: bundle does not match its recorded sha256")
        return content

    def revisions(self) -> list[RevisionInfo]:
        """Every stored revision, newest (highest sequence) first."""
        found = []
        for name in self._revision_names():
            with contextlib.suppress(StoreError):  # removed by a concurrent gc
                found.append(self.info(name))
        return sorted(found, key=lambda info: info.sequence, reverse=True)

    def _revision_names(self) -> list[str]:
        return sorted(name for name in self._listing(self._revisions_dir) if is_revision_id(name))

    def _listing(self, folder: Path) -> list[str]:
        """Names in one of the store's folders; none when the store has not been written yet."""
        try:
            return [p.name for p in folder.iterdir()]
        except FileNotFoundError:
            return []
        except OSError as error:
            raise StoreError(f"{folder}: cannot read the store: {error.strerror or error}") from error

    def _pointer(self, channel: str) -> dict[str, Any] | None:
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

    def channel_revision(self, channel: str) -> str | None:
        doc = self._pointer(channel)
        return None if doc is None else str(doc["revision"])

    def channel_history(self, channel: str) -> list[str]:
        """Earlier revisions of `channel`, newest first: where `rollback` goes."""
        doc = self._pointer(channel)
        return [] if doc is None else [str(r) for r in doc.get("history") or []]

    def channel_pointer(self, channel: str) -> dict[str, Any] | None:
        """The pointer document: revision, history, updated, generation."""
        return self._pointer(channel)

    def channel_names(self) -> list[str]:
        """The channels' names, without reading their pointers (one of which may be unreadable)."""
        return sorted(
            name[: -len(".json")]
            for name in self._listing(self._channels_dir)
            if name.endswith(".json") and _CHANNEL.match(name[: -len(".json")])
        )

    def channels(self) -> dict[str, str]:
        result = {}
        for name in self.channel_names():
            revision = self.channel_revision(name)
            if revision is not None:
                result[name] = revision
        return result

    def resolve(self, ref: str) -> str:
        """A revision id from a revision, a channel name, or a unique revision prefix (4+ characters)."""
        if is_revision_id(ref) and (self._revisions_dir / ref / META_FILE).is_file():
            return ref
        if _CHANNEL.match(ref):
            revision = self.channel_revision(ref)
            if revision is not None:
                return revision
        if len(ref) >= _MIN_PREFIX:
            matches = [name for name in self._revision_names() if name.startswith(ref)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise StoreError(f"{ref!r} is ambiguous: {', '.join(matches[:5])}")
        short = (
            f" (a revision prefix needs at least {_MIN_PREFIX} characters)" if len(ref) < _MIN_PREFIX else ""
        )
        raise StoreError(f"{ref!r} is neither a revision nor a channel in store {self.root}{short}")

    # --- writing (under the lock) ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            for folder in (self.root, self._revisions_dir, self._channels_dir, self._tmp_dir):
                folder.mkdir(parents=True, exist_ok=True)
            marker = self.root / "store.json"
            if not marker.exists():
                self._replace_file(marker, _canonical({"format": STORE_FORMAT}) + b"\n")
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

    def publish(
        self,
        bundle: Path,
        channel: str | None = "stable",
        *,
        message: str | None = None,
        author: str | None = None,
        facts: BundleFacts | None = None,
    ) -> RevisionInfo:
        """Record `bundle` as an immutable revision (its `.manifest` revision) and point `channel` at it.

        Publishing the same bytes again is a no-op (apart from moving `channel`); different bytes under an
        existing revision id are refused. `facts`, when the caller built the bundle and knows them, saves
        reading the bundle back (they must be what `bundle_facts` would find: a test holds the compiler
        to that).
        """
        if channel is not None:
            check_channel_name(channel)
        content = read_bundle_file(Path(bundle))
        facts = facts or bundle_facts(content, str(bundle))
        git = facts.metadata.get("nauthera", {}).get("git") if isinstance(facts.metadata, dict) else None
        commit = git.get("commit") if isinstance(git, dict) else None
        if commit and (author is None or message is None):
            git_author, git_subject = git_details(str(commit), Path(bundle).resolve().parent)
            if git_author is None:
                git_author, git_subject = git_details(str(commit), Path.cwd())
            author = author if author is not None else git_author
            message = message if message is not None else git_subject
        with self._locked():
            existing = self._existing(facts)
            self._check_names(channel, facts.revision if existing is None else None)
            if existing is None:
                existing = self._write_revision(content, facts, channel, commit, git, author, message)
            if channel is not None:
                self._move(channel, existing.revision)
            return existing

    def _check_names(self, channel: str | None, new_revision: str | None) -> None:
        """Channels and revisions never hide each other: `show NAME` takes a revision before a channel
        and a channel before a revision prefix, so a channel may be neither a revision nor a prefix of
        one, and a new revision may not be named like a channel."""
        revisions: Iterable[str] = self._revision_names() + ([new_revision] if new_revision else [])
        if channel is not None:
            hidden = next((r for r in revisions if shadows(channel, r)), None)
            if hidden is not None:
                raise StoreError(
                    f"channel name {channel!r} would be read as revision {hidden}; "
                    "choose another channel name"
                )
        if new_revision is not None and new_revision in self.channels():
            raise StoreError(
                f"revision {new_revision!r} would hide the channel {new_revision!r}; compile with another "
                "--revision"
            )

    def _existing(self, facts: BundleFacts) -> RevisionInfo | None:
        if not (self._revision_dir(facts.revision) / META_FILE).is_file():
            return None
        info = self.info(facts.revision)
        if info.digest != facts.digest:
            raise StoreError(
                f"revision {facts.revision} is already published with different content "
                f"(sha256 {info.digest[:12]}…, this bundle {facts.digest[:12]}…); a revision is immutable: "
                "compile with another --revision (signed and unsigned builds, or ES/PS signatures, "
                "differ in bytes)"
            )
        return info

    def _write_revision(
        self,
        content: bytes,
        facts: BundleFacts,
        channel: str | None,
        commit: Any,
        git: Any,
        author: str | None,
        message: str | None,
    ) -> RevisionInfo:
        newest = self._newest()
        parent = self.channel_revision(channel) if channel is not None else None
        if parent is None and newest:
            parent = newest[0]
        nauthera_meta = facts.metadata.get("nauthera") if isinstance(facts.metadata, dict) else None
        compiler = nauthera_meta.get("compiler") if isinstance(nauthera_meta, dict) else None
        info = RevisionInfo(
            revision=facts.revision,
            sequence=(newest[1] + 1) if newest else 1,
            parent=parent,
            created=_now(),
            digest=facts.digest,
            size=facts.size,
            git_commit=str(commit) if commit else None,
            git_dirty=bool(git.get("dirty")) if isinstance(git, dict) and commit else None,
            author=author,
            message=message,
            signer_key_id=facts.signer_key_id,
            compiler=str(compiler) if compiler else None,
            policies=facts.policies,
        )
        staging = self._tmp_dir / f"rev-{facts.revision}.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            staging.mkdir()
            _write_durably(staging / BUNDLE_FILE, content)
            _write_durably(staging / META_FILE, json.dumps(info.as_json(), indent=2).encode() + b"\n")
            _fsync_dir(staging)
            staging.rename(self._revision_dir(facts.revision))
            _fsync_dir(self._revisions_dir)
        except OSError as error:
            shutil.rmtree(staging, ignore_errors=True)
            raise StoreError(f"{self.root}: cannot write revision {facts.revision}: {error}") from error
        self._sequences[info.revision] = info.sequence
        return info

    def _newest(self) -> tuple[str, int] | None:
        """The revision with the highest sequence, and that sequence (reading only new metadata)."""
        names = set(self._revision_names())
        for gone in self._sequences.keys() - names:
            del self._sequences[gone]
        for name in sorted(names - self._sequences.keys()):
            with contextlib.suppress(StoreError):  # removed by a concurrent gc
                self._sequences[name] = self.info(name).sequence
        if not self._sequences:
            return None
        return max(self._sequences.items(), key=lambda item: item[1])

    def _move(self, channel: str, revision: str, *, rollback: bool = False) -> str:
        """Point `channel` at `revision` (or, with rollback, at its previous one); return the new revision."""
        current = self._pointer(channel)
        history = [str(r) for r in (current or {}).get("history") or []]
        previous = str(current["revision"]) if current else None
        if rollback:
            if not history:
                raise StoreError(f"channel {channel!r} has no earlier revision to roll back to")
            revision, history = history[0], history[1:]
            if not (self._revision_dir(revision) / BUNDLE_FILE).is_file():
                raise StoreError(f"channel {channel!r}: previous revision {revision} is no longer stored")
        elif revision == previous:
            return revision
        elif previous is not None:
            history = [previous, *history][:HISTORY_LIMIT]
        doc = {
            "channel": channel,
            "revision": revision,
            "history": history,
            "updated": _now(),
            "generation": int((current or {}).get("generation", 0)) + 1,
        }
        try:
            self._replace_file(self.pointer_file(channel), json.dumps(doc, indent=2).encode() + b"\n")
        except OSError as error:
            raise StoreError(f"cannot move channel {channel!r}: {error}") from error
        return revision

    def promote(self, revision: str, channel: str) -> None:
        """Point `channel` at an already stored `revision`."""
        check_channel_name(channel)
        with self._locked():
            self.bundle_path(revision)
            self._check_names(channel, None)
            self._move(channel, revision)

    def rollback(self, channel: str) -> str:
        """Move `channel` back to the revision it pointed at before its last move; return that revision."""
        check_channel_name(channel)
        with self._locked():
            if self._pointer(channel) is None:
                raise StoreError(f"unknown channel {channel!r} in store {self.root}")
            return self._move(channel, "", rollback=True)

    def protected(self) -> set[str]:
        """Revisions gc never deletes: what each channel points at, and where its rollback would go."""
        keep = set()
        for name, revision in self.channels().items():
            keep.add(revision)
            keep.update(self.channel_history(name)[:1])
        return keep

    def gc(self, keep: int, *, dry_run: bool = False) -> list[str]:
        """Delete all but the newest `keep` revisions, never one a channel points at (or rolls back to).

        Also removes what crashed writers left in `tmp/`. Returns the deleted revisions, newest first.
        """
        if keep < 0:
            raise StoreError("gc --keep must be 0 or more")
        if dry_run:  # only reads, like list and show: works on a store this user cannot write
            return self._doomed(keep)
        with self._locked():
            doomed = self._doomed(keep)
            for revision in doomed:
                # Rename first, so the revision disappears in one step and never half-deleted.
                graveyard = self._tmp_dir / f"gc-{revision}.{secrets.token_hex(4)}"
                self._revision_dir(revision).rename(graveyard)
                shutil.rmtree(graveyard, ignore_errors=True)
            _fsync_dir(self._revisions_dir)
            for leftover in self._tmp_dir.iterdir():
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
            for stale in self._channels_dir.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
            return doomed

    def _doomed(self, keep: int) -> list[str]:
        protected = self.protected()
        return [
            info.revision
            for index, info in enumerate(self.revisions())
            if index >= keep and info.revision not in protected
        ]

    def fsck(self) -> list[str]:
        """Integrity problems: channels naming missing revisions, bundles not matching their digest."""
        problems = []
        for name in self._revision_names():
            try:
                self.verified_bundle(name)
            except StoreError as error:
                message = str(error)
                problems.append(
                    message if message.startswith(f"revision {name}") else f"revision {name}: {message}"
                )
        stored = set(self._revision_names())
        try:
            channels = self.channels()
        except StoreError as error:
            return [*problems, str(error)]
        for channel, revision in channels.items():
            if revision not in stored:
                problems.append(f"channel {channel}: points at missing revision {revision}")
        return problems

"""Package stage: a reproducible OPA bundle (sorted entries, fixed times and owners, no gzip timestamp)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import subprocess
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nauthera.errors import InputError, NautheraError, NotABundleError

ROOTS = ("nauthera",)
MANIFEST = ".manifest"
DATA_FILE = "nauthera/data.json"
#: Revisions name folders in a bundle store and travel in ETags: no separators, no dot-files, bounded.
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


class RevisionError(NautheraError):
    """A revision id that a bundle store could not keep."""


def is_revision_id(text: str) -> bool:
    return bool(_REVISION.match(text))


def check_revision_id(revision: str) -> str:
    """`revision` unchanged when it is a valid revision id; the one rule for compile and the store."""
    if not is_revision_id(revision):
        raise RevisionError(
            f"revision {revision!r} cannot be stored: use letters, digits, '.', '_', '+', '-' "
            "(at most 128, starting with a letter or digit)"
        )
    return revision


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def content_revision(files: Mapping[str, bytes], metadata: Mapping[str, Any]) -> str:
    """Same files and metadata, same revision: a digest over every entry in name order."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    digest.update(_canonical(metadata))
    return digest.hexdigest()[:24]


def git_source(paths: list[Path]) -> dict[str, Any] | None:
    """The commit the inputs come from, when they sit in a Git checkout."""
    folder = paths[0] if paths[0].is_dir() else paths[0].parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def manifest(files: Mapping[str, bytes], metadata: Mapping[str, Any], revision: str | None) -> dict[str, Any]:
    return {
        "revision": check_revision_id(revision)
        if revision is not None
        else content_revision(files, metadata),
        "roots": list(ROOTS),
        "rego_version": 1,
        "metadata": dict(metadata),
    }


def write_tarball(files: Mapping[str, bytes], target: Path) -> None:
    """Write entries in name order with fixed metadata so equal inputs give equal bytes."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(files[name]))
    with target.open("wb") as handle, gzip.GzipFile(filename="", mode="wb", fileobj=handle, mtime=0) as gz:
        gz.write(raw.getvalue())


def build_bundle(
    files: Mapping[str, bytes], metadata: Mapping[str, Any], revision: str | None, target: Path
) -> dict[str, Any]:
    """Write the bundle with its `.manifest`; return the manifest."""
    entries = dict(files)
    bundle_manifest = manifest(files, metadata, revision)
    entries[MANIFEST] = _canonical(bundle_manifest)
    write_tarball(entries, target)
    return bundle_manifest


def bundle_entries(content: bytes, label: str) -> dict[str, bytes]:
    """All regular files of a `.tar.gz` bundle, by name without a leading slash."""
    try:
        with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as tar:
            files = {}
            for member in tar.getmembers():
                handle = tar.extractfile(member) if member.isfile() else None
                if handle is not None:
                    files[member.name.lstrip("/")] = handle.read()
            return files
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise NotABundleError(f"{label}: not a Nauthera bundle (not a readable .tar.gz: {error})") from error


def read_bundle_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such bundle") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read the bundle: {error.strerror or error}") from error


def read_bundle(path: Path) -> dict[str, bytes]:
    """All regular files of the bundle at `path` (any bundle, ours or not)."""
    return bundle_entries(read_bundle_file(path), str(path))


@dataclass(frozen=True)
class NautheraBundle:
    """A bundle checked to be one the compiler wrote: its bytes, files, manifest and policy data."""

    content: bytes
    files: Mapping[str, bytes]
    manifest: Mapping[str, Any]
    data: Mapping[str, Any]

    @property
    def revision(self) -> str | None:
        revision = self.manifest.get("revision")
        return revision if isinstance(revision, str) and revision else None


def _json_object(files: Mapping[str, bytes], name: str, label: str) -> dict[str, Any]:
    if name not in files:
        raise NotABundleError(f"{label}: not a Nauthera bundle (no {name})")
    try:
        value = json.loads(files[name])
    except ValueError as error:
        raise NotABundleError(f"{label}: not a Nauthera bundle ({name} is not JSON: {error})") from error
    if not isinstance(value, dict):
        raise NotABundleError(f"{label}: not a Nauthera bundle ({name} is not a JSON object)")
    return value


def parse_nauthera_bundle(content: bytes, label: str) -> NautheraBundle:
    """The one check that bytes are a Nauthera bundle: a readable .tar.gz whose `.manifest` claims the
    `nauthera` root and which carries the policy data in `nauthera/data.json` (or, once `opa build` has
    rebuilt it, under `nauthera` in the top `data.json`). Anything else is a NotABundleError saying what
    is missing, so no command evaluates, compares, verifies or publishes a stranger's file."""
    files = bundle_entries(content, label)
    bundle_manifest = _json_object(files, MANIFEST, label)
    roots = bundle_manifest.get("roots")
    if not isinstance(roots, list) or not set(ROOTS) <= set(roots):
        raise NotABundleError(
            f"{label}: not a Nauthera bundle (its .manifest roots do not include {', '.join(ROOTS)})"
        )
    if DATA_FILE not in files and "data.json" in files:
        data = _json_object(files, "data.json", label).get("nauthera")
        if isinstance(data, dict):
            return NautheraBundle(content, files, bundle_manifest, data)
    return NautheraBundle(content, files, bundle_manifest, _json_object(files, DATA_FILE, label))


def open_nauthera_bundle(path: Path) -> NautheraBundle:
    """Read `path` and check that it is a Nauthera bundle (`parse_nauthera_bundle`)."""
    return parse_nauthera_bundle(read_bundle_file(path), str(path))

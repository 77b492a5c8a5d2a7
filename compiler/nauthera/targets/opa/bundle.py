"""Package stage: a reproducible OPA bundle (sorted entries, fixed times and owners, no gzip timestamp)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOTS = ("nauthera",)
MANIFEST = ".manifest"


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
        "revision": revision or content_revision(files, metadata),
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


def read_bundle(path: Path) -> dict[str, bytes]:
    """All regular files of a bundle, by name without a leading slash."""
    with tarfile.open(path, mode="r:gz") as tar:
        return {
            m.name.lstrip("/"): tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }

"""Bundles given on the command line are ours or refused, and revisions are valid from the start
(issue 17, items 4 and 12)."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from nauthera.targets.opa.bundle import DATA_FILE, MANIFEST, read_bundle, write_tarball

from ..conftest import EXAMPLES
from ..harness.cli import nauthera

CLIENTS = EXAMPLES / "clients"


def _tar_of_yaml(bundle: Path, target: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        tar.add(CLIENTS, arcname="clients")
    target.write_bytes(raw.getvalue())


def _garbage(bundle: Path, target: Path) -> None:
    target.write_bytes(b"\x1f\x8b\x08 definitely not gzip" * 10)


def _without_data(bundle: Path, target: Path) -> None:
    files = read_bundle(bundle)
    del files[DATA_FILE]
    write_tarball(files, target)


def _foreign_roots(bundle: Path, target: Path) -> None:
    files = read_bundle(bundle)
    manifest = json.loads(files[MANIFEST])
    manifest["roots"] = ["somebody/else"]
    files[MANIFEST] = json.dumps(manifest).encode()
    write_tarball(files, target)


def _without_manifest(bundle: Path, target: Path) -> None:
    files = read_bundle(bundle)
    del files[MANIFEST]
    write_tarball(files, target)


#: Each way a .tar.gz can fail to be a Nauthera bundle, and what the message says is missing.
NOT_OURS: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "tar-of-yaml": (_tar_of_yaml, "no .manifest"),
    "garbage": (_garbage, "not a readable .tar.gz"),
    "no-data-json": (_without_data, f"no {DATA_FILE}"),
    "foreign-roots": (_foreign_roots, "its .manifest roots do not include nauthera"),
    "no-manifest": (_without_manifest, "no .manifest"),
}


#: Every command that reads a bundle file, each given one kind of stranger (every kind appears once).
COMMANDS: dict[str, tuple[str, list[str | Path]]] = {
    "check": ("tar-of-yaml", ["check", "--bundle", "b.tar.gz", CLIENTS]),
    "impact --from": ("garbage", ["impact", "--from", "b.tar.gz", "--to", "good.tar.gz", CLIENTS]),
    "impact --to": ("no-data-json", ["impact", "--from", "good.tar.gz", "--to", "b.tar.gz", CLIENTS]),
    "bundle diff": ("foreign-roots", ["bundle", "diff", "b.tar.gz", "good.tar.gz"]),
    "bundle verify": ("no-manifest", ["bundle", "verify", "b.tar.gz", "--verification-key", "key"]),
    "bundle publish": ("no-data-json", ["bundle", "publish", "b.tar.gz", "--store", "store"]),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_bundle_that_is_not_ours_is_refused(tmp_path: Path, example_bundle: Path, command: str) -> None:
    kind, args = COMMANDS[command]
    make, missing = NOT_OURS[kind]
    make(example_bundle, tmp_path / "b.tar.gz")
    shutil.copy(example_bundle, tmp_path / "good.tar.gz")
    (tmp_path / "key").write_text("a-shared-secret-that-is-long-enough-for-hs256")
    completed = nauthera(*args, cwd=tmp_path)
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert completed.stdout == ""
    assert completed.stderr.startswith(f"nauthera: error: b.tar.gz: not a Nauthera bundle ({missing}"), (
        completed.stderr
    )
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("revision", ["../../escape", "a/b", " sp ace", "x" * 129])
def test_compile_refuses_a_revision_the_store_would_refuse(tmp_path: Path, revision: str) -> None:
    completed = nauthera("compile", EXAMPLES / "policies", "--out", "o", "--revision", revision, cwd=tmp_path)
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert "use letters, digits, '.', '_', '+', '-'" in completed.stderr
    assert completed.stdout == ""
    assert not (tmp_path / "o").exists()


def test_compile_accepts_every_revision_the_store_accepts(tmp_path: Path) -> None:
    revision = "v1.2.3+build_7-rc.1"
    compiled = nauthera("compile", EXAMPLES / "policies", "--out", "o", "--revision", revision, cwd=tmp_path)
    assert compiled.returncode == 0, compiled.stderr
    published = nauthera("bundle", "publish", "o/bundle.tar.gz", "--store", "s", cwd=tmp_path)
    assert published.returncode == 0, published.stderr
    assert f"published revision {revision}" in published.stdout

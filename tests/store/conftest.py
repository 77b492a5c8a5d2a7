"""Shared pieces of the store, signing, diff and impact tests: compiled bundles, keys, the CLI group."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from nauthera.cli import main
from nauthera.targets.opa.bundle import MANIFEST, read_bundle, write_tarball

from ..conftest import EXAMPLES

Invoke = Callable[..., Result]


def with_revision(
    source: Path, revision: str, target: Path, extra: Mapping[str, bytes] | None = None
) -> Path:
    """A copy of bundle `source` whose .manifest names `revision` (and holds `extra` files)."""
    files = read_bundle(source)
    manifest = json.loads(files[MANIFEST])
    manifest["revision"] = revision
    files[MANIFEST] = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    files.update(extra or {})
    target.parent.mkdir(parents=True, exist_ok=True)
    write_tarball(files, target)
    return target


def edited_policies(tmp: Path, edits: Mapping[str, Callable[[str], str]]) -> Path:
    """A copy of examples/policies with `edits` (file name → text transformation) applied."""
    folder = tmp / "policies"
    shutil.copytree(EXAMPLES / "policies", folder)
    for name, edit in edits.items():
        path = folder / name
        path.write_text(edit(path.read_text()))
    return folder


@dataclass(frozen=True)
class Keys:
    rsa_private: Path
    rsa_public: Path
    ec_private: Path
    ec_public: Path
    hmac: Path


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("keys")
    pem = serialization.Encoding.PEM
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    paths = Keys(
        folder / "rsa.pem", folder / "rsa.pub.pem", folder / "ec.pem", folder / "ec.pub.pem", folder / "hmac"
    )
    for private, private_path, public_path in (
        (rsa_key, paths.rsa_private, paths.rsa_public),
        (ec_key, paths.ec_private, paths.ec_public),
    ):
        private_path.write_bytes(
            private.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        public_path.write_bytes(
            private.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
    paths.hmac.write_bytes(b"a-shared-secret-that-is-long-enough-for-hs256")
    return paths


@pytest.fixture
def invoke() -> Invoke:
    """Run the real `nauthera` command group in-process."""

    def run(*args: str | Path) -> Result:
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    return run

"""Package stage: reproducible bundles that the real OPA loads, inspects and serves."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import requests
from nauthera.engines.tools import find_tool

from ...conftest import EXAMPLES, Cli
from ...harness.processes import opa_serving, wait_until


def _manifest(bundle: Path) -> dict[str, object]:
    with tarfile.open(bundle) as tar:
        handle = tar.extractfile(".manifest")
        assert handle is not None
        manifest: dict[str, object] = json.loads(handle.read())
        return manifest


def test_two_compiles_are_byte_identical(cli: Cli, tmp_path: Path) -> None:
    """Same inputs, different output folders, file times and order of discovery: same bytes."""
    original, copy = tmp_path / "original", tmp_path / "copy"
    shutil.copytree(EXAMPLES / "policies", original)
    shutil.copytree(EXAMPLES / "policies", copy)
    for index, file in enumerate(sorted(copy.iterdir())):
        os.utime(file, (1_000_000 + index, 2_000_000 + index))
    first = cli("compile", original, "--out", tmp_path / "a")
    second = cli("compile", copy, "--out", tmp_path / "b")
    assert first.returncode == 0 and second.returncode == 0, first.stdout + second.stdout
    a, b = (tmp_path / "a" / "bundle.tar.gz").read_bytes(), (tmp_path / "b" / "bundle.tar.gz").read_bytes()
    assert a == b
    assert (tmp_path / "a/tests/opa/nauthera_fixtures/data.json").read_bytes() == (
        tmp_path / "b/tests/opa/nauthera_fixtures/data.json"
    ).read_bytes()


def test_tarball_entries_are_normalised(cli: Cli, tmp_path: Path) -> None:
    assert cli("compile", EXAMPLES / "policies", "--out", tmp_path).returncode == 0
    bundle = tmp_path / "bundle.tar.gz"
    assert bundle.read_bytes()[4:8] == b"\0\0\0\0", "gzip header must not carry a timestamp"
    with tarfile.open(bundle) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, 0, "", "", 0o644)}


def test_manifest_declares_roots_revision_and_source(cli: Cli, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLES / "policies", repo / "policies")
    git = ["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "policies"], check=True)
    commit = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert cli("compile", repo / "policies", "--out", tmp_path / "out").returncode == 0
    manifest = _manifest(tmp_path / "out" / "bundle.tar.gz")
    assert manifest["roots"] == ["nauthera", "nauthera_data"]
    assert manifest["rego_version"] == 1
    metadata = manifest["metadata"]
    assert isinstance(metadata, dict)
    assert metadata["nauthera"]["policies"] == 8
    assert metadata["nauthera"]["git"] == {"commit": commit, "dirty": False}
    assert str(metadata["nauthera"]["compiler"]).startswith("nauthera ")


def test_revision_follows_content(cli: Cli, tmp_path: Path) -> None:
    source = tmp_path / "policies"
    shutil.copytree(EXAMPLES / "policies", source)
    assert cli("compile", source, "--out", tmp_path / "a").returncode == 0
    policy = source / "web-apps-policy.yaml"
    policy.write_text(policy.read_text().replace('accessTokenTTL: "15m"', 'accessTokenTTL: "10m"'))
    assert cli("compile", source, "--out", tmp_path / "b").returncode == 0
    assert (
        _manifest(tmp_path / "a/bundle.tar.gz")["revision"]
        != _manifest(tmp_path / "b/bundle.tar.gz")["revision"]
    )
    assert cli("compile", source, "--out", tmp_path / "c", "--revision", "v42").returncode == 0
    assert _manifest(tmp_path / "c/bundle.tar.gz")["revision"] == "v42"


def test_opa_inspect_reads_the_bundle(cli: Cli, tmp_path: Path) -> None:
    compiled = cli("compile", EXAMPLES / "policies", "--out", tmp_path, "--format", "json")
    revision = json.loads(compiled.stdout)["revision"]
    inspected = subprocess.run(
        [str(find_tool("opa")), "inspect", "--format", "json", tmp_path / "bundle.tar.gz"],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(inspected.stdout)
    assert report["manifest"]["revision"] == revision
    assert set(report["namespaces"]) >= {"data.nauthera.authclient", "data.nauthera.admission"}


def test_opa_run_serves_decisions_from_the_bundle(cli: Cli, tmp_path: Path) -> None:
    """`opa run -b` loads the bundle as a server; the REST API answers the SPEC decision document."""
    assert cli("compile", EXAMPLES / "policies", "--out", tmp_path).returncode == 0
    server, base = opa_serving(tmp_path / "bundle.tar.gz", tmp_path / "opa.log")
    try:
        wait_until(
            lambda: requests.get(f"{base}/health?bundles", timeout=1).status_code == 200,
            30,
            f"OPA to activate the bundle:\n{server.output()}",
        )
        client = {
            "apiVersion": "auth.nauthera.io/v1alpha1",
            "kind": "AuthClient",
            "metadata": {"name": "x", "namespace": "nowhere"},
            "spec": {},
        }
        response = requests.post(
            f"{base}/v1/data/nauthera/authclient/decision", json={"input": client}, timeout=10
        )
        decision = response.json()["result"]
        assert decision["allowed"] is False
        assert decision["violations"] == [
            {"policy": None, "field": "targets", "message": "no AuthPolicy governs AuthClient nowhere/x"}
        ]
    finally:
        server.stop()

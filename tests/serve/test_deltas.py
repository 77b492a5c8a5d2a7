"""Delta bundles with the real OPA: an agent fed deltas holds exactly what a fresh OPA fed the snapshot
holds, after any sequence of edits; signed channels and agents without a revision get snapshots."""

from __future__ import annotations

import json
import random
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from nauthera.compile.sources import folder_sources
from nauthera.engines.tools import find_tool
from nauthera.targets.base import CompileOptions
from nauthera.targets.opa.bundle import bundle_entries, read_bundle
from nauthera.targets.opa.incremental import IncrementalCompiler

from ..conftest import Cli
from ..harness.policies import RandomRepo
from ..harness.processes import Process, free_port, nauthera, opa_agent, wait_until

EDITS = 24
#: The header by which an agent opts in to delta bundles.
OPT_IN = {"Nauthera-Delta-Bundles": "on"}


def opa_data(opa_url: str, path: str) -> Any:
    response = requests.get(f"{opa_url}/v1/data/{path}", timeout=5)
    response.raise_for_status()
    return response.json().get("result")


def active_revision(opa_url: str, bundle: str = "stable") -> str | None:
    manifest = opa_data(opa_url, f"system/bundles/{bundle}/manifest") or {}
    revision = manifest.get("revision")
    return str(revision) if revision is not None else None


def snapshot_data(bundle: Path) -> Any:
    """The bundle's data (`data.nauthera_data`) as a fresh OPA loads it from the bundle file."""
    completed = subprocess.run(
        [str(find_tool("opa")), "eval", "--bundle", str(bundle), "--format", "json", "data.nauthera_data"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(completed.stdout)["result"][0]["expressions"][0]["value"]


def metric(server: str, name: str) -> float:
    for line in requests.get(f"{server}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


@dataclass
class Fleet:
    work: Path
    repo: RandomRepo
    store: Path
    server: str
    sidecar: Process
    opa: str
    #: An agent with `persist: true`, which OPA never lets activate a delta: it must get snapshots.
    persisting: str

    def channel_revision(self) -> str | None:
        revision = requests.get(f"{self.server}/v1/channels", timeout=5).json().get("stable", {})
        return revision.get("revision")

    def bundle_file(self, revision: str) -> Path:
        return self.store / "revisions" / revision / "bundle.tar.gz"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("deltas")
    repo = RandomRepo(work / "policies", random.Random(20261130))
    repo.seed(12)
    port = free_port()
    server = f"http://127.0.0.1:{port}"
    sidecar = nauthera(
        "sidecar",
        "--source",
        repo.root,
        "--store",
        work / "store",
        "--listen",
        f"127.0.0.1:{port}",
        "--debounce",
        "50ms",
        log=work / "sidecar.log",
    )
    opa, opa_url = opa_agent(work, "opa-delta", server, long_poll=10, min_delay=30, max_delay=60)
    persisting, persisting_url = opa_agent(
        work, "opa-persist", server, long_poll=10, min_delay=30, max_delay=60, deltas=False, persist=True
    )
    state = Fleet(work, repo, work / "store", server, sidecar, opa_url, persisting_url)
    try:
        wait_until(state.channel_revision, 60, f"the first publish:\n{sidecar.output()}")
        wait_until(
            lambda: active_revision(opa_url) == state.channel_revision(), 60, f"OPA to load:\n{opa.output()}"
        )
        yield state
    finally:
        persisting.stop()
        opa.stop()
        sidecar.stop()


def test_deltas_and_snapshots_give_opa_the_same_data(fleet: Fleet) -> None:
    """Random edits (add, change, remove, rename, invalid, duplicate, repair): after each, the
    long-polling OPA, which gets deltas, holds the data a fresh OPA loads from the snapshot. An edit
    that does not compile changes nothing: the channel and the OPA keep the last good revision."""
    expected = IncrementalCompiler(CompileOptions(paths=[fleet.repo.root], out=fleet.work / "unused"))
    deltas_before = metric(fleet.server, "nauthera_bundle_deltas_total")
    published = 0
    for step in range(EDITS):
        before = fleet.channel_revision()
        done = fleet.repo.edit()
        expected.update(folder_sources([fleet.repo.root]))
        build = expected.build()
        context = f"step {step}: {done}"
        if build.ok:
            wait_until(
                lambda want=build.revision: fleet.channel_revision() == want, 30, f"the publish ({context})"
            )
            published += build.revision != before
        else:
            wait_until(
                lambda: not requests.get(f"{fleet.server}/readyz", timeout=5).json()["last_compile"]["ok"],
                30,
                f"the failed compile to show ({context})",
            )
            assert fleet.channel_revision() == before, context
        revision = fleet.channel_revision()
        assert revision is not None
        wait_until(
            lambda want=revision: active_revision(fleet.opa) == want, 30, f"OPA to activate ({context})"
        )
        expected_data = snapshot_data(fleet.bundle_file(revision))
        assert opa_data(fleet.opa, "nauthera_data") == expected_data, context
        wait_until(
            lambda want=revision: active_revision(fleet.persisting) == want,
            30,
            f"the persisting OPA to activate the snapshot ({context})",
        )
        assert opa_data(fleet.persisting, "nauthera_data") == expected_data, context
    assert published >= EDITS // 3, "most edits published a revision"
    assert metric(fleet.server, "nauthera_bundle_deltas_total") - deltas_before >= published - 1


def test_agents_report_delta_activations_with_their_revision(fleet: Fleet) -> None:
    revision = fleet.channel_revision()

    def reported() -> dict[str, Any] | None:
        for agent in requests.get(f"{fleet.server}/v1/agents", timeout=5).json()["agents"]:
            if agent["labels"].get("name") == "opa-delta":
                bundle: dict[str, Any] = agent["bundles"]["stable"]
                return bundle if bundle["active_revision"] == revision else None
        return None

    bundle = wait_until(reported, 30, "the agent's status report")
    assert bundle["type"] == "delta"
    assert bundle["stale"] is False


def test_an_agent_without_a_revision_gets_the_snapshot(fleet: Fleet) -> None:
    revision = fleet.channel_revision()
    assert revision is not None
    fresh = requests.get(
        f"{fleet.server}/bundles/stable", headers={"Prefer": "modes=snapshot,delta", **OPT_IN}, timeout=10
    )
    assert fresh.status_code == 200
    assert fresh.content == fleet.bundle_file(revision).read_bytes()
    unknown = requests.get(
        f"{fleet.server}/bundles/stable",
        headers={"If-None-Match": '"no-such-revision"', "Prefer": "modes=snapshot,delta", **OPT_IN},
        timeout=10,
    )
    assert unknown.content == fresh.content
    no_delta = requests.get(
        f"{fleet.server}/bundles/stable",
        headers={"If-None-Match": '"no-such-revision"', "Prefer": "modes=snapshot"},
        timeout=10,
    )
    assert no_delta.content == fresh.content


def test_deltas_go_only_to_agents_that_opt_in(fleet: Fleet) -> None:
    """OPA offers `delta` in every request, even with `persist: true`, where it then refuses one: an
    agent that names an older revision gets a delta only with the opt-in header."""
    before = fleet.channel_revision()
    fleet.repo.change()
    wait_until(lambda: fleet.channel_revision() not in (before, None), 30, "the publish")
    current = fleet.channel_revision()
    assert before is not None and current is not None
    asked = {"If-None-Match": f'"{before}"', "Prefer": "modes=snapshot,delta"}
    plain = requests.get(f"{fleet.server}/bundles/stable", headers=asked, timeout=10)
    assert plain.status_code == 200
    assert plain.content == fleet.bundle_file(current).read_bytes()
    opted_in = requests.get(f"{fleet.server}/bundles/stable", headers={**asked, **OPT_IN}, timeout=10)
    assert opted_in.status_code == 200
    assert "patch.json" in bundle_entries(opted_in.content, "delta")


def _revision(bundle: Path) -> str:
    return str(json.loads(read_bundle(bundle)[".manifest"])["revision"])


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_serve_sends_deltas_between_stored_revisions_and_snapshots_when_signed(
    signed: bool, cli: Cli, tmp_path: Path
) -> None:
    """`nauthera serve` reads revisions published by CI: it parses them to send deltas, except on
    signed channels, where OPA verifies every bundle and so gets snapshots only."""
    repo = RandomRepo(tmp_path / "policies", random.Random(5))
    repo.seed(8)
    store = tmp_path / "store"
    key = tmp_path / "secret"
    key.write_text("a shared HMAC secret for the test")
    signing: list[str | Path] = ["--signing-key", key, "--signing-alg", "HS256"] if signed else []

    def publish(out: Path) -> str:
        compiled = cli("compile", repo.root, "--out", out, *signing)
        assert compiled.returncode == 0, compiled.stdout + compiled.stderr
        published = cli("bundle", "publish", out / "bundle.tar.gz", "--store", store)
        assert published.returncode == 0, published.stdout + published.stderr
        return _revision(out / "bundle.tar.gz")

    first = publish(tmp_path / "a")
    port = free_port()
    server = f"http://127.0.0.1:{port}"
    serve = nauthera("serve", "--store", store, "--listen", f"127.0.0.1:{port}", log=tmp_path / "serve.log")
    keys = {"shared": {"algorithm": "HS256", "key": key.read_text()}} if signed else None
    opa, opa_url = opa_agent(
        tmp_path,
        "opa-serve",
        server,
        long_poll=10,
        min_delay=30,
        max_delay=60,
        keys=keys,
        signing={"keyid": "shared"} if signed else None,
    )
    try:
        wait_until(lambda: active_revision(opa_url) == first, 60, f"OPA to load:\n{opa.output()}")
        for round_ in range(3):
            repo.change()
            out = tmp_path / f"b{round_}"
            revision = publish(out)
            wait_until(
                lambda want=revision: active_revision(opa_url) == want, 30, f"OPA to follow:\n{opa.output()}"
            )
            assert opa_data(opa_url, "nauthera_data") == snapshot_data(out / "bundle.tar.gz")
        deltas = metric(server, "nauthera_bundle_deltas_total")
        assert deltas == 0 if signed else deltas >= 3
    finally:
        opa.stop()
        serve.stop()

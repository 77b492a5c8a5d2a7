"""Issue 5 end to end: the real sidecar and real OPA processes on loopback."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from nauthera.engines.tools import find_tool

from ..harness.processes import Process, decide, free_port, nauthera, opa_agent, wait_until, write_policy

CLIENT: dict[str, Any] = {
    "apiVersion": "auth.nauthera.io/v1alpha1",
    "kind": "AuthClient",
    "metadata": {"name": "app", "namespace": "team-a"},
    "spec": {
        "applicationType": "web",
        "grantTypes": ["authorization_code", "client_credentials"],
        "pkce": {"required": True},
        "redirectUris": ["https://app.example.com/cb"],
    },
}
ALLOWING = {
    "targets": {"namespaces": ["team-*"]},
    "allowedGrantTypes": ["authorization_code", "client_credentials"],
}
DENYING = {"targets": {"namespaces": ["team-*"]}, "allowedGrantTypes": ["authorization_code"]}


@dataclass
class Fleet:
    work: Path
    policies: Path
    store: Path
    server: str
    sidecar: Process
    opa: str
    port: int

    def revision(self) -> str | None:
        channels = requests.get(f"{self.server}/v1/channels", timeout=5).json()
        return channels.get("stable", {}).get("revision")

    def allowed(self) -> bool | None:
        decision = decide(self.opa, CLIENT)
        return None if decision is None else bool(decision["allowed"])

    def set_policy(self, spec: dict[str, Any], allowed: bool) -> float:
        """Write the policy and return how long the OPA took to decide accordingly."""
        started = time.monotonic()
        write_policy(self.policies, "grants", spec)
        wait_until(lambda: self.allowed() is allowed, 20, f"OPA to decide allowed={allowed}", interval=0.01)
        return time.monotonic() - started


def _start_sidecar(work: Path, policies: Path, store: Path, port: int, *extra: str) -> Process:
    process = nauthera(
        "sidecar",
        "--source",
        policies,
        "--store",
        store,
        "--listen",
        f"127.0.0.1:{port}",
        "--stale-after",
        "1s",
        "--debounce",
        "50ms",
        *extra,
        log=work / "sidecar.log",
    )
    try:
        wait_until(
            lambda: requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200,
            60,
            "the sidecar to be ready",
        )
    except AssertionError:
        process.stop()
        raise AssertionError(f"the sidecar did not get ready:\n{process.output()}") from None
    return process


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("fleet")
    policies = work / "policies"
    policies.mkdir()
    write_policy(policies, "grants", ALLOWING)
    port = free_port()
    sidecar = _start_sidecar(work, policies, work / "store", port)
    server = f"http://127.0.0.1:{port}"
    # Plain polling every 30-60 s: only long polling can make a change arrive within seconds.
    opa, opa_url = opa_agent(work, "opa-1", server, long_poll=10, min_delay=30, max_delay=60)
    state = Fleet(work, policies, work / "store", server, sidecar, opa_url, port)
    try:
        wait_until(lambda: state.allowed() is True, 60, f"OPA to load the bundle:\n{opa.output()}")
        yield state
    finally:
        opa.stop()
        state.sidecar.stop()


def test_opa_loads_the_bundle_from_the_sidecar(fleet: Fleet) -> None:
    decision = decide(fleet.opa, CLIENT)
    assert decision is not None
    assert decision["policies"] == ["security/grants"]


def test_policy_edit_reaches_opa_through_long_polling(fleet: Fleet) -> None:
    latencies = []
    for _ in range(3):
        latencies.append(fleet.set_policy(DENYING, allowed=False))
        latencies.append(fleet.set_policy(ALLOWING, allowed=True))
    print(f"change-to-enforcement latencies (s): {[round(x, 3) for x in latencies]}")
    # OPA polls only every 30-60 s here, so every change arriving well inside that proves long polling.
    assert max(latencies) < 15


def test_broken_edit_is_never_published(fleet: Fleet) -> None:
    fleet.set_policy(ALLOWING, allowed=True)
    good = fleet.revision()
    broken = write_policy(fleet.policies, "broken", {"token": {"accessTokenTTL": "7d"}})
    try:

        def failed_compile() -> dict[str, Any] | None:
            detail: dict[str, Any] = requests.get(f"{fleet.server}/readyz", timeout=2).json()
            return None if detail["last_compile"]["ok"] else detail

        detail = wait_until(failed_compile, 20, "the failed compile to show")
        assert any("7d" in error for error in detail["last_compile"]["errors"])
        assert detail["ready"] is True, "the last good revision is still served"
        assert fleet.revision() == good
        assert fleet.allowed() is True
        metrics = requests.get(f"{fleet.server}/metrics", timeout=2).text
        assert (
            "nauthera_compile_failures_total 1.0" in metrics
            or "nauthera_compile_failures_total 2.0" in metrics
        )
    finally:
        broken.unlink()
    wait_until(
        lambda: requests.get(f"{fleet.server}/readyz", timeout=2).json()["last_compile"]["ok"],
        20,
        "the sidecar to recover once the broken file is gone",
    )


def test_agents_show_revisions_and_flag_a_lagging_opa_stale(fleet: Fleet) -> None:
    fleet.set_policy(ALLOWING, allowed=True)
    # A second OPA that polls only every 60-120 s without long polling: it will lag behind a publish.
    slow, _ = opa_agent(
        fleet.work, "opa-slow", fleet.server, long_poll=None, min_delay=60, max_delay=120, decision_logs=False
    )
    try:
        revision = fleet.revision()

        def agents() -> dict[str, Any]:
            listed = requests.get(f"{fleet.server}/v1/agents", timeout=2).json()["agents"]
            return {a["labels"].get("name"): a for a in listed}

        wait_until(
            lambda: all(
                agents().get(name, {}).get("bundles", {}).get("stable", {}).get("active_revision") == revision
                for name in ("opa-1", "opa-slow")
            ),
            60,
            "both agents to report the current revision",
        )
        fleet.set_policy(DENYING, allowed=False)
        current = wait_until(
            lambda: agents()["opa-1"]["bundles"]["stable"]["active_revision"] != revision and agents(),
            20,
            "opa-1 to report the new revision",
        )
        assert current["opa-1"]["stale"] is False
        flagged = wait_until(lambda: agents()["opa-slow"]["stale"] and agents(), 20, "opa-slow to be stale")
        assert flagged["opa-slow"]["bundles"]["stable"]["active_revision"] == revision
        metrics = requests.get(f"{fleet.server}/metrics", timeout=2).text
        assert "nauthera_agents_stale 1.0" in metrics
        listed = subprocess.run(
            [sys.executable, "-m", "nauthera", "agents", "--server", fleet.server, "--format", "json"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert listed.returncode == 1, "a stale agent makes `nauthera agents` exit 1"
        assert any(a["stale"] for a in json.loads(listed.stdout)["agents"])
    finally:
        slow.stop()


def test_denied_decisions_are_summarised_from_decision_logs(fleet: Fleet) -> None:
    fleet.set_policy(DENYING, allowed=False)
    for _ in range(3):
        decide(fleet.opa, CLIENT)
    rows = wait_until(
        lambda: [
            r
            for r in requests.get(f"{fleet.server}/v1/decisions", timeout=2).json()["denied"]
            if r["client"] == "team-a/app"
        ],
        30,
        "decision logs to arrive",
    )
    assert rows[0]["policy"] == "security/grants"
    assert rows[0]["field"] == "allowedGrantTypes"
    assert rows[0]["count"] >= 3
    summary = subprocess.run(
        [sys.executable, "-m", "nauthera", "decisions", "--server", fleet.server, "--since", "1h"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert summary.returncode == 0
    assert "security/grants  allowedGrantTypes  team-a/app" in summary.stdout


def test_bundle_protocol_etag_304_and_long_poll(fleet: Fleet) -> None:
    first = requests.get(f"{fleet.server}/bundles/stable", timeout=5)
    assert first.status_code == 200
    assert first.headers["Content-Type"] == "application/vnd.openpolicyagent.bundles"
    etag = first.headers["ETag"]
    assert etag.strip('"') == fleet.revision()
    unchanged = requests.get(f"{fleet.server}/bundles/stable", headers={"If-None-Match": etag}, timeout=5)
    assert unchanged.status_code == 304
    started = time.monotonic()
    held = requests.get(
        f"{fleet.server}/bundles/stable",
        headers={"If-None-Match": etag, "Prefer": "modes=snapshot,delta;wait=1"},
        timeout=5,
    )
    assert held.status_code == 304 and time.monotonic() - started >= 0.9
    answer: dict[str, Any] = {}

    def long_poll() -> None:
        response = requests.get(
            f"{fleet.server}/bundles/stable",
            headers={"If-None-Match": etag, "Prefer": "modes=snapshot;wait=30"},
            timeout=40,
        )
        answer.update(status=response.status_code, etag=response.headers.get("ETag"), at=time.monotonic())

    waiter = threading.Thread(target=long_poll)
    waiter.start()
    time.sleep(0.5)
    spec = DENYING if fleet.allowed() else ALLOWING
    published = time.monotonic()
    write_policy(fleet.policies, "grants", spec)
    waiter.join(timeout=40)
    assert answer["status"] == 200 and answer["etag"] != etag
    assert answer["at"] - published < 10, "a held request is answered as soon as the channel moves"
    missing = requests.get(f"{fleet.server}/bundles/no-such-channel", timeout=5)
    assert missing.status_code == 404


def test_status_and_log_intake_reject_garbage(fleet: Fleet) -> None:
    assert requests.post(f"{fleet.server}/status", data=b"{not json", timeout=5).status_code == 400
    assert requests.post(f"{fleet.server}/status", json={"labels": {}}, timeout=5).status_code == 400
    body = gzip.compress(json.dumps({"not": "a list"}).encode())
    response = requests.post(
        f"{fleet.server}/logs", data=body, headers={"Content-Encoding": "gzip"}, timeout=5
    )
    assert response.status_code == 400


def _held_long_polls(server: str) -> float:
    metrics = requests.get(f"{server}/metrics", timeout=2).text
    match = re.search(r"^nauthera_long_poll_waiters (\S+)$", metrics, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_restarting_the_sidecar_recovers(fleet: Fleet) -> None:
    fleet.set_policy(ALLOWING, allowed=True)
    before = fleet.revision()
    wait_until(lambda: _held_long_polls(fleet.server) >= 1, 30, "OPA's long poll to be held")
    started = time.monotonic()
    fleet.sidecar.stop()  # asserts a clean exit on SIGTERM
    # The held long poll (10 s here; 60 s in deploy/) is answered at SIGTERM, not waited for.
    assert time.monotonic() - started < 5, "shutdown waited for a held long poll"
    assert fleet.allowed() is True, "OPA keeps enforcing its bundle while the sidecar is down"
    fleet.sidecar = _start_sidecar(fleet.work, fleet.policies, fleet.store, fleet.port)
    assert fleet.revision() == before, "an unchanged source recompiles to the same revision"
    latency = fleet.set_policy(DENYING, allowed=False)
    assert latency < 20


def test_bearer_token_is_required_when_configured(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    write_policy(policies, "grants", ALLOWING)
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    port = free_port()
    sidecar = _start_sidecar(tmp_path, policies, tmp_path / "store", port, "--token-file", str(token_file))
    server = f"http://127.0.0.1:{port}"
    opa, opa_url = opa_agent(tmp_path, "opa-token", server, token="s3cret-token")
    try:
        for path in ("/bundles/stable", "/v1/agents", "/v1/decisions"):
            assert requests.get(f"{server}{path}", timeout=5).status_code == 401
            wrong = {"Authorization": "Bearer s3cret-tokeN"}
            assert requests.get(f"{server}{path}", headers=wrong, timeout=5).status_code == 401
        assert requests.post(f"{server}/status", json={}, timeout=5).status_code == 401
        good = {"Authorization": "Bearer s3cret-token"}
        assert requests.get(f"{server}/bundles/stable", headers=good, timeout=5).status_code == 200
        wait_until(lambda: decide(opa_url, CLIENT), 60, "OPA with the token to load the bundle")
    finally:
        opa.stop()
        sidecar.stop()


def test_push_mode_loads_opa_and_reloads_it_after_a_restart(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    write_policy(policies, "grants", ALLOWING)
    opa_port = free_port()
    opa_url = f"http://127.0.0.1:{opa_port}"
    opa_args = [
        str(find_tool("opa")),
        "run",
        "--skip-version-check",
        "--server",
        "--addr",
        f"127.0.0.1:{opa_port}",
    ]
    opa = Process(opa_args, tmp_path / "opa.log").start()
    port = free_port()
    sidecar = _start_sidecar(tmp_path, policies, tmp_path / "store", port, "--push-to", opa_url)
    try:
        wait_until(lambda: decide(opa_url, CLIENT), 30, "the pushed policy to answer")
        opa.stop()
        opa = Process(opa_args, tmp_path / "opa.log").start()
        wait_until(
            lambda: decide(opa_url, CLIENT), 30, "the sidecar to re-push into the restarted, empty OPA"
        )
        write_policy(policies, "grants", DENYING)
        wait_until(
            lambda: (decide(opa_url, CLIENT) or {}).get("allowed") is False, 30, "the edit to be pushed"
        )
    finally:
        sidecar.stop()
        opa.stop()

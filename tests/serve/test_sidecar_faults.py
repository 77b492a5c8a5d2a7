"""Issue 16: the sidecar under faults. Its policy folder disappears and comes back, Git checkouts replace
files mid-compile, the OPA it pushes to answers 500, hangs or restarts: the last good revision stays
served, recovery is automatic, and each fault shows in /readyz and /metrics."""

from __future__ import annotations

import http.server
import json
import random
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from nauthera.engines.tools import find_tool

from ..harness.cli import nauthera as run_cli
from ..harness.policies import document, random_spec
from ..harness.processes import Process, decide, free_port, nauthera, stop_all, wait_until, write_policy
from ..harness.reliability import Reliability

ALLOWING = {"targets": {"namespaces": ["team-*"]}, "allowedGrantTypes": ["authorization_code"]}
CLIENT: dict[str, Any] = {
    "apiVersion": "auth.nauthera.io/v1alpha1",
    "kind": "AuthClient",
    "metadata": {"name": "app", "namespace": "team-a"},
    "spec": {"applicationType": "web", "grantTypes": ["authorization_code"], "pkce": {"required": True}},
}


class Sidecar:
    def __init__(self, work: Path, sources: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        listen = f"127.0.0.1:{self.port}"
        args = ("sidecar", "--source", sources, "--store", work / "store", "--listen", listen, *extra)
        self.process = nauthera(*args, "--debounce", "50ms", log=work / "sidecar.log")

    def readiness(self) -> dict[str, Any]:
        detail: dict[str, Any] = requests.get(f"{self.url}/readyz", timeout=5).json()
        return detail

    def serving(self) -> str:
        response = requests.get(f"{self.url}/bundles/stable", timeout=5)
        assert response.status_code == 200, response.text
        return str(response.headers["etag"]).strip('"')

    def metric(self, name: str) -> float:
        match = re.search(
            rf"^{name} (\S+)$", requests.get(f"{self.url}/metrics", timeout=5).text, re.MULTILINE
        )
        return float(match.group(1)) if match else 0.0


@pytest.fixture
def started() -> Iterator[list[Process]]:
    processes: list[Process] = []
    yield processes
    stop_all([process for process in processes if process.alive()])


def test_policy_folder_disappears_and_comes_back(
    tmp_path: Path, reliability: Reliability, started: list[Process]
) -> None:
    policies = tmp_path / "repo" / "policies"
    policies.mkdir(parents=True)
    write_policy(policies, "grants", ALLOWING)
    sidecar = Sidecar(tmp_path, policies)
    started.append(sidecar.process)
    sidecar.process.wait_ready(lambda: sidecar.readiness()["ready"], 60, "the first compile")
    good = sidecar.serving()

    shutil.move(policies, tmp_path / "away")
    wait_until(lambda: not sidecar.readiness()["last_compile"]["ok"], 10, "the failed compile in /readyz")
    assert sidecar.serving() == good and sidecar.metric("nauthera_compile_failures_total") >= 1
    error = sidecar.readiness()["last_compile"]["errors"][0].replace(str(tmp_path), "TMP")
    reliability.add("sidecar", "policy folder removed", f"last good revision served; /readyz: {error[:90]}")

    shutil.move(tmp_path / "away", policies)
    write_policy(
        policies, "grants", {**ALLOWING, "allowedGrantTypes": ["authorization_code", "refresh_token"]}
    )
    started_at = time.monotonic()
    wait_until(
        lambda: sidecar.serving() != good and sidecar.readiness()["last_compile"]["ok"], 20, "recovery"
    )
    reliability.add(
        "sidecar",
        "policy folder back (with an edit)",
        f"recompiled and served automatically after {time.monotonic() - started_at:.1f} s",
    )


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def _commit_policies(repo: Path, branch: str, seed: int, count: int) -> None:
    """A branch whose policies/ holds `count` random policies (the same names on every branch)."""
    _git(repo, "checkout", "-q", "-B", branch)
    folder = repo / "policies"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    rng = random.Random(seed)
    for index in range(count):
        (folder / f"p{index:04d}.yaml").write_text(json.dumps(document(f"p{index:04d}", random_spec(rng))))
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", branch)


def test_git_checkouts_mid_compile_end_on_the_checked_out_policies(
    tmp_path: Path, reliability: Reliability, started: list[Process]
) -> None:
    """Checkouts between two branches of 1,000 policies, faster than a compile: the sidecar ends up
    serving exactly what `nauthera compile` makes of the final checkout."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@example.com")
    _git(repo, "config", "user.name", "t")
    _commit_policies(repo, "one", seed=1, count=1000)
    _commit_policies(repo, "two", seed=2, count=1000)
    sidecar = Sidecar(tmp_path, repo / "policies")
    started.append(sidecar.process)
    sidecar.process.wait_ready(lambda: sidecar.readiness()["ready"], 60, "the first compile")
    for branch in ["one", "two"] * 4 + ["one"]:
        _git(repo, "checkout", "-q", branch)
        time.sleep(0.3)
    out = tmp_path / "compiled"
    compiled = run_cli("compile", repo / "policies", "--out", out)
    assert compiled.returncode == 0, compiled.stderr
    expected_revision = _bundle_revision(out / "bundle.tar.gz")
    wait_until(lambda: sidecar.serving() == expected_revision, 60, "the sidecar to serve the final checkout")
    assert sidecar.readiness()["last_compile"]["ok"]
    reliability.add(
        "sidecar",
        "9 Git checkouts of 1,000 policies, 0.3 s apart (faster than a compile)",
        "serves exactly the final checkout's revision (the CLI's compile of it)",
    )


def _bundle_revision(bundle: Path) -> str:
    listing = subprocess.run(
        [str(find_tool("opa")), "inspect", "--format", "json", str(bundle)], check=True, capture_output=True
    )
    return str(json.loads(listing.stdout)["manifest"]["revision"])


class _Failing(http.server.BaseHTTPRequestHandler):
    """An OPA REST API that answers every request 500 (the fault a real OPA does not produce on demand)."""

    def _fail(self) -> None:
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"code": "internal_error", "message": "injected"}')

    do_GET = do_PUT = do_POST = do_PATCH = _fail  # noqa: N815 - http.server's handler names

    def log_message(self, *args: Any) -> None:
        del args


def test_push_mode_rides_out_an_opa_failing_then_hanging_then_restarting(
    tmp_path: Path, reliability: Reliability, started: list[Process]
) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    write_policy(policies, "grants", ALLOWING)
    opa_port = free_port()
    failing = http.server.ThreadingHTTPServer(("127.0.0.1", opa_port), _Failing)
    thread = threading.Thread(target=failing.serve_forever, daemon=True)
    thread.start()
    sidecar = Sidecar(tmp_path, policies, "--push-to", f"http://127.0.0.1:{opa_port}")
    started.append(sidecar.process)
    try:
        sidecar.process.wait_ready(lambda: sidecar.readiness()["ready"], 60, "the first compile")
        wait_until(lambda: sidecar.readiness()["push"]["error"], 15, "the push failure in /readyz")
        failures = sidecar.metric("nauthera_push_failures_total")
        assert failures >= 1 and sidecar.serving()
        reliability.add(
            "sidecar",
            "push mode: OPA answers every request with an internal error",
            f"bundle still served; /readyz push.error set, {failures:.0f} failed round(s) counted",
        )
    finally:
        failing.shutdown()
        failing.server_close()
    opa_args = [
        str(find_tool("opa")),
        "run",
        "--skip-version-check",
        "--server",
        "--addr",
        f"127.0.0.1:{opa_port}",
    ]
    opa = Process(opa_args, tmp_path / "opa.log").start()
    started.append(opa)
    opa_url = f"http://127.0.0.1:{opa_port}"
    started_at = time.monotonic()
    wait_until(lambda: decide(opa_url, CLIENT), 30, "the push once OPA is back")
    wait_until(lambda: sidecar.readiness()["push"]["error"] is None, 10, "the push error to clear")
    reliability.add(
        "sidecar",
        "push mode: a real OPA replaces the failing one",
        f"loaded automatically after {time.monotonic() - started_at:.1f} s; /readyz push.error cleared",
    )
    opa.stop()
    with socket.socket() as hanging:
        hanging.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        hanging.bind(("127.0.0.1", opa_port))
        hanging.listen(16)
        failures, hung_at = sidecar.metric("nauthera_push_failures_total"), time.monotonic()
        wait_until(lambda: sidecar.metric("nauthera_push_failures_total") > failures, 45, "the hang noticed")
        noticed = time.monotonic() - hung_at
        assert sidecar.serving()
    opa = Process(opa_args, tmp_path / "opa2.log").start()
    started.append(opa)
    started_at = time.monotonic()
    wait_until(lambda: decide(opa_url, CLIENT), 30, "the re-push into the restarted OPA")
    reliability.add(
        "sidecar",
        "push mode: OPA hangs (accepts, never answers), then restarts empty",
        f"hang counted as a failure after {noticed:.0f} s (client timeouts and retries); restarted OPA "
        f"loaded after {time.monotonic() - started_at:.1f} s",
    )

"""Issue 16: the operator's AuthPolicy webhook answers hostile requests with a 4xx (or a refusing
AdmissionReview) and never a server error, and the operator exits 0 within 2 s of SIGTERM or SIGINT
while it holds its watches, its reconcile loop and a held long poll."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any

import requests

from ..conftest import EXAMPLES
from ..harness.controlplane import ControlPlane
from ..harness.operator import start_operator
from ..harness.reliability import Reliability
from .conftest import wait_for

PATH = "/validate/authpolicies"


def _review(obj: Any, operation: str = "CREATE") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {"uid": "u-1", "operation": operation, "object": obj},
    }


MALFORMED: dict[str, bytes] = {
    "deep JSON (100,000 nested arrays)": b"[" * 100_000 + b"]" * 100_000,
    "not JSON": b"{not json",
    "a JSON array": b"[1]",
    "request not an object": json.dumps({"request": [1]}).encode(),
    "no request": json.dumps({"kind": "AdmissionReview"}).encode(),
}
HOSTILE_OBJECTS: dict[str, Any] = {
    "spec a list": {"apiVersion": "auth.nauthera.io/v1alpha1", "kind": "AuthPolicy", "spec": [1, 2]},
    "metadata a string": {"kind": "AuthPolicy", "metadata": "x", "spec": {}},
    "name 5,000 characters": {"kind": "AuthPolicy", "metadata": {"name": "n" * 5000}, "spec": {}},
    "targets of every wrong type": {
        "kind": "AuthPolicy",
        "metadata": {"name": "p", "namespace": "security"},
        "spec": {"targets": {"namespaces": [1, None, {"a": 1}], "clientSelector": "x"}},
    },
    "an empty object": {},
}


def test_webhook_and_stop_under_hostile_input(
    open_cluster: ControlPlane, tmp_path: Path, reliability: Reliability
) -> None:
    operator = start_operator(open_cluster, tmp_path, "hostile-operator")
    try:
        operator.wait_synced()
        url = f"{operator.url}{PATH}"
        for name, body in MALFORMED.items():
            response = operator.session.post(url, data=body, timeout=10)
            assert response.status_code == 400, (name, response.status_code, response.text[:200])
            error = response.json()["error"]
            reliability.add("server", f"operator webhook: {name}", f"400: {error[:80]}")
        for name, obj in HOSTILE_OBJECTS.items():
            response = operator.session.post(url, json=_review(obj), timeout=10)
            assert response.status_code == 200, (name, response.status_code, response.text[:200])
            answer = response.json()["response"]
            assert answer["uid"] == "u-1" and answer["allowed"] is False, (name, answer)
            reliability.add(
                "server", f"operator webhook: AuthPolicy with {name}", "200, refused (allowed: false)"
            )
        assert "Traceback" not in operator.process.output()
        # A held long poll and the watches are what the stop has to end.
        with socket.create_connection(("127.0.0.1", int(operator.url.rsplit(":", 1)[1])), timeout=10) as held:
            revision = operator.readiness()["revision"]
            held.sendall(
                f'GET /bundles/stable HTTP/1.1\r\nHost: x\r\nIf-None-Match: "{revision}"\r\n'
                "Prefer: wait=60\r\n\r\n".encode()
            )
            code = operator.process.stop(timeout=2.0)
            answer = held.recv(4096).split(b"\r\n", 1)[0]
    finally:
        if operator.process.alive():
            operator.stop()
    assert code == 0 and answer in (b"HTTP/1.1 304 Not Modified", b"HTTP/1.1 404 Not Found"), (code, answer)
    assert operator.process.stop_seconds is not None and operator.process.stop_seconds < 2
    reliability.add(
        "shutdown",
        "operator, SIGTERM while watching, reconciling and holding a long poll",
        f"exit 0 in {operator.process.stop_seconds:.2f} s",
    )


def test_operator_exits_at_once_on_sigint(
    open_cluster: ControlPlane, tmp_path: Path, reliability: Reliability
) -> None:
    operator = start_operator(open_cluster, tmp_path, "sigint-operator", "--leader-elect")
    try:
        operator.wait_synced()
        code = operator.process.stop(timeout=2.0, sig=signal.SIGINT)
    finally:
        if operator.process.alive():
            operator.stop()
    assert code == 0 and operator.process.stop_seconds is not None
    reliability.add(
        "shutdown",
        "operator with --leader-elect, SIGINT while leading",
        f"exit 0 in {operator.process.stop_seconds:.2f} s",
    )


def test_operator_policy_folder_disappears_and_comes_back(
    open_cluster: ControlPlane, tmp_path: Path, reliability: Reliability
) -> None:
    """`--policies DIR`: the folder moved away keeps the last good revision served (the failure in
    /readyz); moved back with an edit, the operator compiles and serves it without a restart."""
    folder = tmp_path / "policies"
    shutil.copytree(EXAMPLES / "policies", folder)
    operator = start_operator(open_cluster, tmp_path, "folder-fault-operator", "--policies", str(folder))
    try:
        good = operator.wait_synced()["revision"]
        shutil.move(folder, tmp_path / "away")
        wait_for(lambda: operator.readiness()["stats"]["last_round_error"], 15, "the failure in /readyz")
        error = operator.readiness()["stats"]["last_round_error"].replace(str(tmp_path), "TMP")
        assert operator.readiness()["revision"] == good
        assert _served_revision(operator.url) == good
        metrics = operator.session.get(f"{operator.url}/metrics", timeout=5).text
        assert re.search(r"^nauthera_compile_failures_total [1-9]", metrics, re.MULTILINE), metrics
        reliability.add(
            "sidecar",
            "operator --policies: folder removed",
            f"last good revision served; /readyz: {error[:90]}",
        )
        shutil.move(tmp_path / "away", folder)
        spec_file = folder / "mobile-spa-policy.yaml"
        spec_file.write_text(spec_file.read_text().replace('accessTokenTTL: "10m"', 'accessTokenTTL: "9m"'))
        started = time.monotonic()
        wait_for(
            lambda: operator.readiness()["revision"] != good,
            30,
            "the edit compiled after the folder came back",
        )
        wait_for(
            lambda: _served_revision(operator.url) == operator.readiness()["revision"], 10, "the edit served"
        )
        reliability.add(
            "sidecar",
            "operator --policies: folder back (with an edit)",
            f"compiled and served without a restart after {time.monotonic() - started:.1f} s",
        )
        # A later edit is still noticed: the folder is watched again.
        revision = operator.readiness()["revision"]
        spec_file.write_text(spec_file.read_text().replace('accessTokenTTL: "9m"', 'accessTokenTTL: "8m"'))
        wait_for(lambda: operator.readiness()["revision"] != revision, 30, "a later edit compiled")
    finally:
        operator.stop()


def _served_revision(url: str) -> str:
    response = requests.get(f"{url}/bundles/stable", timeout=5)
    assert response.status_code == 200, response.text
    return str(response.headers["etag"]).strip('"')

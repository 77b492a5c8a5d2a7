"""Issue 16: the operator's AuthPolicy webhook answers hostile requests with a 4xx (or a refusing
AdmissionReview) and never a server error, and the operator exits 0 within 2 s of SIGTERM or SIGINT
while it holds its watches, its reconcile loop and a held long poll."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path
from typing import Any

from ..harness.controlplane import ControlPlane
from ..harness.operator import start_operator
from ..harness.reliability import Reliability

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

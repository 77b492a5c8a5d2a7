"""The operator's pure parts: status and conditions, `spec.path` diagnostics, the coalescing queue, and
the targets pre-filter checked against the real OPA's governing policies."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from nauthera.compile.loading import load_file
from nauthera.compile.model import build_policy
from nauthera.compile.validation import classify
from nauthera.engines.check import evaluate
from nauthera.kube.affected import may_govern
from nauthera.kube.client import AUTHCLIENTS
from nauthera.kube.policies import check_folder, check_object
from nauthera.kube.status import client_status, compliance, policy_status, same
from nauthera.kube.watch import Change, ChangeQueue
from nauthera.kube.webhook import review

from ..conftest import EXAMPLES
from ..harness.admission import Compiled
from ..harness.operator import generated_client
from .conftest import EXAMPLE_NAMESPACES

DENIED = {
    "allowed": False,
    "violations": [
        {"policy": "security/p", "field": "allowedGrantTypes", "message": 'grant type "implicit"'}
    ],
    "warnings": [],
    "dryrun": [],
    "policies": ["security/p"],
}
UNGOVERNED = {
    "allowed": False,
    "violations": [{"policy": None, "field": "targets", "message": "no AuthPolicy governs AuthClient a/b"}],
    "warnings": [],
    "dryrun": [],
    "policies": [],
}


def test_compliance_reasons_follow_spec_section_7() -> None:
    assert compliance(DENIED)[:2] == (False, "PolicyViolation")
    assert compliance(UNGOVERNED)[:2] == (False, "Ungoverned")
    schema = {**UNGOVERNED, "violations": [{"policy": None, "field": "schema", "message": "bad"}]}
    assert compliance(schema)[:2] == (False, "Invalid")
    allowed = {**DENIED, "allowed": True, "violations": [], "warnings": DENIED["violations"]}
    assert compliance(allowed) == (True, "Compliant", "allowed by security/p (1 warning)")


def test_last_transition_time_moves_only_when_the_status_does() -> None:
    first = client_status(DENIED, 1, "rev-a", None, "2026-01-01T00:00:00Z")
    (condition,) = first["conditions"]
    assert (condition["status"], condition["lastTransitionTime"]) == ("False", "2026-01-01T00:00:00Z")
    # Another denial (reason and message change, status does not): the transition time stays.
    second = client_status(UNGOVERNED, 2, "rev-b", first, "2026-01-02T00:00:00Z")
    assert second["conditions"][0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert second["conditions"][0]["reason"] == "Ungoverned"
    allowed = {**DENIED, "allowed": True, "violations": []}
    third = client_status(allowed, 2, "rev-c", second, "2026-01-03T00:00:00Z")
    assert third["conditions"][0]["lastTransitionTime"] == "2026-01-03T00:00:00Z"


def test_a_new_revision_that_decides_the_same_is_not_a_change() -> None:
    observed = client_status(DENIED, 1, "rev-a", None, "2026-01-01T00:00:00Z")
    again = client_status(DENIED, 1, "rev-b", observed, "2026-01-05T00:00:00Z")
    assert same(again, observed)
    assert not same(client_status(DENIED, 2, "rev-b", observed, "t"), observed)  # a new generation is
    ready = (True, "Enforced", "ok")
    policy = policy_status(3, "rev-a", 10, 2, ready, None, "t")
    assert same(policy_status(3, "rev-b", 10, 2, ready, policy, "t"), policy)
    assert not same(policy_status(3, None, 10, 2, ready, policy, "t"), policy)
    assert not same(policy_status(3, "rev-a", 10, 3, ready, policy, "t"), policy)


def _policy_object(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "auth.nauthera.io/v1alpha1",
        "kind": "AuthPolicy",
        "metadata": {"name": "p", "namespace": "security", "uid": "u", "managedFields": [{"manager": "x"}]},
        "spec": spec,
        "status": {"conditions": []},
    }


def test_cluster_policies_get_compile_diagnostics_as_spec_paths() -> None:
    checked = check_object(
        _policy_object(
            {
                "token": {"refreshTokenTTL": "7d"},
                "redirectUris": {
                    "allowedHosts": ["ok.example.com", "https://x.example.com"],
                    "allowLoopback": True,
                },
                "targets": {"clientSelector": {"matchExpressions": [{"key": "env", "operator": "In"}]}},
            }
        )
    )
    assert checked.id == "security/p" and not checked.ok
    assert checked.errors == (
        "spec.redirectUris.allowedHosts[1]: allowedHosts entry 'https://x.example.com' is a URL; "
        "write only the host name, like 'login.example.com'",
        "spec.targets.clientSelector.matchExpressions[0]: matchExpressions[0]: operator In needs a non-empty "
        "values list",
        "spec.token.refreshTokenTTL: token.refreshTokenTTL '7d' is not a valid duration: it has unknown "
        'unit "d" (use ns, us, ms, s, m or h; there is no d); Go durations have no days: write "168h"',
    )
    assert checked.warnings == (
        "spec.redirectUris.allowLoopback: allowLoopback only relaxes requireHttps, "
        "which this policy does not set",
    )
    assert check_object(_policy_object({"allowedScopes": ["openid"]})).ok


def test_the_webhook_answers_admission_reviews() -> None:
    request = {"uid": "42", "operation": "CREATE", "object": _policy_object({"token": {"idTokenTTL": "0s"}})}
    answer = review(request)
    assert answer["uid"] == "42" and answer["allowed"] is False
    assert answer["status"]["message"] == (
        "AuthPolicy security/p is invalid: "
        "spec.token.idTokenTTL: token.idTokenTTL '0s' must be greater than zero"
    )
    assert review({**request, "object": _policy_object({})}) == {"uid": "42", "allowed": True}
    assert review({**request, "operation": "DELETE"})["allowed"] is True


def test_a_folder_keeps_file_positions_and_reports_duplicates(tmp_path: Path) -> None:
    document = {
        "apiVersion": "auth.nauthera.io/v1alpha1",
        "kind": "AuthPolicy",
        "metadata": {"name": "p", "namespace": "s"},
    }
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({**document, "spec": {"token": {"idTokenTTL": "1d"}}}))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({**document, "spec": {}}))
    checked, loose = check_folder([tmp_path])
    assert [c.id for c in checked] == ["s/p"]
    assert checked[0].errors[0].startswith(f"{tmp_path / 'a.yaml'}:")
    assert [d.code for d in loose] == ["duplicate-policy"]


def test_the_queue_keeps_the_latest_change_per_object_and_bounds_what_waits() -> None:
    queue = ChangeQueue(capacity=2)
    for generation in range(5):
        queue.put(Change(AUTHCLIENTS, "a/x", {"metadata": {"generation": generation}}))
    queue.put(Change(AUTHCLIENTS, "a/y", None))
    blocked = threading.Thread(target=queue.put, args=(Change(AUTHCLIENTS, "a/z", None),))
    blocked.start()
    time.sleep(0.2)
    assert blocked.is_alive(), "a third distinct object must wait while two are queued"
    batch = queue.take(timeout=1)
    assert [(c.key, c.obj) for c in batch] == [("a/x", {"metadata": {"generation": 4}}), ("a/y", None)]
    assert queue.coalesced == 4
    blocked.join(timeout=5)
    assert [c.key for c in queue.take(timeout=1)] == ["a/z"]
    assert queue.take(timeout=0.05) == []


@pytest.fixture(scope="module")
def clients() -> list[dict[str, Any]]:
    examples = [yaml.safe_load(p.read_text()) for p in sorted((EXAMPLES / "clients").glob("*.yaml"))]
    return examples + [generated_client(i, [*EXAMPLE_NAMESPACES, "elsewhere"], seed=3) for i in range(400)]


def test_the_targets_prefilter_never_misses_a_policy_that_governs(
    compiled_examples: Compiled, clients: list[dict[str, Any]]
) -> None:
    """Every policy OPA says governs a client, the pre-filter keeps (over 400 generated clients)."""
    documents = [d for p in sorted((EXAMPLES / "policies").glob("*.yaml")) for d in load_file(p).documents]
    policies = {p.id: p for p in (build_policy(d) for d in classify(documents).policies)}
    decisions = evaluate(compiled_examples.bundle, clients)
    governed = sum(len(d["policies"]) for d in decisions)
    assert governed > 300, governed
    kept = excluded = 0
    for client, decision in zip(clients, decisions, strict=True):
        for ident, policy in policies.items():
            if ident in decision["policies"]:
                assert may_govern(policy, client), (ident, client["metadata"])
            kept += may_govern(policy, client)
            excluded += not may_govern(policy, client)
    assert excluded > kept  # and it does filter: most pairs are excluded


def test_the_commands_refuse_bad_input_with_exit_code_2(cli: Any, tmp_path: Path) -> None:
    garbage = tmp_path / "kubeconfig"
    garbage.write_text("clusters: [not, a, kubeconfig\n")
    inventory = cli("inventory", "--kubeconfig", garbage)
    assert inventory.returncode == 2 and "nauthera: error: cannot load kubeconfig" in inventory.stderr
    assert "Traceback" not in inventory.stderr
    operator = cli(
        "operator", "--kubeconfig", garbage, "--store", tmp_path / "store", "--policies", tmp_path / "no"
    )
    assert operator.returncode == 2 and "is neither `cluster` nor a folder" in operator.stderr
    unreachable = tmp_path / "unreachable"
    unreachable.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    down = cli("inventory", "--kubeconfig", unreachable, "--format", "yaml")
    assert down.returncode == 2 and "Invalid value for '--format'" in down.stderr
    down = cli("inventory", "--kubeconfig", unreachable)
    assert down.returncode == 2 and "cannot reach the API server at https://127.0.0.1:1" in down.stderr

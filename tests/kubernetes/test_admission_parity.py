"""Parity through the API server: generated policy sets and clients (tests/targets/gatekeeper/corpus.py)
go through kube-apiserver with a server-side dry run, once admitted by the OPA webhook and once by
Gatekeeper, and each answer must render the client's offline OPA decision (`opa eval` on the same bundle,
one batch per policy set).

The corpus is kept to clients a cluster can hold at all: namespaces that are DNS labels and label
values Kubernetes accepts (the offline parity test in tests/targets/gatekeeper covers the rest).
Schema-invalid clients stay in: the API server must refuse them before admission, and OPA must call
them schema violations, since both use the same CRD schema.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from nauthera.compile.kubernetes import DNS_LABEL, MAX_NAMESPACE, valid_label_value
from nauthera.engines.check import evaluate

from ..harness.admission import (
    AdmissionEngine,
    Compiled,
    admit_through,
    compile_for_admission,
    dry_run_create,
)
from ..harness.controlplane import ControlPlane, ensure_namespaces
from ..targets.gatekeeper import corpus
from .expectations import constraint_names, mismatch

SEED = 20_260_401
SETS = 5
CLIENTS_PER_SET = 60
MIN_CASES = 200


def fits_a_cluster(client: dict[str, Any]) -> bool:
    """A namespace the API server can hold and label values it accepts (wrongly typed ones are schema
    violations of our own and stay in)."""
    labels = client["metadata"].get("labels") or {}
    valid_labels = all(not isinstance(v, str) or valid_label_value(v) for v in labels.values())
    namespace = client["metadata"]["namespace"]
    return bool(DNS_LABEL.match(namespace)) and len(namespace) <= MAX_NAMESPACE and valid_labels


@dataclass(frozen=True)
class PolicySet:
    index: int
    compiled: Compiled
    clients: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    probe: dict[str, Any]


@pytest.fixture(scope="module")
def policy_sets(cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> list[PolicySet]:
    root = tmp_path_factory.mktemp("parity")
    sets = []
    for index in range(SETS):
        rng = random.Random(SEED + index)
        policies = corpus.policy_set(rng, index)
        clients = [c for c in corpus.clients(rng, policies, CLIENTS_PER_SET) if fits_a_cluster(c)]
        source = root / f"set-{index}" / "source"
        source.mkdir(parents=True)
        for number, policy in enumerate(policies):
            (source / f"{number}.yaml").write_text(yaml.safe_dump(policy))
        compiled = compile_for_admission(source, root / f"set-{index}")
        decisions = evaluate(compiled.bundle, clients)
        # The route probe: a client this set denies for a reason other than its schema.
        probe = next(
            c
            for c, d in zip(clients, decisions, strict=True)
            if not d["allowed"] and all(v["field"] != "schema" for v in d["violations"])
        )
        sets.append(PolicySet(index, compiled, clients, decisions, probe))
    ensure_namespaces(cluster, {c["metadata"]["namespace"] for s in sets for c in s.clients})
    return sets


def _coverage(sets: list[PolicySet]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for decision in (d for s in sets for d in s.decisions):
        fields = {v["field"] for v in decision["violations"]}
        kind = (
            "schema"
            if "schema" in fields
            else "ungoverned"
            if "targets" in fields
            else "denied"
            if not decision["allowed"]
            else "warned"
            if decision["warnings"]
            else "allowed"
        )
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def test_the_corpus_reaches_every_kind_of_outcome(policy_sets: list[PolicySet]) -> None:
    kinds = _coverage(policy_sets)
    assert sum(kinds.values()) >= MIN_CASES, kinds
    assert all(kinds.get(k) for k in ("schema", "ungoverned", "denied", "warned", "allowed")), kinds


@pytest.mark.parametrize("engine_fixture", ["opa_webhook", "gatekeeper"])
def test_admission_answers_as_opa_decides(
    cluster: ControlPlane, policy_sets: list[PolicySet], engine_fixture: str, request: pytest.FixtureRequest
) -> None:
    engine: AdmissionEngine = request.getfixturevalue(engine_fixture)
    started = time.monotonic()
    cases, mismatches = 0, []
    session = cluster.session()
    for policy_set in policy_sets:
        admit_through(cluster, engine, policy_set.compiled, policy_set.probe)
        # Gatekeeper renders findings per Constraint; the OPA webhook as one message (expectations.py).
        names = constraint_names(policy_set.compiled) if engine_fixture == "gatekeeper" else None
        for client, decision in zip(policy_set.clients, policy_set.decisions, strict=True):
            problem = mismatch(engine.name, dry_run_create(cluster, client, session), decision, names)
            if problem:
                mismatches.append(f"set {policy_set.index} {json.dumps(client)}:\n  {problem}")
            cases += 1
    session.close()
    print(f"\n{engine.name}: {cases} cases agree with OPA in {time.monotonic() - started:.1f} s")
    assert cases >= MIN_CASES
    assert not mismatches, f"{len(mismatches)} of {cases} differ:\n" + "\n".join(mismatches[:10])

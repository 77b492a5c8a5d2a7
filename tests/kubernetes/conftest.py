"""Routing fixtures: which engine admits AuthClients for a test, with the example policies loaded.

Each fixture loads the examples into its engine, makes that engine's webhook configuration the only
one (or removes them all) and waits until a probe shows the route took effect: the ungoverned example
client, which the example policies deny, is denied by that engine (or, without a webhook, created).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from nauthera.engines.check import evaluate

from ..conftest import EXAMPLES
from ..harness.admission import Compiled, admit_through, denial_probe, route_admission
from ..harness.controlplane import ControlPlane, ensure_namespaces
from ..harness.examples import expected_outcomes
from ..harness.gatekeeper import Gatekeeper
from ..harness.opa_webhook import OpaWebhook

UNGOVERNED = "ungoverned-client.yaml"


def example_clients() -> dict[str, dict[str, Any]]:
    """File name → AuthClient, for every file EXPECTED.md lists."""
    return {
        name: yaml.safe_load((EXAMPLES / "clients" / name).read_text(encoding="utf-8"))
        for name in expected_outcomes()
    }


@pytest.fixture(scope="session")
def example_decisions(compiled_examples: Compiled) -> dict[str, dict[str, Any]]:
    """File name → the decision of its client from `opa eval` on the same bundle (no cluster)."""
    clients = example_clients()
    return dict(zip(clients, evaluate(compiled_examples.bundle, list(clients.values())), strict=True))


@pytest.fixture(scope="session")
def example_namespaces(cluster: ControlPlane) -> None:
    ensure_namespaces(cluster, [c["metadata"]["namespace"] for c in example_clients().values()])


@pytest.fixture
def opa_admission(
    cluster: ControlPlane, opa_webhook: OpaWebhook, compiled_examples: Compiled, example_namespaces: None
) -> OpaWebhook:
    """AuthClients are admitted by the OPA webhook, running the example policies."""
    admit_through(cluster, opa_webhook, compiled_examples, example_clients()[UNGOVERNED])
    return opa_webhook


@pytest.fixture
def gatekeeper_admission(
    cluster: ControlPlane, gatekeeper: Gatekeeper, compiled_examples: Compiled, example_namespaces: None
) -> Gatekeeper:
    """AuthClients are admitted by Gatekeeper, enforcing the example policies' constraints."""
    admit_through(cluster, gatekeeper, compiled_examples, example_clients()[UNGOVERNED])
    return gatekeeper


@pytest.fixture
def no_admission(cluster: ControlPlane, example_namespaces: None) -> ControlPlane:
    """No admission webhook: AuthClients are only validated against the CRD schema."""
    route_admission(cluster, None, denial_probe(cluster, example_clients()[UNGOVERNED], None))
    return cluster


def path_of(file: str) -> Path:
    return EXAMPLES / "clients" / file

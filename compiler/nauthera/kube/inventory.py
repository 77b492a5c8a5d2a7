"""`nauthera inventory`: every AuthClient with its governing policies, compliance and findings, and every
AuthPolicy with its governed and violating counts, as the operator recorded them in status."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nauthera.kube.client import AUTHCLIENTS, AUTHPOLICIES, KubeClient, object_key
from nauthera.kube.status import COMPLIANT, FINDING_LISTS, READY


def _condition(status: Mapping[str, Any], kind: str) -> dict[str, Any]:
    for entry in status.get("conditions") or []:
        if isinstance(entry, dict) and entry.get("type") == kind:
            return entry
    return {}


@dataclass(frozen=True)
class Inventory:
    clients: list[dict[str, Any]]
    policies: list[dict[str, Any]]

    @property
    def non_compliant(self) -> list[dict[str, Any]]:
        """Clients not known to comply: False, or no current status yet (an audit fails closed)."""
        return [c for c in self.clients if c["compliant"] != "True"]

    def as_json(self) -> dict[str, Any]:
        return {
            "clients": self.clients,
            "policies": self.policies,
            "summary": {
                "clients": len(self.clients),
                "compliant": len(self.clients) - len(self.non_compliant),
                "nonCompliant": len(self.non_compliant),
                "policies": len(self.policies),
            },
        }


def _client_entry(obj: Mapping[str, Any]) -> dict[str, Any]:
    status = obj.get("status") or {}
    condition = _condition(status, COMPLIANT)
    generation = obj["metadata"].get("generation")
    current = status.get("observedGeneration") == generation
    entry: dict[str, Any] = {
        "client": object_key(obj),
        "compliant": condition.get("status", "Unknown") if current else "Unknown",
        "reason": condition.get("reason", "") if current else ("Stale" if status else "NoStatus"),
        "message": condition.get("message", ""),
        "policies": status.get("policies") or [],
        "revision": status.get("revision"),
    }
    for name in FINDING_LISTS:
        entry[name] = status.get(name) or []
    return entry


def _policy_entry(obj: Mapping[str, Any]) -> dict[str, Any]:
    status = obj.get("status") or {}
    condition = _condition(status, READY)
    return {
        "policy": object_key(obj),
        "ready": condition.get("status", "Unknown"),
        "reason": condition.get("reason", ""),
        "message": condition.get("message", ""),
        "governedClients": status.get("governedClients"),
        "violatingClients": status.get("violatingClients"),
        "revision": status.get("revision"),
        "enforcementAction": (obj.get("spec") or {}).get("enforcementAction", "deny"),
    }


def take_inventory(client: KubeClient) -> Inventory:
    clients, _ = client.list(AUTHCLIENTS)
    policies, _ = client.list(AUTHPOLICIES)
    return Inventory(
        sorted((_client_entry(c) for c in clients), key=lambda e: str(e["client"])),
        sorted((_policy_entry(p) for p in policies), key=lambda e: str(e["policy"])),
    )

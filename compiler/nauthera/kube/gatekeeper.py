"""`--enforce gatekeeper`: the generated ConstraintTemplates and Constraints, server-side applied under
the field manager `nauthera`; Constraints of deleted policies (labelled managed-by nauthera) are pruned."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from nauthera.kube.client import KubeClient, KubeError
from nauthera.targets.gatekeeper import CONSTRAINT_API, MANAGED_BY, TEMPLATE_API, GatekeeperObjects

log = logging.getLogger("nauthera.kube.gatekeeper")
_SELECTOR = ",".join(f"{key}={value}" for key, value in MANAGED_BY.items())


def _constraint_path(kind: str, name: str | None = None) -> str:
    path = f"/apis/{CONSTRAINT_API}/{kind.lower()}"
    return f"{path}/{name}" if name else path


def fingerprint(objects: GatekeeperObjects) -> str:
    payload = json.dumps([objects.templates, objects.constraints, objects.governed], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def apply_objects(client: KubeClient, objects: GatekeeperObjects) -> int:
    """Apply templates, then constraints; prune stale constraints. Returns how many were pruned.

    Raises KubeError when a constraint kind does not exist yet (Gatekeeper creates its CRD from the
    template a moment later): the caller tries again.
    """
    for name, template in sorted(objects.templates.items()):
        client.apply(f"/apis/{TEMPLATE_API}/constrainttemplates/{template['metadata']['name']}", template)
        log.debug("applied ConstraintTemplate %s", name)
    desired: dict[str, set[str]] = {}
    for constraint in [*objects.constraints.values(), objects.governed]:
        kind, name = constraint["kind"], constraint["metadata"]["name"]
        client.apply(_constraint_path(kind, name), constraint)
        desired.setdefault(kind, set()).add(name)
    pruned = 0
    for kind in {t["spec"]["crd"]["spec"]["names"]["kind"] for t in objects.templates.values()}:
        listed: dict[str, Any] = client.request(
            "GET", _constraint_path(kind), query={"labelSelector": _SELECTOR}
        )
        for item in listed.get("items") or []:
            name = item["metadata"]["name"]
            if name not in desired.get(kind, set()):
                try:
                    client.request("DELETE", _constraint_path(kind, name))
                except KubeError as error:
                    if error.status != 404:
                        raise
                pruned += 1
                log.info("pruned %s %s (its AuthPolicy is gone)", kind, name)
    return pruned

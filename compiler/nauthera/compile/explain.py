"""`nauthera explain`: each policy's effective constraints after baselines, and where each came from.

What a reviewer of a policy change wants to see: the constraints that will be enforced, which of them
a baseline brought, where an explicit field tightened a baseline, and where an explicit value has no
effect because the baseline is stricter.
"""

from __future__ import annotations

from typing import Any

from nauthera.compile.baselines import Constraint
from nauthera.compile.model import Policy


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def constraint_json(constraint: Constraint) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "field": constraint.path,
        "value": _plain(constraint.value),
        "origin": constraint.origin,
    }
    if constraint.explicit is not None:
        doc["explicit"] = _plain(constraint.explicit)
    if constraint.from_baselines is not None:
        doc["baseline"] = _plain(constraint.from_baselines)
        doc["baselines"] = list(constraint.baselines)
    overridden = constraint.without_effect()
    if overridden is not None:
        doc["no_effect"] = _plain(overridden)
    return doc


def explain_policy(policy: Policy) -> dict[str, Any]:
    """One policy's effective constraints in SPEC order (JSON-ready)."""
    return {
        "policy": policy.id,
        "source": f"{policy.position.file}:{policy.position.line}",
        "enforcementAction": policy.enforcement_action,
        "baselines": list(policy.baselines),
        "constraints": [constraint_json(c) for c in policy.constraints],
    }


def explain(policies: list[Policy]) -> list[dict[str, Any]]:
    return [explain_policy(p) for p in sorted(policies, key=lambda p: p.id)]

"""Which existing clients a policy edit can affect, so that only those go back to OPA.

A client is affected when the edited policy governed it (its last decision lists the policy) or may
govern it now. The second half is a pre-filter over SPEC section 2's targets (application types,
namespace globs and exclusions, label selectors) that errs on the side of including a client: OPA
still decides every selected client, so a false positive costs one evaluation, never a wrong status.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nauthera.compile.model import Policy


def _labels_match(policy: Policy, labels: Mapping[str, Any]) -> bool:
    targets = policy.targets
    if any(labels.get(key) != value for key, value in targets.match_labels):
        return False
    for requirement in targets.match_expressions:
        present, value = requirement.key in labels, labels.get(requirement.key)
        if requirement.operator == "In" and not (present and value in requirement.values):
            return False
        if requirement.operator == "NotIn" and present and value in requirement.values:
            return False
        if requirement.operator == "Exists" and not present:
            return False
        if requirement.operator == "DoesNotExist" and present:
            return False
    return True


def may_govern(policy: Policy, client: Mapping[str, Any]) -> bool:
    """False only when the policy's targets certainly exclude the client."""
    metadata, spec = client.get("metadata"), client.get("spec")
    if not isinstance(metadata, Mapping) or not isinstance(spec, Mapping):
        return True
    namespace, labels = metadata.get("namespace"), metadata.get("labels") or {}
    app_type = spec.get("applicationType", "web")
    if not isinstance(namespace, str) or not isinstance(labels, Mapping) or not isinstance(app_type, str):
        return True
    targets = policy.targets
    if targets.application_types is not None and app_type not in targets.application_types:
        return False
    if targets.namespaces is not None and not targets.namespaces.matches(namespace):
        return False
    if targets.excluded_namespaces is not None and targets.excluded_namespaces.matches(namespace):
        return False
    return _labels_match(policy, labels)

"""Desired status of AuthClients and AuthPolicies (SPEC section 7), as pure functions of decisions.

Conditions follow Kubernetes conventions: one per type, status "True"/"False", a CamelCase reason, a
message, and a lastTransitionTime that moves only when the status does. Whatever is computed here is
compared with the observed status, and only a difference is written.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

COMPLIANT = "Compliant"
READY = "Ready"
#: The CRD caps each findings list; a client with more findings shows the first ones.
MAX_FINDINGS = 256
MAX_MESSAGE = 1024
FINDING_LISTS = ("violations", "warnings", "dryrun")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    kind: str,
    holds: bool,
    reason: str,
    message: str,
    generation: int | None,
    observed: Mapping[str, Any] | None,
    at: str,
) -> dict[str, Any]:
    """One condition; keeps the observed lastTransitionTime while its status stays the same."""
    status = "True" if holds else "False"
    previous = next(
        (
            c
            for c in (observed or {}).get("conditions") or []
            if isinstance(c, dict) and c.get("type") == kind
        ),
        None,
    )
    since = previous["lastTransitionTime"] if previous and previous.get("status") == status else at
    result: dict[str, Any] = {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": _one_line(message),
        "lastTransitionTime": since,
    }
    if generation is not None:
        result["observedGeneration"] = generation
    return result


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def compliance(decision: Mapping[str, Any]) -> tuple[bool, str, str]:
    """(compliant, reason, one-line message) of a decision document."""
    violations = decision.get("violations") or []
    if decision.get("allowed") and not violations:
        governing = decision.get("policies") or []
        message = (
            f"allowed by {', '.join(governing)}" if governing else "allowed (no governing policy needed)"
        )
        counts = {
            "warning": len(decision.get("warnings") or []),
            "dryrun finding": len(decision.get("dryrun") or []),
        }
        extra = [f"{n} {what}{'s' if n != 1 else ''}" for what, n in counts.items() if n]
        return True, COMPLIANT, message + (f" ({', '.join(extra)})" if extra else "")
    fields = {v.get("field") for v in violations}
    if fields == {"targets"}:
        reason = "Ungoverned"
    elif fields == {"schema"}:
        reason = "Invalid"
    else:
        reason = "PolicyViolation"
    return False, reason, "; ".join(str(v.get("message")) for v in violations) or "not allowed"


def _findings(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"policy": e.get("policy"), "field": e.get("field"), "message": e.get("message")}
        for e in entries[:MAX_FINDINGS]
    ]


def client_status(
    decision: Mapping[str, Any],
    generation: int,
    revision: str,
    observed: Mapping[str, Any] | None,
    at: str,
) -> dict[str, Any]:
    compliant, reason, message = compliance(decision)
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "revision": revision,
        "policies": sorted(decision.get("policies") or [])[:1024],
    }
    for name in FINDING_LISTS:
        status[name] = _findings(decision.get(name) or [])
    status["conditions"] = [condition(COMPLIANT, compliant, reason, message, generation, observed, at)]
    return status


def policy_status(
    generation: int,
    revision: str | None,
    governed: int,
    violating: int,
    ready: tuple[bool, str, str],
    observed: Mapping[str, Any] | None,
    at: str,
) -> dict[str, Any]:
    holds, reason, message = ready
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "governedClients": governed,
        "violatingClients": violating,
        "conditions": [condition(READY, holds, reason, message, generation, observed, at)],
    }
    if revision:
        status["revision"] = revision
    return status


def is_compliant(status: Mapping[str, Any] | None) -> bool | None:
    """The observed Compliant condition: True, False, or None when there is none yet."""
    for entry in (status or {}).get("conditions") or []:
        if isinstance(entry, dict) and entry.get("type") == COMPLIANT:
            return {"True": True, "False": False}.get(str(entry.get("status")))
    return None


def same(desired: Mapping[str, Any], observed: Mapping[str, Any] | None) -> bool:
    """Whether `observed` already says what `desired` says. `revision` alone does not count: a new
    revision that decides the same leaves a status alone, so one policy edit rewrites only the clients
    and policies it affects, not all 10,000 (the status keeps naming the revision that decided it)."""
    if observed is None:
        return False
    return {k: v for k, v in desired.items() if k != "revision"} == {
        k: v for k, v in observed.items() if k != "revision"
    } and ("revision" in desired) == ("revision" in observed)


def digest(status: Mapping[str, Any]) -> str:
    """What `same` compares, in 40 characters: everything but `revision` (and whether there is one)."""
    content = {key: value for key, value in status.items() if key != "revision"}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:32] + ("+rev" if "revision" in status else "")


def summary(status: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What the operator keeps of an observed AuthClient status: its conditions (transition times, the
    Compliant flip that triggers an Event) and a digest of the rest. At 10,000 clients that is tens of
    MiB less than every finding kept twice (once in the decision, once in the status)."""
    if status is None:
        return None
    return {"conditions": status.get("conditions") or [], "digest": digest(status)}

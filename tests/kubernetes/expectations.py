"""What the API server must answer for an AuthClient, derived from its offline OPA decision.

The offline decision (`opa eval` on the bundle, engines.check.evaluate) is the reference; each admission
path renders it its own way: the OPA webhook as SPEC section 6's message (rego_templates/admission.rego.j2),
Gatekeeper as one `[constraint] message` line per violation and per warning.
"""

from __future__ import annotations

from typing import Any

from ..harness.admission import Compiled, Outcome

PREFIX = "AuthClient denied by Nauthera: "
POLICY_ANNOTATION = "auth.nauthera.io/policy"


def labelled(finding: dict[str, Any]) -> str:
    """A finding as the OPA admission response shows it: `[policy field] message` (`[field] message`
    for the findings of no policy)."""
    where = f"{finding['policy']} {finding['field']}" if finding["policy"] else finding["field"]
    return f"[{where}] {finding['message']}"


def opa_denial(decision: dict[str, Any]) -> str:
    return PREFIX + "; ".join(labelled(v) for v in decision["violations"])


def constraint_names(compiled: Compiled) -> dict[str | None, str]:
    """Policy id → the name of its Constraint; None → the governed (fail-closed and schema) Constraint."""
    names: dict[str | None, str] = {}
    for constraint in compiled.constraints():
        policy = constraint["metadata"].get("annotations", {}).get(POLICY_ANNOTATION)
        names[policy] = constraint["metadata"]["name"]
    return names


def gatekeeper_lines(findings: list[dict[str, Any]], names: dict[str | None, str]) -> set[str]:
    """Gatekeeper's rendering: `[constraint] message`, one per finding (identical lines collapse)."""
    return {f"[{names[f['policy']]}] {f['message']}" for f in findings}


def mismatch(
    engine: str, outcome: Outcome, decision: dict[str, Any], names: dict[str | None, str] | None = None
) -> str | None:
    """Why `outcome` (through the webhook named `engine`) does not render `decision`, or None if it does.

    With `names`, the engine is Gatekeeper (its lines compared as sets); without, the OPA webhook (the
    exact message and warnings, in the decision's order).
    """
    if any(v["field"] == "schema" for v in decision["violations"]):
        # The API server validates the CRD schema before admission: the same schema the Rego checks.
        refused = outcome.refused_before_admission
        return None if refused else f"a schema-invalid client was not refused before admission: {outcome}"
    warnings: Any
    if names is None:
        warnings, found_warnings = tuple(labelled(w) for w in decision["warnings"]), outcome.warnings
    else:
        warnings, found_warnings = gatekeeper_lines(decision["warnings"], names), set(outcome.warnings)
    problems = [] if found_warnings == warnings else [f"warnings {found_warnings} != {warnings}"]
    if decision["allowed"]:
        if not outcome.allowed:
            problems.append(f"denied: {outcome.status} {outcome.message}")
    elif outcome.status != 403 or outcome.denied_by != engine:
        problems.append(f"not denied by {engine}: {outcome.status} {outcome.message}")
    elif names is None and outcome.webhook_message() != opa_denial(decision):
        problems.append(f"message {outcome.webhook_message()!r} != {opa_denial(decision)!r}")
    elif names is not None:
        lines, wanted = (
            set(outcome.webhook_message().split("\n")),
            gatekeeper_lines(decision["violations"], names),
        )
        if lines != wanted:
            problems.append(f"lines {lines} != {wanted}")
    return "; ".join(problems) or None

"""Who a bundle change affects: the same AuthClients decided by the real OPA under two bundles.

Each bundle is evaluated once for the whole batch (`nauthera.engines.check.evaluate`). A client is
- newly denied: allowed before, not allowed after (the rollout breaks it);
- newly allowed: not allowed before, allowed after;
- denied for different reasons: not allowed under both, but by a different set of (policy, field)
  violations (the developer's fix changes);
- unchanged otherwise (a changed warning or dryrun finding alone does not count).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nauthera.compile.diagnostics import Diagnostic, Level
from nauthera.engines.check import client_name, decide, load_clients

NEWLY_DENIED = "newly_denied"
NEWLY_ALLOWED = "newly_allowed"
REASONS_CHANGED = "reasons_changed"
UNCHANGED = "unchanged"
CATEGORIES = (NEWLY_DENIED, NEWLY_ALLOWED, REASONS_CHANGED, UNCHANGED)


def reasons(decision: dict[str, Any]) -> set[tuple[Any, Any]]:
    """What denies a client: its (policy, field) violations."""
    return {(v.get("policy"), v.get("field")) for v in decision.get("violations", []) if isinstance(v, dict)}


def categorise(before: dict[str, Any], after: dict[str, Any]) -> str:
    was, now = bool(before.get("allowed")), bool(after.get("allowed"))
    if was and not now:
        return NEWLY_DENIED
    if now and not was:
        return NEWLY_ALLOWED
    if not was and reasons(before) != reasons(after):
        return REASONS_CHANGED
    return UNCHANGED


@dataclass(frozen=True)
class ClientImpact:
    client: str
    source: str
    before: dict[str, Any]
    after: dict[str, Any]

    @property
    def category(self) -> str:
        return categorise(self.before, self.after)

    def as_json(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "source": self.source,
            "before": {
                "allowed": bool(self.before.get("allowed")),
                "violations": self.before.get("violations", []),
            },
            "after": {
                "allowed": bool(self.after.get("allowed")),
                "violations": self.after.get("violations", []),
            },
        }


@dataclass
class ImpactReport:
    before: str
    after: str
    clients: list[ClientImpact] = field(default_factory=list)
    notes: list[Diagnostic] = field(default_factory=list)

    def of(self, category: str) -> list[ClientImpact]:
        return [c for c in self.clients if c.category == category]

    @property
    def newly_denied(self) -> list[ClientImpact]:
        return self.of(NEWLY_DENIED)

    @property
    def input_errors(self) -> bool:
        return any(n.level is Level.ERROR for n in self.notes)

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "from": self.before,
            "to": self.after,
            "summary": {"clients": len(self.clients), **{c: len(self.of(c)) for c in CATEGORIES}},
        }
        for category in CATEGORIES[:3]:
            doc[category] = [c.as_json() for c in self.of(category)]
        return doc


def impact(
    before: Path, after: Path, paths: Sequence[Path], labels: tuple[str, str] | None = None
) -> ImpactReport:
    """Evaluate the AuthClients under `paths` against both bundles with the real OPA."""
    docs, notes = load_clients(paths)
    old, new = decide(before, docs), decide(after, docs)
    names = labels or (str(before), str(after))
    report = ImpactReport(before=names[0], after=names[1], notes=notes)
    report.clients = [
        ClientImpact(client_name(doc), f"{doc.file}:{doc.start.line}", b, a)
        for doc, b, a in zip(docs, old, new, strict=True)
    ]
    return report


def _violation_lines(decision: dict[str, Any]) -> list[str]:
    return [
        f"      {v.get('policy') or '-'} {v.get('field')}: {v.get('message')}"
        for v in decision.get("violations", [])
        if isinstance(v, dict)
    ]


def impact_text(report: ImpactReport) -> str:
    counts = {c: len(report.of(c)) for c in CATEGORIES}
    lines = [
        f"impact of {report.before} → {report.after} on {len(report.clients)} client"
        f"{'' if len(report.clients) == 1 else 's'}: {counts[NEWLY_DENIED]} newly denied, "
        f"{counts[NEWLY_ALLOWED]} newly allowed, {counts[REASONS_CHANGED]} denied for different reasons, "
        f"{counts[UNCHANGED]} unchanged"
    ]
    titles = {
        NEWLY_DENIED: "newly denied",
        NEWLY_ALLOWED: "newly allowed",
        REASONS_CHANGED: "denied for different reasons",
    }
    for category, title in titles.items():
        for item in report.of(category):
            lines.append(f"{title}: {item.client} ({item.source})")
            if category == NEWLY_DENIED:
                lines.append("    denied by:")
                lines.extend(_violation_lines(item.after))
            elif category == NEWLY_ALLOWED:
                lines.append("    was denied by:")
                lines.extend(_violation_lines(item.before))
            else:
                lines.append("    before:")
                lines.extend(_violation_lines(item.before))
                lines.append("    after:")
                lines.extend(_violation_lines(item.after))
    return "\n".join(lines) + "\n"

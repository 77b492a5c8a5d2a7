"""AuthPolicies as the compiler sees them: each checked on its own, diagnostics as `spec.path: message`.

A cluster object is exported to the document a user would keep in Git (apiVersion, kind, name,
namespace, spec) and loaded from text under a virtual path `cluster:NAMESPACE/NAME`, so validation
runs on a `SourceDocument` with positions exactly as `nauthera compile` does on a file. Positions are
then turned back into the JSON path they point at, which is what a `kubectl` user can find.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nauthera.compile.diagnostics import Diagnostic, Level, Position
from nauthera.compile.loading import JsonPath, SourceDocument, discover, load_file, load_text
from nauthera.compile.schema import API_VERSION, display_path
from nauthera.compile.validation import check_policy, classify, duplicate_diagnostics, policy_identity


def slim(doc: SourceDocument) -> SourceDocument:
    """The document without its per-node position tables, which only validation needs: what the model
    keeps (content and start) for 1,000 policies in a long-running operator."""
    return SourceDocument(doc.file, doc.index, doc.content, {(): (doc.start.line, doc.start.column)}, {})


@dataclass(frozen=True)
class CheckedPolicy:
    """One AuthPolicy document and what validation found; only documents without errors compile."""

    id: str
    document: SourceDocument | None
    errors: tuple[str, ...]
    warnings: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.document is not None and not self.errors


def exported(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The object as its author wrote it: what the API server adds (uid, status, ...) is left out."""
    metadata = obj.get("metadata") or {}
    document: dict[str, Any] = {
        "apiVersion": obj.get("apiVersion", API_VERSION),
        "kind": obj.get("kind", "AuthPolicy"),
        "metadata": {key: metadata[key] for key in ("name", "namespace") if key in metadata},
    }
    if "spec" in obj:
        document["spec"] = obj["spec"]
    return document


def _paths_by_position(doc: SourceDocument) -> dict[Position, JsonPath]:
    """Position → the deepest JSON path whose key or value starts there."""
    found: dict[Position, JsonPath] = {}
    for table in (doc.value_places, doc.key_places):
        for path, place in table.items():
            position = Position(doc.file, *place)
            if len(path) >= len(found.get(position, ())):
                found[position] = path
    return found


def spec_messages(doc: SourceDocument, diagnostics: Sequence[Diagnostic]) -> tuple[list[str], list[str]]:
    """Errors and warnings as `spec.path: message` (sorted by path), the way the webhook and the
    Invalid condition report them."""
    paths = _paths_by_position(doc)
    errors: list[str] = []
    warnings: list[str] = []
    for diagnostic in diagnostics:
        if diagnostic.level is Level.NOTE:
            continue
        path = paths.get(diagnostic.position)
        where = display_path(path) if path else str(diagnostic.position)
        line = f"{where}: {diagnostic.message}"
        (errors if diagnostic.level is Level.ERROR else warnings).append(line)
    return sorted(errors), sorted(warnings)


def check_object(obj: Mapping[str, Any]) -> CheckedPolicy:
    """Validate one AuthPolicy object from the API server (or an admission request)."""
    document = exported(obj)
    metadata = document["metadata"]
    label = f"cluster:{metadata.get('namespace', '')}/{metadata.get('name', '')}"
    loaded = load_text(json.dumps(document, indent=2, ensure_ascii=False), label)
    classified = classify(loaded.documents)
    ident = label.removeprefix("cluster:")
    if len(classified.policies) != 1:
        problems = [
            d.message for d in (*loaded.diagnostics, *classified.diagnostics) if d.level is Level.ERROR
        ]
        return CheckedPolicy(ident, None, tuple(problems or ["not an AuthPolicy"]), ())
    doc = classified.policies[0]
    errors, warnings = spec_messages(doc, [*loaded.diagnostics, *check_policy(doc)])
    return CheckedPolicy(ident, slim(doc), tuple(errors), tuple(warnings))


def check_folder(paths: Sequence[Path]) -> tuple[list[CheckedPolicy], list[Diagnostic]]:
    """Every AuthPolicy under `paths` checked on its own, plus the problems no single policy owns
    (unreadable YAML, unknown kinds). Diagnostics keep their `file:line:col`."""
    checked: list[CheckedPolicy] = []
    loose: list[Diagnostic] = []
    documents: list[SourceDocument] = []
    for file in discover(paths):
        loaded = load_file(file)
        classified = classify(loaded.documents)
        loose.extend(d for d in (*loaded.diagnostics, *classified.diagnostics) if d.level is not Level.NOTE)
        documents.extend(classified.policies)
    identities = [i for i in (policy_identity(doc) for doc in documents) if i is not None]
    duplicates = {d.position: d for d in duplicate_diagnostics(identities)}
    for doc in documents:
        identity = policy_identity(doc)
        ident = f"{identity.namespace}/{identity.name}" if identity else f"{doc.file}#{doc.index}"
        if identity is not None and identity.name_position in duplicates:
            loose.append(duplicates[identity.name_position])  # the first definition is the one checked
            continue
        problems = check_policy(doc)
        errors = [f"{d.position}: {d.message}" for d in problems if d.level is Level.ERROR]
        warnings = [f"{d.position}: {d.message}" for d in problems if d.level is Level.WARNING]
        checked.append(CheckedPolicy(ident, slim(doc), tuple(errors), tuple(warnings)))
    return checked, loose

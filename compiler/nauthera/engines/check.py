"""Evaluate AuthClient documents against a bundle with the real OPA engine, in one batch."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nauthera.compile.diagnostics import Diagnostic, Level, sorted_diagnostics
from nauthera.compile.loading import SourceDocument, load_paths
from nauthera.compile.validation import classify
from nauthera.engines.tools import run_tool
from nauthera.errors import ToolFailedError
from nauthera.targets.opa.bundle import open_nauthera_bundle

DECISION = "data.nauthera.authclient.decision"
_BATCH_QUERY = f"decisions := [d | some c in input.clients; d := {DECISION} with input as c]"


@dataclass(frozen=True)
class ClientResult:
    client: str
    source: str
    decision: dict[str, Any]

    @property
    def allowed(self) -> bool:
        return bool(self.decision.get("allowed"))

    def as_json(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "source": self.source,
            "allowed": self.allowed,
            "violations": self.decision.get("violations", []),
            "warnings": self.decision.get("warnings", []),
            "dryrun": self.decision.get("dryrun", []),
            "policies": self.decision.get("policies", []),
        }


def client_name(doc: SourceDocument) -> str:
    metadata = doc.content.get("metadata") if isinstance(doc.content, dict) else None
    metadata = metadata if isinstance(metadata, dict) else {}
    return f"{metadata.get('namespace', '?')}/{metadata.get('name', '?')}"


def evaluate(bundle: Path, clients: Sequence[Any]) -> list[dict[str, Any]]:
    """Decision documents for `clients`, in order, from one `opa eval` over the bundle."""
    open_nauthera_bundle(bundle)  # a stranger's .tar.gz is refused here, not half-evaluated by OPA
    if not clients:
        return []
    completed = run_tool(
        "opa",
        ["eval", "--bundle", str(bundle), "--stdin-input", "--format", "json", _BATCH_QUERY],
        stdin=json.dumps({"clients": list(clients)}),
    )
    if completed.returncode != 0:
        raise ToolFailedError(f"opa eval failed on {bundle}: {completed.stderr.strip() or completed.stdout}")
    try:
        bindings = json.loads(completed.stdout)["result"][0]["bindings"]
        decisions: list[dict[str, Any]] = bindings["decisions"]
    except (KeyError, IndexError, json.JSONDecodeError) as error:
        raise ToolFailedError(f"{bundle} is not a Nauthera bundle: {DECISION} is undefined") from error
    return decisions


def load_clients(paths: Sequence[Path]) -> tuple[list[SourceDocument], list[Diagnostic]]:
    """The AuthClient documents under `paths`, and every note or error about the rest (policies and
    other documents are skipped with a note). Shared by `check` and `impact`."""
    loaded = load_paths(paths)
    classified = classify(loaded.documents)
    notes = [*loaded.diagnostics, *classified.diagnostics]
    notes.extend(
        Diagnostic(Level.NOTE, d.start, "skipped", "skipped AuthPolicy: not a client")
        for d in classified.policies
    )
    return classified.clients, sorted_diagnostics(notes)


def _unreadable(doc: SourceDocument) -> dict[str, Any]:
    """A document that could not be read as written is denied by what is wrong with it, without
    asking OPA: what OPA would see is not what the author wrote."""
    return {
        "allowed": False,
        "violations": [
            {"policy": None, "field": "document", "message": f"{e.position}: {e.message} [{e.code}]"}
            for e in doc.errors
        ],
        "warnings": [],
        "dryrun": [],
        "policies": [],
    }


def decide(bundle: Path, docs: Sequence[SourceDocument]) -> list[dict[str, Any]]:
    """Decision documents for `docs`, in order: one `opa eval` for every readable document, and a denial
    for each document with an error (a duplicate key, a value that cannot be read)."""
    decided = iter(evaluate(bundle, [doc.content for doc in docs if not doc.errors]))
    return [_unreadable(doc) if doc.errors else next(decided) for doc in docs]


def check_clients(bundle: Path, paths: Sequence[Path]) -> tuple[list[ClientResult], list[Diagnostic]]:
    docs, notes = load_clients(paths)
    results = [
        ClientResult(client_name(doc), f"{doc.file}:{doc.start.line}", decision)
        for doc, decision in zip(docs, decide(bundle, docs), strict=True)
    ]
    return results, notes

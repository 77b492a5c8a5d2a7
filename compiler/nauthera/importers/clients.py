"""What every importer produces, and the one way imported clients become AuthClient documents.

An importer turns its input into `ImportedClient`s plus findings; `emit` names them (SPEC §9), builds
the AuthClient documents, holds back any that the AuthClient schema (derived from the CRD, as the API
server applies it) would refuse, and renders the rest as one multi-document YAML text in a stable order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from nauthera.compile.diagnostics import Diagnostic, Level, Position, sorted_diagnostics
from nauthera.compile.kubernetes import kubectl_yaml
from nauthera.compile.loading import SourceDocument
from nauthera.compile.mapping import SOURCE_ID_ANNOTATION
from nauthera.compile.schema import API_VERSION, load_schemas, validate_document
from nauthera.importers.jsoninput import JsonInput, read_json
from nauthera.importers.naming import NameRequest, assign_names

T = TypeVar("T")


@dataclass(frozen=True)
class ImportedClient:
    """One client read from the input, before it is named."""

    namespace: str
    #: The text `metadata.name` is made from, and what identifies the client in its source.
    name_source: str
    identity: str
    #: The value of the source-client-id annotation, when the source has an id.
    source_id: str | None
    labels: Mapping[str, str]
    spec: dict[str, Any]
    position: Position


@dataclass
class ImportResult:
    """Everything one import read: clients, findings, and files that could not be read as input."""

    clients: list[ImportedClient] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    #: Files that are not the input the command reads (not JSON, another shape): the import fails.
    unreadable: list[Diagnostic] = field(default_factory=list)
    files: int = 0
    skipped: int = 0


@dataclass(frozen=True)
class ImportOutput:
    """The AuthClient documents (sorted by namespace and name), their YAML, and every finding."""

    documents: list[dict[str, Any]]
    yaml: str
    diagnostics: list[Diagnostic]
    unreadable: list[Diagnostic]
    files: int
    skipped: int

    @property
    def failed(self) -> bool:
        """Some input could not be read at all: nothing is printed."""
        return bool(self.unreadable)

    @property
    def incomplete(self) -> bool:
        """Some clients could not be imported."""
        return any(d.level is Level.ERROR for d in self.diagnostics)


def authclient(name: str, client: ImportedClient) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": client.namespace}
    if client.source_id is not None:
        metadata["annotations"] = {SOURCE_ID_ANNOTATION: client.source_id}
    if client.labels:
        metadata["labels"] = dict(client.labels)
    return {"apiVersion": API_VERSION, "kind": "AuthClient", "metadata": metadata, "spec": client.spec}


def _schema_problems(document: dict[str, Any], client: ImportedClient) -> list[Diagnostic]:
    """Why the API server would refuse `document`, at the client's place in the input."""
    located = SourceDocument(
        client.position.file, 0, document, {(): (client.position.line, client.position.column)}, {}
    )
    return [
        Diagnostic(
            Level.ERROR,
            client.position,
            "not-importable",
            f"client {client.identity!r} cannot be imported: its AuthClient would not match the "
            f"AuthClient schema: {problem.message}",
        )
        for problem in validate_document(located, load_schemas()["AuthClient"])
    ]


def emit(result: ImportResult) -> ImportOutput:
    """Name, build, validate and render; nothing is rendered when some file was unreadable."""
    requests = [NameRequest(c.namespace, c.name_source, c.identity, c.position) for c in result.clients]
    names, naming = assign_names(requests)
    diagnostics = [*result.diagnostics, *naming]
    documents = []
    for name, client in zip(names, result.clients, strict=True):
        if name is None:
            continue
        document = authclient(name, client)
        problems = _schema_problems(document, client)
        diagnostics.extend(problems)
        if not problems:
            documents.append(document)
    documents.sort(key=lambda d: (d["metadata"]["namespace"], d["metadata"]["name"]))
    text = "" if result.unreadable else render(documents)
    return ImportOutput(
        documents if not result.unreadable else [],
        text,
        sorted_diagnostics(diagnostics),
        sorted_diagnostics(result.unreadable),
        result.files,
        result.skipped,
    )


def recognised(
    docs: Sequence[JsonInput],
    result: ImportResult,
    recognise: Callable[[JsonInput], T | None],
    shape_problem: Callable[[Any], str],
) -> Iterator[tuple[JsonInput, T]]:
    """Each document with what `recognise` finds in it; a document it does not recognise makes the
    import fail (`unreadable`), with `shape_problem` saying what was expected."""
    for doc in docs:
        result.files += 1
        found = recognise(doc)
        if found is None:
            result.unreadable.append(
                Diagnostic(Level.ERROR, doc.value_position(()), "wrong-shape", shape_problem(doc.value))
            )
            continue
        yield doc, found


#: An importer adds what it reads from the parsed files to the result.
Importer = Callable[[list[JsonInput], ImportResult], None]


def import_files(paths: Sequence[Path], importer: Importer) -> ImportOutput:
    """Read every file (all of them, so every unreadable one is reported), run `importer`, emit."""
    result = ImportResult()
    docs = []
    for path in paths:
        read = read_json(path)
        if isinstance(read, JsonInput):
            docs.append(read)
        else:
            result.files += 1
            result.unreadable.append(read)
    importer(docs, result)
    return emit(result)


def render(documents: Sequence[Mapping[str, Any]]) -> str:
    """One YAML stream, `---` before each document, as `kubectl apply -f` and `nauthera check` read."""
    return "".join("---\n" + kubectl_yaml(document).decode() for document in documents)

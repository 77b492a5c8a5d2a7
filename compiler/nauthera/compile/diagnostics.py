"""Findings about user input, collected rather than raised so users see every problem at once."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple


class CodeInfo(NamedTuple):
    """How code-scanning tools present a code (a SARIF rule): a readable name and a short description."""

    name: str
    description: str


#: Every code a diagnostic can carry. The README lists them all; a test checks both against the codes
#: in the source.
CODES: dict[str, CodeInfo] = {
    "yaml-syntax": CodeInfo("YamlSyntax", "The file is not valid YAML."),
    "yaml-duplicate-key": CodeInfo(
        "YamlDuplicateKey", "A mapping repeats a key; the document is not read as written."
    ),
    "yaml-key": CodeInfo("YamlKey", "A mapping key is not a string."),
    "yaml-value": CodeInfo("YamlValue", "A value cannot be read as its YAML tag, or has no JSON equivalent."),
    "yaml-merge-key": CodeInfo(
        "YamlMergeKey", "YAML merge keys (<<) are not supported; Kubernetes does not read them either."
    ),
    "yaml-too-large": CodeInfo(
        "YamlTooLarge", "A document expands to too many values (alias bombs) or nests too deeply."
    ),
    "encoding": CodeInfo("NotUtf8", "The file is not UTF-8."),
    "unknown-field": CodeInfo("UnknownField", "A field the CRD schema does not define."),
    "schema-type": CodeInfo("SchemaType", "A value has the wrong type for the CRD schema."),
    "schema-enum": CodeInfo("SchemaEnum", "A value is not one the CRD schema allows."),
    "schema-required": CodeInfo("SchemaRequired", "A field the CRD schema requires is missing."),
    "schema-maxItems": CodeInfo("SchemaMaxItems", "A list is longer than the CRD schema allows."),
    "schema-minItems": CodeInfo("SchemaMinItems", "A list is shorter than the CRD schema allows."),
    "schema-maxLength": CodeInfo("SchemaMaxLength", "A string is longer than the CRD schema allows."),
    "schema-minLength": CodeInfo("SchemaMinLength", "A string is shorter than the CRD schema allows."),
    "schema-pattern": CodeInfo(
        "SchemaPattern", "A string does not match the pattern the CRD schema requires."
    ),
    "duplicate-value": CodeInfo("DuplicateValue", "A list that is a set repeats a value."),
    "unknown-kind": CodeInfo(
        "UnknownKind", "A document of the auth.nauthera.io group has a kind this compiler does not know."
    ),
    "unknown-version": CodeInfo(
        "UnknownVersion",
        "A document of the auth.nauthera.io group has a version this compiler does not read.",
    ),
    "invalid-name": CodeInfo("InvalidName", "A name or namespace is not a valid Kubernetes name."),
    "invalid-duration": CodeInfo("InvalidDuration", "A duration is not a positive Go duration."),
    "duplicate-policy": CodeInfo(
        "DuplicatePolicy", "Two AuthPolicy documents have the same namespace and name."
    ),
    "selector": CodeInfo("InvalidSelector", "A label selector expression is malformed."),
    "host-pattern": CodeInfo("HostPattern", "An allowedHosts entry is not a host name pattern."),
    "scheme-pattern": CodeInfo("SchemePattern", "An allowedSchemes entry is not a URI scheme glob."),
    "unknown-baseline": CodeInfo("UnknownBaseline", "A baselines entry names no known baseline."),
    "unsatisfiable": CodeInfo(
        "UnsatisfiablePolicy", "A policy requires something it does not allow, so no client can satisfy it."
    ),
    "no-effect": CodeInfo("NoEffect", "A setting changes nothing as written."),
    "governs-nothing": CodeInfo("GovernsNothing", "A policy's targets match no client."),
    "no-policies": CodeInfo("NoPolicies", "The input holds no AuthPolicy, so every client is ungoverned."),
    "skipped": CodeInfo("SkippedDocument", "A document that is not for this command was skipped."),
    # `nauthera import` (docs/import.md)
    "not-json": CodeInfo("NotJson", "An import input is not JSON."),
    "wrong-shape": CodeInfo("WrongShape", "An import input or one of its fields has the wrong JSON shape."),
    "no-clients": CodeInfo("NoClients", "A realm export holds no clients."),
    "missing-client-id": CodeInfo("MissingClientId", "A Keycloak client has no clientId."),
    "attribute-value": CodeInfo("AttributeValue", "A client attribute the mapping cannot use as written."),
    "not-importable": CodeInfo(
        "NotImportable", "The AuthClient a client maps to would not match the AuthClient schema."
    ),
    "duplicate-client": CodeInfo("DuplicateClient", "The same client id appears twice in one namespace."),
    "renamed": CodeInfo("RenamedClient", "A client's name got a hash suffix to tell it from another."),
    "unknown-attribute": CodeInfo("UnknownAttribute", "A Keycloak attribute nauthera does not know."),
    "unknown-member": CodeInfo("UnknownMember", "An RFC 7591 member nauthera does not know."),
    "not-audited": CodeInfo("NotAudited", "A client setting the AuthClient cannot express."),
    "relative-redirect": CodeInfo("RelativeRedirect", "A relative redirect URI was kept as written."),
    "unnamed": CodeInfo("UnnamedClient", "Client metadata without client_name or client_id."),
}


def describe(code: str) -> CodeInfo:
    """A code's name and description (a schema keyword the table does not know yet still gets both)."""
    if code in CODES:
        return CODES[code]
    keyword = code.removeprefix("schema-")
    return CodeInfo(
        f"Schema{keyword[:1].upper()}{keyword[1:]}", f"A value breaks the CRD schema's {keyword} rule."
    )


class Level(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    NOTE = "note"


@dataclass(frozen=True, order=True)
class Position:
    """A 1-based place in a source file."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Diagnostic:
    """One problem (or note) found in the input, pointing at the offending key or value."""

    level: Level
    position: Position
    code: str
    message: str

    @property
    def sort_key(self) -> tuple[str, int, int, str, str]:
        return (self.position.file, self.position.line, self.position.column, self.code, self.message)


def has_errors(diagnostics: list[Diagnostic]) -> bool:
    return any(d.level is Level.ERROR for d in diagnostics)


def sorted_diagnostics(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    """Order diagnostics by place so output is stable and reads top to bottom."""
    return sorted(set(diagnostics), key=lambda d: d.sort_key)

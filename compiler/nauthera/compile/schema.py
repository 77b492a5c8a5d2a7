"""The CRDs under deploy/crds are the one source of truth for resource shapes.

From each CRD's structural schema we derive a strict JSON Schema (unknown fields rejected, as kubectl's
strict field validation does) that validates policies here and AuthClients inside OPA (`json.match_schema`).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, cast

import fastjsonschema
import yaml

from nauthera.compile.diagnostics import Diagnostic, Level
from nauthera.compile.loading import JsonPath, SourceDocument

if TYPE_CHECKING:
    import jsonschema

GROUP = "auth.nauthera.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

#: Only the parts of ObjectMeta we read are typed; the rest (uid, annotations, managedFields, ...) is
#: what the API server adds to every object, so it must not fail a document (OPA admission, Gatekeeper).
_METADATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "x-kubernetes-preserve-unknown-fields": True,
    "required": ["name", "namespace"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "namespace": {"type": "string", "minLength": 1},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
_JSON_TYPES = {
    "array": "a list",
    "object": "a mapping",
    "string": "a string",
    "boolean": "true or false",
    "integer": "an integer",
    "number": "a number",
    "null": "null",
}


@dataclass(frozen=True)
class ResourceSchema:
    """One kind's schema: the CRD's own and the strict JSON Schema derived from it."""

    kind: str
    openapi: Mapping[str, Any]
    strict: Mapping[str, Any]


def strict_json_schema(node: Mapping[str, Any]) -> dict[str, Any]:
    """Close objects that list their properties, make `set` lists unique, drop documentation keywords."""
    result: dict[str, Any] = {}
    for key, value in node.items():
        if key == "x-kubernetes-list-type" and value == "set":
            result["uniqueItems"] = True
        if key.startswith("x-kubernetes-") or key in ("description", "default"):
            continue
        if key == "properties":
            result[key] = {name: strict_json_schema(child) for name, child in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, Mapping):
            result[key] = strict_json_schema(value)
        else:
            result[key] = value
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        result.setdefault("additionalProperties", False)
    return result


#: `status` is written by the operator through the status subresource and never decides anything: a
#: document may carry one (an object exported from a cluster, an UPDATE under admission), and it is
#: neither validated nor shipped in the bundle's copy of the schema.
_STATUS_SCHEMA: dict[str, Any] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def _as_input(openapi: Mapping[str, Any]) -> dict[str, Any]:
    """The CRD schema as input to the compiler and the Rego: metadata checked (Kubernetes checks it
    in a cluster; outside one we check the parts we rely on), status accepted as is."""
    schema = dict(openapi)
    properties = {**schema.get("properties", {}), "metadata": _METADATA_SCHEMA}
    if "status" in properties:
        properties["status"] = _STATUS_SCHEMA
    schema["properties"] = properties
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    schema["properties"]["apiVersion"] = {"type": "string", "enum": [API_VERSION]}
    return schema


@cache
def load_schemas() -> dict[str, ResourceSchema]:
    """Read the packaged CRDs once; a CRD without a v1alpha1 schema is a packaging bug."""
    schemas: dict[str, ResourceSchema] = {}
    folder = resources.files("nauthera").joinpath("crds")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".yaml"):
            continue
        crd = yaml.safe_load(entry.read_text(encoding="utf-8"))
        kind = crd["spec"]["names"]["kind"]
        version = next(v for v in crd["spec"]["versions"] if v["name"] == VERSION)
        openapi = version["schema"]["openAPIV3Schema"]
        schemas[kind] = ResourceSchema(kind, openapi, strict_json_schema(_as_input(openapi)))
    return schemas


def client_json_schema() -> dict[str, Any]:
    """The AuthClient schema that the generated Rego evaluates with `json.match_schema`.

    (A rule table walked in plain Rego was tried instead: it cost 0.6 ms a decision against 0.35 ms.)
    """
    copied: dict[str, Any] = json.loads(json.dumps(load_schemas()["AuthClient"].strict))
    return copied


def display_path(path: Sequence[str | int]) -> str:
    """`spec.redirectUris.allowedHosts[0]`: the way a user navigates their YAML."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "(document)"


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f'; did you mean "{match[0]}"?' if match else ""


#: Longer strings are shown by their start and length: a message must stay one readable line.
_SHOWN_CHARACTERS = 64
#: Schema keywords whose failures carry a code of their own rather than `schema-<keyword>`.
_OWN_CODES = {"additionalProperties": "unknown-field", "uniqueItems": "duplicate-value"}


def schema_code(keyword: str) -> str:
    """The diagnostic code for a failed schema keyword."""
    return _OWN_CODES.get(keyword, f"schema-{keyword}")


def _quoted(text: str) -> str:
    if len(text) > _SHOWN_CHARACTERS:
        return f'{json.dumps(text[:16])[:-1]}…" ({len(text)} characters)'
    return json.dumps(text)


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _quoted(value)
    if value is None:
        return "null"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return str(value)


def _schema_diagnostics(error: jsonschema.ValidationError, doc: SourceDocument) -> Iterator[Diagnostic]:
    path: JsonPath = tuple(error.absolute_path)
    where = display_path(path)
    # jsonschema types these as possibly unset; a reported error always carries them.
    validator, expected = str(error.validator), cast(Any, error.validator_value)
    schema = cast(Any, error.schema)
    if validator == "additionalProperties" and isinstance(error.instance, dict):
        known = sorted(schema.get("properties", {}))
        for extra in sorted(set(error.instance) - set(known)):
            hint = did_you_mean(extra, known) or (f" (known fields: {', '.join(known)})" if known else "")
            yield Diagnostic(
                Level.ERROR,
                doc.key_position((*path, extra)),
                schema_code(validator),
                f'unknown field "{extra}" in {where}{hint}',
            )
        return
    position = doc.value_position(path)
    if validator == "type":
        wanted = " or ".join(
            _JSON_TYPES.get(t, t) for t in ([expected] if isinstance(expected, str) else expected)
        )
        message = f"{where} must be {wanted}, not {_describe(error.instance)}"
        yield Diagnostic(Level.ERROR, position, schema_code(validator), message)
    elif validator == "enum":
        choices = [str(c) for c in expected]
        hint = did_you_mean(str(error.instance), choices)
        message = f"{where}: {_describe(error.instance)} is not one of {', '.join(choices)}{hint}"
        yield Diagnostic(Level.ERROR, position, schema_code(validator), message)
    elif validator == "uniqueItems" and isinstance(error.instance, list):
        seen: dict[str, int] = {}
        for index, item in enumerate(error.instance):
            marker = json.dumps(item, sort_keys=True)
            if marker in seen:
                yield Diagnostic(
                    Level.ERROR,
                    doc.value_position((*path, index)),
                    schema_code(validator),
                    f"{where} lists {_describe(item)} twice (also at index {seen[marker]}); "
                    "remove the repeat",
                )
            seen.setdefault(marker, index)
    elif validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        yield Diagnostic(
            Level.ERROR,
            position,
            schema_code(validator),
            f'{where} is missing the required field "{missing}"',
        )
    else:
        size = _size_message(validator, error.instance, expected)
        if size:
            message = f"{where} {size}"
        elif validator == "pattern":
            message = f"{where} {_describe(error.instance)} does not match the pattern {expected}"
        else:
            message = (
                f"{where}: {_describe(error.instance)} does not satisfy {validator} {json.dumps(expected)}"
            )
        yield Diagnostic(Level.ERROR, position, schema_code(validator), message)


#: Size keywords: what to say about the value, and about the limit.
_SIZES = {
    "maxItems": ("has {} items", "at most {} are allowed"),
    "minItems": ("has {} items", "at least {} are needed"),
    "maxLength": ("is {} characters long", "at most {} are allowed"),
    "minLength": ("is {} characters long", "at least {} are needed"),
    "maxProperties": ("has {} fields", "at most {} are allowed"),
    "minProperties": ("has {} fields", "at least {} are needed"),
}


def _size_message(validator: str, instance: Any, limit: Any) -> str | None:
    """`has 20000 items; at most 256 are allowed`, never the value itself (it can be megabytes)."""
    if validator not in _SIZES or not hasattr(instance, "__len__"):
        return None
    size, bound = _SIZES[validator]
    return f"{size.format(len(instance))}; {bound.format(limit)}"


@cache
def _compiled_check(kind: str) -> Callable[[Any], Any]:
    return cast(Callable[[Any], Any], fastjsonschema.compile(dict(load_schemas()[kind].strict)))


@cache
def _explaining_validator(kind: str) -> jsonschema.Draft7Validator:
    # Imported here: only a document that fails the compiled check needs it (5 MB a process saves).
    import jsonschema  # noqa: PLC0415

    return jsonschema.Draft7Validator(load_schemas()[kind].strict)


def validate_document(doc: SourceDocument, resource: ResourceSchema) -> list[Diagnostic]:
    """Every schema problem in one document, each pointing at its key or value.

    A compiled validator clears the common case (a valid document) about 20x faster; jsonschema, which
    reports every error with its path, runs only on documents that fail.
    """
    try:
        _compiled_check(resource.kind)(doc.content)
    except fastjsonschema.JsonSchemaException:
        pass
    else:
        return []
    errors = _explaining_validator(resource.kind).iter_errors(doc.content)
    return [d for error in errors for d in _schema_diagnostics(error, doc)]

"""Validate stage: classify documents, check them against the CRD schema, then what a schema can't say."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from nauthera.compile.baselines import BASELINES, CONSTRAINTS, Merge, effective_constraints, effective_spec
from nauthera.compile.diagnostics import Diagnostic, Level, Position
from nauthera.compile.durations import DurationError, parse_duration_ns
from nauthera.compile.kubernetes import DNS_LABEL, DNS_SUBDOMAIN, MAX_NAME, MAX_NAMESPACE
from nauthera.compile.loading import SourceDocument
from nauthera.compile.model import TTL_FIELDS
from nauthera.compile.patterns import text_globs
from nauthera.compile.schema import API_VERSION, GROUP, VERSION, did_you_mean, load_schemas, validate_document

# Host names whose labels are names or a whole-label `*`, or an IP literal such as `[::1]`.
_HOST_PATTERN = re.compile(
    r"^((\*|[a-z0-9_]([-a-z0-9_]*[a-z0-9_])?)(\.(\*|[a-z0-9_]([-a-z0-9_]*[a-z0-9_])?))*|\[[0-9a-f:.]+\])$"
)
_NANOS_PER_HOUR = 3600 * 10**9
#: A URI scheme (RFC 3986 section 3.1) in which `*` may stand for any run of characters.
_SCHEME_GLOB = re.compile(r"^[a-z*][a-z0-9+.*-]*$")


@dataclass
class Classified:
    """Documents sorted by kind; everything else has become a note or an error."""

    policies: list[SourceDocument] = field(default_factory=list)
    clients: list[SourceDocument] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)


def classify(documents: list[SourceDocument]) -> Classified:
    """Keep our group's documents; skip others with a note; reject unknown kinds and versions in our group."""
    result = Classified()
    kinds = sorted(load_schemas())
    for doc in documents:
        content = doc.content
        api_version = content.get("apiVersion") if isinstance(content, dict) else None
        kind = content.get("kind") if isinstance(content, dict) else None
        group, _, version = api_version.partition("/") if isinstance(api_version, str) else ("", "", "")
        if group != GROUP:
            what = f"{api_version} {kind}" if api_version else "document without apiVersion"
            result.diagnostics.append(
                Diagnostic(Level.NOTE, doc.start, "skipped", f"skipped {what}: not an {GROUP} resource")
            )
        elif version != VERSION:
            result.diagnostics.append(
                Diagnostic(
                    Level.ERROR,
                    doc.value_position(("apiVersion",)),
                    "unknown-version",
                    f'unknown version "{api_version}"; this compiler reads {API_VERSION}',
                )
            )
        elif kind == "AuthPolicy":
            result.policies.append(doc)
        elif kind == "AuthClient":
            result.clients.append(doc)
        else:
            result.diagnostics.append(
                Diagnostic(
                    Level.ERROR,
                    doc.value_position(("kind",)),
                    "unknown-kind",
                    f"unknown kind {kind!r} in {API_VERSION} (known: {', '.join(kinds)})"
                    + did_you_mean(str(kind), kinds),
                )
            )
    return result


def _duration_hint(text: str) -> str:
    match = re.fullmatch(r"\s*(\d+)\s*d(ays?)?\s*", text)
    if match:
        return f'; Go durations have no days: write "{int(match.group(1)) * 24}h"'
    return '; use Go syntax such as "15m", "1h30m" or "900s"'


def _metadata_diagnostics(doc: SourceDocument, _spec: dict[str, Any]) -> Iterator[Diagnostic]:
    metadata = doc.content["metadata"]
    checks = (
        ("name", DNS_SUBDOMAIN, MAX_NAME, "a DNS subdomain: lower-case alphanumerics, '-' and '.'"),
        ("namespace", DNS_LABEL, MAX_NAMESPACE, "a DNS label: lower-case alphanumerics and '-'"),
    )
    for key, pattern, limit, rule in checks:
        value = metadata[key]
        if len(value) > limit or not pattern.match(value):
            yield Diagnostic(
                Level.ERROR,
                doc.value_position(("metadata", key)),
                "invalid-name",
                f"metadata.{key} {value!r} must be {rule}, starting and ending with an alphanumeric, "
                f"at most {limit} characters",
            )


def _token_diagnostics(doc: SourceDocument, spec: dict[str, Any]) -> Iterator[Diagnostic]:
    for ttl in TTL_FIELDS:
        text = (spec.get("token") or {}).get(ttl)
        if text is None:
            continue
        position = doc.value_position(("spec", "token", ttl))
        try:
            nanos = parse_duration_ns(text)
        except DurationError as error:
            yield Diagnostic(
                Level.ERROR,
                position,
                "invalid-duration",
                f"token.{ttl} {text!r} is not a valid duration: it {error}{_duration_hint(text)}",
            )
            continue
        if nanos <= 0:
            yield Diagnostic(
                Level.ERROR, position, "invalid-duration", f"token.{ttl} {text!r} must be greater than zero"
            )


def _selector_diagnostics(doc: SourceDocument, spec: dict[str, Any]) -> Iterator[Diagnostic]:
    selector = (spec.get("targets") or {}).get("clientSelector") or {}
    for index, expression in enumerate(selector.get("matchExpressions") or ()):
        path = ("spec", "targets", "clientSelector", "matchExpressions", index)
        operator, values = expression["operator"], expression.get("values")
        if operator in ("In", "NotIn") and not values:
            yield Diagnostic(
                Level.ERROR,
                doc.value_position(path),
                "selector",
                f"matchExpressions[{index}]: operator {operator} needs a non-empty values list",
            )
        if operator in ("Exists", "DoesNotExist") and values:
            yield Diagnostic(
                Level.ERROR,
                doc.value_position((*path, "values")),
                "selector",
                f"matchExpressions[{index}]: operator {operator} takes no values; remove them",
            )


def _host_pattern_problem(host: str) -> tuple[Level, str] | None:
    """URLs and partial-label `*` have no defined meaning: errors. Odd characters are data: a warning."""
    if "://" in host or "/" in host:
        return Level.ERROR, "is a URL; write only the host name, like 'login.example.com'"
    if any("*" in label and label != "*" for label in host.split(".")):
        return Level.ERROR, "uses '*' inside a label; '*' must stand for a whole label, like '*.example.com'"
    if not _HOST_PATTERN.match(host.lower()):
        return Level.WARNING, "is not a host name (no port, no spaces or quotes), so it can never match"
    return None


def _redirect_diagnostics(doc: SourceDocument, spec: dict[str, Any]) -> Iterator[Diagnostic]:
    redirects = spec.get("redirectUris") or {}
    for index, host in enumerate(redirects.get("allowedHosts") or ()):
        problem = _host_pattern_problem(host)
        if problem:
            position = doc.value_position(("spec", "redirectUris", "allowedHosts", index))
            yield Diagnostic(
                problem[0], position, "host-pattern", f"allowedHosts entry {host!r} {problem[1]}"
            )
    effective = effective_spec(spec, effective_constraints(spec, _known_baselines(spec)))
    relaxes = effective.get("redirectUris") or {}
    if redirects.get("allowLoopback") and not relaxes.get("requireHttps"):
        yield Diagnostic(
            Level.WARNING,
            doc.key_position(("spec", "redirectUris", "allowLoopback")),
            "no-effect",
            "allowLoopback only relaxes requireHttps, which this policy does not set",
        )
    if (
        redirects.get("allowPrivateUseSchemes")
        and not relaxes.get("requireHttps")
        and relaxes.get("allowedHosts") is None
    ):
        yield Diagnostic(
            Level.WARNING,
            doc.key_position(("spec", "redirectUris", "allowPrivateUseSchemes")),
            "no-effect",
            "allowPrivateUseSchemes only relaxes requireHttps and allowedHosts, "
            "which this policy does not set",
        )
    for index, scheme in enumerate(redirects.get("allowedSchemes") or ()):
        position = doc.value_position(("spec", "redirectUris", "allowedSchemes", index))
        if not _SCHEME_GLOB.match(scheme.lower()):
            yield Diagnostic(
                Level.ERROR,
                position,
                "scheme-pattern",
                f"allowedSchemes entry {scheme!r} is not a URI scheme glob: write only the scheme, "
                "letters, digits, '+', '-', '.' and '*', starting with a letter (like 'com.example.*', "
                "without ':')",
            )
        elif "." not in scheme and "*" not in scheme:
            yield Diagnostic(
                Level.WARNING,
                position,
                "no-effect",
                f"allowedSchemes entry {scheme!r} has no '.', so it can never match a private-use scheme "
                "(RFC 8252 section 7.1); write a reverse domain name such as 'com.example.app'",
            )


def _known_baselines(spec: dict[str, Any]) -> list[str]:
    return [name for name in spec.get("baselines") or () if name in BASELINES]


def _baseline_diagnostics(doc: SourceDocument, spec: dict[str, Any]) -> Iterator[Diagnostic]:
    """Unknown baseline names, and explicit values a baseline overrides (SPEC §10's no-effect warning)."""
    known = sorted(BASELINES)
    for index, name in enumerate(spec.get("baselines") or ()):
        if name not in BASELINES:
            yield Diagnostic(
                Level.ERROR,
                doc.value_position(("spec", "baselines", index)),
                "unknown-baseline",
                f"unknown baseline {name!r} (known: {', '.join(known)}){did_you_mean(str(name), known)}",
            )
    try:
        constraints = effective_constraints(spec, _known_baselines(spec))
    except DurationError:
        return  # reported by the duration check
    for constraint in constraints:
        overridden = constraint.without_effect()
        if overridden is None or type(constraint.explicit) is not type(constraint.from_baselines):
            continue  # a value of the wrong type is the schema's finding
        by = constraint.baseline_label
        path = ("spec", *constraint.path.split("."))
        if isinstance(overridden, tuple):
            for entry in overridden:
                index = list(constraint.explicit).index(entry)
                yield Diagnostic(
                    Level.WARNING,
                    doc.value_position((*path, index)),
                    "no-effect",
                    f"{constraint.path} entry {entry!r} has no effect: {by} does not allow it, and an "
                    "explicit field can tighten a baseline but never loosen it",
                )
            continue
        if CONSTRAINTS[constraint.path] is Merge.MAXIMUM:
            stricter = f"the lower maximum {constraint.value!r}"
        else:
            stricter = _shown(constraint.value)
        yield Diagnostic(
            Level.WARNING,
            doc.value_position(path),
            "no-effect",
            f"{constraint.path}: {_shown(overridden)} has no effect: {by} sets {stricter}, and an explicit "
            "field can tighten a baseline but never loosen it",
        )


def _shown(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else repr(value)


def _scope_diagnostics(doc: SourceDocument, spec: dict[str, Any]) -> Iterator[Diagnostic]:
    allowed, required = spec.get("allowedScopes"), spec.get("requiredScopes")
    if allowed is None or not required:
        return
    matcher = text_globs(tuple(allowed))
    for index, scope in enumerate(required):
        if not matcher.matches(scope):
            yield Diagnostic(
                Level.WARNING,
                doc.value_position(("spec", "requiredScopes", index)),
                "unsatisfiable",
                f"required scope {scope!r} is not in allowedScopes, so no client "
                "can satisfy this policy; add it to allowedScopes",
            )


def _target_diagnostics(doc: SourceDocument, spec: dict[str, Any]) -> Iterator[Diagnostic]:
    if (spec.get("targets") or {}).get("applicationTypes") == []:
        yield Diagnostic(
            Level.WARNING,
            doc.value_position(("spec", "targets", "applicationTypes")),
            "governs-nothing",
            "an empty applicationTypes list matches no client; omit it to match every application type",
        )


_SEMANTIC_CHECKS = (
    _metadata_diagnostics,
    _token_diagnostics,
    _selector_diagnostics,
    _redirect_diagnostics,
    _baseline_diagnostics,
    _scope_diagnostics,
    _target_diagnostics,
)


def semantic_diagnostics(doc: SourceDocument) -> list[Diagnostic]:
    """What a schema can't say. Each check runs on its own so a schema error elsewhere hides nothing;
    a check whose part of the document has the wrong shape is skipped, as the schema reported it."""
    spec = doc.content.get("spec") or {}
    found: list[Diagnostic] = []
    for check in _SEMANTIC_CHECKS:
        try:
            found.extend(check(doc, spec))
        except (TypeError, AttributeError, KeyError, IndexError, DurationError):
            continue
    return found


def check_policy(doc: SourceDocument) -> list[Diagnostic]:
    """Every schema and semantic problem of one AuthPolicy document."""
    return [*validate_document(doc, load_schemas()["AuthPolicy"]), *semantic_diagnostics(doc)]


@dataclass(frozen=True)
class PolicyIdentity:
    """Who a policy document claims to be, for finding duplicates across files."""

    namespace: str
    name: str
    start: Position
    name_position: Position


def policy_identity(doc: SourceDocument) -> PolicyIdentity | None:
    metadata = doc.content.get("metadata")
    if not isinstance(metadata, dict):
        return None
    namespace, name = metadata.get("namespace"), metadata.get("name")
    if not isinstance(namespace, str) or not isinstance(name, str):
        return None
    return PolicyIdentity(namespace, name, doc.start, doc.value_position(("metadata", "name")))


def duplicate_diagnostics(identities: Iterable[PolicyIdentity]) -> list[Diagnostic]:
    """An error at every repeat of a namespace/name, naming where it was first defined."""
    first_seen: dict[tuple[str, str], PolicyIdentity] = {}
    found = []
    for identity in identities:
        key = (identity.namespace, identity.name)
        if key in first_seen:
            found.append(
                Diagnostic(
                    Level.ERROR,
                    identity.name_position,
                    "duplicate-policy",
                    f"AuthPolicy {key[0]}/{key[1]} is already defined at {first_seen[key].start}; "
                    "rename or remove one of them",
                )
            )
        first_seen.setdefault(key, identity)
    return found

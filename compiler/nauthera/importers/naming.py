"""Names for imported clients (SPEC §9): source ids made into Kubernetes names, collisions told apart.

`dns_name` is also implemented by the registration decision (`registration.rego.j2`); both replace
every character outside `[A-Za-z0-9.-]` before lower-casing, so the result is plain ASCII whatever the
input and OPA's Unicode case rules cannot make the two differ.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from nauthera.compile.diagnostics import Diagnostic, Level, Position
from nauthera.compile.kubernetes import MAX_NAME, MAX_NAMESPACE
from nauthera.compile.mapping import HASH_LENGTH, NAME_FALLBACK_PREFIX, NAMESPACE_FALLBACK_PREFIX

_OUTSIDE_NAME = re.compile(r"[^A-Za-z0-9.-]")
_OUTSIDE_NAMESPACE = re.compile(r"[^A-Za-z0-9-]")


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LENGTH]


def dns_name(text: str) -> str:
    """`text` as a DNS-1123 subdomain (an object name), or "" when nothing of it is usable."""
    replaced = _OUTSIDE_NAME.sub("-", text).lower()
    labels = [label.strip("-") for label in replaced.split(".")]
    return ".".join(label for label in labels if label)[:MAX_NAME].rstrip("-.")


def dns_label(text: str) -> str:
    """`text` as a DNS-1123 label (a namespace), or "" when nothing of it is usable."""
    return _OUTSIDE_NAMESPACE.sub("-", text).lower().strip("-")[:MAX_NAMESPACE].rstrip("-")


def namespace_for(text: str) -> str:
    """A namespace from a realm name or `--namespace`: sanitised, or `ns-<hash>` if nothing is left."""
    return dns_label(text) or f"{NAMESPACE_FALLBACK_PREFIX}-{short_hash(text)}"


def _with_suffix(stem: str, key: str) -> str:
    stem = stem[: MAX_NAME - HASH_LENGTH - 1].rstrip("-.")
    return f"{stem}-{short_hash(key)}"


@dataclass(frozen=True)
class NameRequest:
    """One client to name: its namespace, the text its name comes from, and what identifies it."""

    namespace: str
    name_source: str
    identity: str
    position: Position


def assign_names(requests: Sequence[NameRequest]) -> tuple[list[str | None], list[Diagnostic]]:
    """A unique name per request (None for repeats of an identity in a namespace), and notes/errors.

    Every request whose source sanitises to a name no other one takes keeps that name. Where several
    do, the one whose source already *is* the name keeps it and the others get `-<hash of identity>`,
    so names do not depend on the order of the input. A second request with the same identity in the
    same namespace is an error: it is the same client twice.
    """
    names: list[str | None] = [None] * len(requests)
    diagnostics: list[Diagnostic] = []
    first_by_identity: dict[tuple[str, str], NameRequest] = {}
    groups: dict[tuple[str, str], list[int]] = {}
    for index, request in enumerate(requests):
        first = first_by_identity.setdefault((request.namespace, request.identity), request)
        if first is not request:
            diagnostics.append(
                Diagnostic(
                    Level.ERROR,
                    request.position,
                    "duplicate-client",
                    f"client {request.identity!r} is already imported into namespace "
                    f"{request.namespace!r} from {first.position}; import one of them, or give one "
                    "--namespace of its own",
                )
            )
            continue
        groups.setdefault((request.namespace, dns_name(request.name_source)), []).append(index)
    for (namespace, plain), distinct in groups.items():
        exact = [i for i in distinct if requests[i].name_source == plain]
        keeper = distinct[0] if len(distinct) == 1 else exact[0] if len(exact) == 1 else None
        for index in distinct:
            request = requests[index]
            if index == keeper and plain:
                names[index] = plain
                continue
            names[index] = _with_suffix(plain or NAME_FALLBACK_PREFIX, request.identity)
            reason = (
                f"sanitises to {plain!r} like another client in namespace {namespace!r}"
                if plain
                else "has no character usable in a Kubernetes name"
            )
            diagnostics.append(
                Diagnostic(
                    Level.NOTE,
                    request.position,
                    "renamed",
                    f"client {request.name_source!r} {reason}; named {names[index]!r}",
                )
            )
    diagnostics.extend(_clashes(requests, names))
    return names, diagnostics


def _clashes(requests: Sequence[NameRequest], names: list[str | None]) -> list[Diagnostic]:
    """Drop a client whose hashed name equals another one's own name (a SHA-256 prefix collision)."""
    seen: dict[tuple[str, str], int] = {}
    found = []
    for index, name in enumerate(names):
        if name is None:
            continue
        key = (requests[index].namespace, name)
        if key in seen:
            other = requests[seen[key]]
            found.append(
                Diagnostic(
                    Level.ERROR,
                    requests[index].position,
                    "duplicate-client",
                    f"client {requests[index].name_source!r} would be named {name!r} in namespace "
                    f"{key[0]!r}, like client {other.name_source!r} ({other.position}); rename one",
                )
            )
            names[index] = None
            continue
        seen[key] = index
    return found

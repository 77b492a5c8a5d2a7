"""Compare two bundles in policy terms: policies added, removed, and which constraint changed how.

A bundle carries each policy as the compiler's normalised parameters (`data.nauthera_data.policies`). This
module maps them back onto the AuthPolicy fields of the SPEC (`token.accessTokenTTL`, `allowedGrantTypes`,
`targets.namespaces`, ...) and compares their *effective* values: list order and duplicates do not matter,
`900s` equals `15m`, an unset boolean is `false`, and `redirectUris.allowWildcards` shows `true` unless
the policy forbids wildcards. Baselines are already expanded in the parameters, so a diff shows what a
baseline change means constraint by constraint.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nauthera.compile.durations import DurationError, parse_duration_ns
from nauthera.targets.opa.bundle import open_nauthera_bundle

TTL_FIELDS = ("token.accessTokenTTL", "token.refreshTokenTTL", "token.idTokenTTL")


def _patterns(value: Any) -> Any:
    return value.get("patterns") if isinstance(value, Mapping) else None


def _dig(params: Mapping[str, Any], *keys: str) -> Any:
    value: Any = params
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _ttl(name: str) -> Callable[[Mapping[str, Any]], Any]:
    return lambda p: _dig(p, "token", name, "max")


#: SPEC field → how to read its effective value from a policy's bundle parameters, in SPEC order.
FIELDS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "enforcementAction": lambda p: p.get("action", "deny"),
    "targets.applicationTypes": lambda p: _dig(p, "targets", "types"),
    "targets.namespaces": lambda p: _patterns(_dig(p, "targets", "namespaces")),
    "targets.excludedNamespaces": lambda p: _patterns(_dig(p, "targets", "excluded_namespaces")),
    "targets.clientSelector.matchLabels": lambda p: _dig(p, "targets", "match_labels") or None,
    "targets.clientSelector.matchExpressions": lambda p: _dig(p, "targets", "match_expressions") or None,
    **{name: _ttl(name) for name in TTL_FIELDS},
    "allowedGrantTypes": lambda p: p.get("allowed_grant_types"),
    "enforcePKCE": lambda p: bool(p.get("enforce_pkce", False)),
    "allowedScopes": lambda p: _patterns(p.get("allowed_scopes")),
    "requiredScopes": lambda p: p.get("required_scopes"),
    "allowedResponseTypes": lambda p: p.get("allowed_response_types"),
    "allowedTokenEndpointAuthMethods": lambda p: p.get("allowed_auth_methods"),
    "redirectUris.requireHttps": lambda p: bool(_dig(p, "redirects", "require_https")),
    "redirectUris.allowLoopback": lambda p: bool(_dig(p, "redirects", "allow_loopback")),
    "redirectUris.allowWildcards": lambda p: not _dig(p, "redirects", "forbid_wildcards"),
    "redirectUris.allowedHosts": lambda p: _patterns(_dig(p, "redirects", "allowed_hosts")),
    "redirectUris.allowPrivateUseSchemes": lambda p: bool(_dig(p, "redirects", "allow_private_use_schemes")),
    "redirectUris.allowedSchemes": lambda p: _patterns(_dig(p, "redirects", "allowed_schemes")),
    "redirectUris.forbidFragments": lambda p: bool(_dig(p, "redirects", "forbid_fragments")),
    "senderConstrainedTokens": lambda p: p.get("sender_constrained_tokens"),
    "requirePushedAuthorizationRequests": lambda p: bool(p.get("require_par", False)),
    "allowedSigningAlgorithms": lambda p: p.get("allowed_signing_algorithms"),
}
#: Effective values that constrain nothing; a new or removed policy lists only its other fields.
_NEUTRAL: dict[str, Any] = {
    "enforcePKCE": False,
    "redirectUris.requireHttps": False,
    "redirectUris.allowLoopback": False,
    "redirectUris.allowWildcards": True,
    "redirectUris.allowPrivateUseSchemes": False,
    "redirectUris.forbidFragments": False,
    "requirePushedAuthorizationRequests": False,
}


def constraints(params: Mapping[str, Any]) -> dict[str, Any]:
    """A policy's effective SPEC fields (None = not set)."""
    return {name: read(params) for name, read in FIELDS.items()}


def set_constraints(params: Mapping[str, Any]) -> dict[str, Any]:
    """Only the fields that constrain something: what a reviewer needs to see of a new policy."""
    return {
        name: value
        for name, value in constraints(params).items()
        if value is not None and _NEUTRAL.get(name, object()) != value
    }


def _semantic(name: str, value: Any) -> Any:
    """What equality means for a field: sets are unordered, durations compare by length."""
    if value is None:
        return None
    if name in TTL_FIELDS:
        try:
            return ("ns", parse_duration_ns(str(value)))
        except DurationError:
            return ("text", value)
    if isinstance(value, list):
        return sorted({json.dumps(v, sort_keys=True) for v in value})
    return json.dumps(value, sort_keys=True)


@dataclass(frozen=True)
class Change:
    """One field that differs: its value before and after (None = not set)."""

    field: str
    before: Any
    after: Any

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"field": self.field, "before": self.before, "after": self.after}
        if isinstance(self.before, list) or isinstance(self.after, list):
            before, after = self.before or [], self.after or []
            doc["added"] = [v for v in after if v not in before]
            doc["removed"] = [v for v in before if v not in after]
        return doc


@dataclass(frozen=True)
class PolicyChange:
    policy: str
    changes: tuple[Change, ...]

    def as_json(self) -> dict[str, Any]:
        return {"policy": self.policy, "constraints": [c.as_json() for c in self.changes]}


@dataclass(frozen=True)
class BundleSide:
    """What a diff needs of one bundle."""

    label: str
    revision: str | None
    compiler: str | None
    policies: Mapping[str, Mapping[str, Any]]
    settings: Mapping[str, Any]
    modules: Mapping[str, bytes]


@dataclass(frozen=True)
class BundleDiff:
    before: BundleSide
    after: BundleSide
    added: dict[str, dict[str, Any]] = field(default_factory=dict)
    removed: dict[str, dict[str, Any]] = field(default_factory=dict)
    changed: tuple[PolicyChange, ...] = ()
    unchanged: int = 0
    settings: tuple[Change, ...] = ()
    modules_added: tuple[str, ...] = ()
    modules_removed: tuple[str, ...] = ()
    modules_changed: tuple[str, ...] = ()

    @property
    def policies_differ(self) -> bool:
        return bool(self.added or self.removed or self.changed or self.settings)

    @property
    def differs(self) -> bool:
        return self.policies_differ or bool(
            self.modules_added or self.modules_removed or self.modules_changed
        )

    def as_json(self) -> dict[str, Any]:
        def side(s: BundleSide) -> dict[str, Any]:
            return {"bundle": s.label, "revision": s.revision, "compiler": s.compiler}

        return {
            "from": side(self.before),
            "to": side(self.after),
            "summary": {
                "added": len(self.added),
                "removed": len(self.removed),
                "changed": len(self.changed),
                "unchanged": self.unchanged,
            },
            "added": [{"policy": pid, "constraints": c} for pid, c in sorted(self.added.items())],
            "removed": [{"policy": pid, "constraints": c} for pid, c in sorted(self.removed.items())],
            "changed": [change.as_json() for change in self.changed],
            "settings": [change.as_json() for change in self.settings],
            "modules": {
                "added": list(self.modules_added),
                "removed": list(self.modules_removed),
                "changed": list(self.modules_changed),
            },
        }


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def load_side(path: Path, label: str | None = None) -> BundleSide:
    """Read the parts of a bundle file that a diff compares."""
    bundle = open_nauthera_bundle(path)
    nauthera = _object(_object(bundle.manifest.get("metadata")).get("nauthera"))
    return BundleSide(
        label=label or str(path),
        revision=bundle.revision,
        compiler=nauthera.get("compiler"),
        policies=_object(bundle.data.get("policies")),
        settings=_object(bundle.data.get("settings")),
        modules={name: body for name, body in bundle.files.items() if name.endswith(".rego")},
    )


def _changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[Change, ...]:
    return tuple(
        Change(name, before.get(name), after.get(name))
        for name in dict.fromkeys([*before, *after])
        if _semantic(name, before.get(name)) != _semantic(name, after.get(name))
    )


def diff_sides(before: BundleSide, after: BundleSide) -> BundleDiff:
    old, new = before.policies, after.policies
    changed = []
    unchanged = 0
    for pid in sorted(set(old) & set(new)):
        changes = _changes(constraints(old[pid]), constraints(new[pid]))
        if changes:
            changed.append(PolicyChange(pid, changes))
        else:
            unchanged += 1
    settings = _changes(
        {f"settings.{k}": v for k, v in before.settings.items()},
        {f"settings.{k}": v for k, v in after.settings.items()},
    )
    return BundleDiff(
        before=before,
        after=after,
        added={pid: set_constraints(new[pid]) for pid in sorted(set(new) - set(old))},
        removed={pid: set_constraints(old[pid]) for pid in sorted(set(old) - set(new))},
        changed=tuple(changed),
        unchanged=unchanged,
        settings=settings,
        modules_added=tuple(sorted(set(after.modules) - set(before.modules))),
        modules_removed=tuple(sorted(set(before.modules) - set(after.modules))),
        modules_changed=tuple(
            sorted(
                n for n in set(before.modules) & set(after.modules) if before.modules[n] != after.modules[n]
            )
        ),
    )


def diff_bundles(before: Path, after: Path, labels: tuple[str, str] | None = None) -> BundleDiff:
    """The policy-level difference between two bundle files."""
    names = labels or (str(before), str(after))
    return diff_sides(load_side(before, names[0]), load_side(after, names[1]))


def format_value(value: Any) -> str:
    """A constraint value as a reviewer reads it."""
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) if not isinstance(v, str) else v for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(", ", ": "))
    return str(value)


def diff_text(diff: BundleDiff) -> str:
    def name(side: BundleSide) -> str:
        return side.label if side.revision in (None, side.label) else f"{side.label} ({side.revision})"

    lines = [f"diff {name(diff.before)} → {name(diff.after)}"]
    lines.append(
        f"policies: {len(diff.added)} added, {len(diff.removed)} removed, {len(diff.changed)} changed, "
        f"{diff.unchanged} unchanged"
    )
    for pid, fields in diff.added.items():
        lines.append(f"+ {pid}")
        lines.extend(f"    {f}: {format_value(v)}" for f, v in fields.items())
    for pid, fields in diff.removed.items():
        lines.append(f"- {pid}")
        lines.extend(f"    {f}: {format_value(v)}" for f, v in fields.items())
    for policy in diff.changed:
        lines.append(f"~ {policy.policy}")
        lines.extend(f"    {_change_line(c)}" for c in policy.changes)
    if diff.settings:
        lines.append("settings:")
        lines.extend(f"    {_change_line(c)}" for c in diff.settings)
    modules = [
        *(f"+{m}" for m in diff.modules_added),
        *(f"-{m}" for m in diff.modules_removed),
        *(f"~{m}" for m in diff.modules_changed),
    ]
    if modules:
        compilers = (
            f" (compiler {diff.before.compiler} → {diff.after.compiler})"
            if diff.before.compiler != diff.after.compiler
            else ""
        )
        lines.append(f"rego modules: {', '.join(modules)}{compilers}")
    if not diff.differs:
        lines.append("no differences")
    return "\n".join(lines) + "\n"


def _change_line(change: Change) -> str:
    line = f"{change.field}: {format_value(change.before)} → {format_value(change.after)}"
    doc = change.as_json()
    extra = []
    if doc.get("added"):
        extra.append(
            "added " + ", ".join(format_value(v) if not isinstance(v, str) else v for v in doc["added"])
        )
    if doc.get("removed"):
        extra.append(
            "removed " + ", ".join(format_value(v) if not isinstance(v, str) else v for v in doc["removed"])
        )
    return line + (f" ({'; '.join(extra)})" if extra else "")

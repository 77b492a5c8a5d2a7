"""Baselines (SPEC §10): named rule sets as data, merged into a policy's own constraints by one function.

`BASELINES` is the one table that says what each name means; a new baseline is one entry there. A
baseline's constraints and the policy's explicit fields meet in `merge`: allowed lists intersect,
maxima take the minimum, requirement booleans take `true` and allowance booleans `false`, so an
explicit field can tighten a baseline but never loosen it. Every constraint remembers where it came
from (`Constraint`), which the messages of baseline findings, `no-effect` warnings and `nauthera
explain` all read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from nauthera.compile.durations import parse_duration_ns


def normalise_response_type(value: str) -> str:
    """`id_token code` and `code id_token` are the same OAuth response type."""
    return " ".join(sorted(set(value.split())))


class Merge(StrEnum):
    """How two values of one constraint combine into the stricter one."""

    ALLOWED = "allowed list"  # intersection
    MAXIMUM = "maximum"  # the smaller duration
    REQUIREMENT = "requirement"  # true wins
    ALLOWANCE = "allowance"  # false wins


#: Every AuthPolicy constraint in SPEC order, by its path under `spec`, with how it combines; `None`
#: for constraints no baseline may set (globs have no meaningful intersection).
CONSTRAINTS: dict[str, Merge | None] = {
    "token.accessTokenTTL": Merge.MAXIMUM,
    "token.refreshTokenTTL": Merge.MAXIMUM,
    "token.idTokenTTL": Merge.MAXIMUM,
    "allowedGrantTypes": Merge.ALLOWED,
    "enforcePKCE": Merge.REQUIREMENT,
    "allowedScopes": None,
    "requiredScopes": None,
    "allowedResponseTypes": Merge.ALLOWED,
    "allowedTokenEndpointAuthMethods": Merge.ALLOWED,
    "redirectUris.requireHttps": Merge.REQUIREMENT,
    "redirectUris.allowLoopback": Merge.ALLOWANCE,
    "redirectUris.allowPrivateUseSchemes": Merge.ALLOWANCE,
    "redirectUris.allowWildcards": Merge.ALLOWANCE,
    "redirectUris.allowedHosts": None,
    "redirectUris.allowedSchemes": None,
    "redirectUris.forbidFragments": Merge.REQUIREMENT,
    "senderConstrainedTokens": Merge.ALLOWED,
    "requirePushedAuthorizationRequests": Merge.REQUIREMENT,
    "allowedSigningAlgorithms": Merge.ALLOWED,
}

#: How list entries compare, where writing differs from meaning.
_ENTRY_KEYS: dict[str, Callable[[str], str]] = {"allowedResponseTypes": normalise_response_type}

GRANT_TYPES = (
    "authorization_code",
    "refresh_token",
    "client_credentials",
    "implicit",
    "password",
    "urn:ietf:params:oauth:grant-type:device_code",
    "urn:ietf:params:oauth:grant-type:token-exchange",
    "urn:ietf:params:oauth:grant-type:jwt-bearer",
)


@dataclass(frozen=True)
class Baseline:
    """A named rule set: the baselines it includes, then its own constraints (by SPEC path)."""

    includes: tuple[str, ...]
    constraints: Mapping[str, Any]


#: The one table of what each baseline means (SPEC §10).
BASELINES: dict[str, Baseline] = {
    # OAuth 2.1 draft, RFC 9700 (OAuth 2.0 Security Best Current Practice).
    "oauth2.1": Baseline(
        (),
        {
            "allowedGrantTypes": [g for g in GRANT_TYPES if g not in ("implicit", "password")],
            "enforcePKCE": True,
            "allowedResponseTypes": ["code"],
            "redirectUris.requireHttps": True,
            "redirectUris.allowLoopback": True,
            "redirectUris.allowPrivateUseSchemes": True,
            "redirectUris.forbidFragments": True,
            "redirectUris.allowWildcards": False,
        },
    ),
    # FAPI 2.0 Security Profile.
    "fapi2-security": Baseline(
        ("oauth2.1",),
        {
            "allowedGrantTypes": ["authorization_code", "refresh_token", "client_credentials"],
            "allowedTokenEndpointAuthMethods": [
                "private_key_jwt",
                "tls_client_auth",
                "self_signed_tls_client_auth",
            ],
            "senderConstrainedTokens": ["dpop", "mtls"],
            "requirePushedAuthorizationRequests": True,
            "allowedSigningAlgorithms": ["PS256", "ES256", "EdDSA"],
        },
    ),
}


def merge(path: str, first: Any, second: Any) -> Any:
    """The stricter combination of two values of one constraint; lists keep `first`'s order."""
    kind = CONSTRAINTS[path]
    if kind is Merge.ALLOWED:
        key = _ENTRY_KEYS.get(path, str)
        others = {key(v) for v in second}
        return [v for v in first if key(v) in others]
    if kind is Merge.MAXIMUM:
        return first if parse_duration_ns(first) <= parse_duration_ns(second) else second
    if kind is Merge.REQUIREMENT:
        return bool(first) or bool(second)
    if kind is Merge.ALLOWANCE:
        return bool(first) and bool(second)
    raise ValueError(f"{path} cannot be merged")


def _expand(name: str) -> dict[str, tuple[Any, str]]:
    """A baseline's constraints with its includes, each with the baseline name the user wrote."""
    baseline = BASELINES[name]
    found: dict[str, tuple[Any, str]] = {}
    for included in baseline.includes:
        for path, (value, _) in _expand(included).items():
            found[path] = (value, name)
    for path, value in baseline.constraints.items():
        found[path] = (merge(path, found[path][0], value) if path in found else value, name)
    return found


@dataclass(frozen=True)
class Constraint:
    """One effective constraint of a policy and where it came from.

    `explicit` is what the policy wrote (None: nothing), `from_baselines` the combined value of the
    baselines that set it (None: none did), `value` the effective one.
    """

    path: str
    value: Any
    explicit: Any
    from_baselines: Any
    baselines: tuple[str, ...]

    @property
    def origin(self) -> str:
        """explicit | baseline | same | tightened (explicit stricter) | overridden | combined."""
        if self.from_baselines is None:
            return "explicit"
        if self.explicit is None:
            return "baseline"
        by_explicit, by_baseline = self.value == self.explicit, self.value == self.from_baselines
        if by_explicit and by_baseline:
            return "same"
        if by_explicit:
            return "tightened"
        return "overridden" if by_baseline else "combined"

    @property
    def baseline_label(self) -> str | None:
        """How a finding names the baselines behind it; None when the explicit value alone decides."""
        if self.origin in ("explicit", "tightened"):
            return None
        word = "baseline" if len(self.baselines) == 1 else "baselines"
        return f"{word} {', '.join(self.baselines)}"

    def without_effect(self) -> Any:
        """The explicit entries (lists) or value the baselines override: what a `no-effect` warning
        names. None when everything written takes effect."""
        if self.origin not in ("overridden", "combined"):
            return None
        if isinstance(self.explicit, tuple):
            key = _ENTRY_KEYS.get(self.path, str)
            kept = {key(v) for v in self.value}
            return tuple(v for v in self.explicit if key(v) not in kept)
        return self.explicit


def lookup(spec: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted spec path, or None."""
    node: Any = spec
    for key in path.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def effective_constraints(spec: Mapping[str, Any], baselines: Sequence[str]) -> tuple[Constraint, ...]:
    """Every constraint the policy sets or its (known) baselines set, merged, in SPEC order."""
    from_baselines: dict[str, tuple[Any, list[str]]] = {}
    for name in baselines:
        if name not in BASELINES:
            continue
        for path, (value, source) in _expand(name).items():
            if path in from_baselines:
                combined, sources = from_baselines[path]
                from_baselines[path] = (merge(path, combined, value), [*sources, source])
            else:
                from_baselines[path] = (value, [source])
    found = []
    for path in CONSTRAINTS:
        explicit = lookup(spec, path)
        base, sources = from_baselines.get(path, (None, []))
        if explicit is None and base is None:
            continue
        if base is None:
            value = explicit
        elif explicit is None:
            value = base
        else:
            value = merge(path, explicit, base)
        found.append(
            Constraint(path, _frozen(value), _frozen(explicit), _frozen(base), tuple(dict.fromkeys(sources)))
        )
    return tuple(found)


def _frozen(value: Any) -> Any:
    """Lists as tuples, so constraints (and the policies holding them) stay hashable."""
    return tuple(value) if isinstance(value, list) else value


def effective_spec(spec: Mapping[str, Any], constraints: Sequence[Constraint]) -> dict[str, Any]:
    """`spec` with every constraint's effective value written at its path."""
    result = dict(spec)
    for constraint in constraints:
        *parents, last = constraint.path.split(".")
        node = result
        for key in parents:
            node[key] = dict(node.get(key) or {})
            node = node[key]
        node[last] = list(constraint.value) if isinstance(constraint.value, tuple) else constraint.value
    return result

"""Seeded generator of realistic AuthPolicy repositories and of the one AuthClient the benchmarks ask about.

Policy `i` depends only on the seed and `i`, so the repository of 10 policies is a prefix of the one of
10,000 and the benchmark client (in `team-0005`) meets the very same policy at every size. Most policies
target one exact team namespace (`team-0042`) with a mix of constraints; about one in fifty is
label-selected or targets a namespace glob, as a real security team's repository has a few of those.
None of the extra ones governs the benchmark client, so it is governed by exactly one policy.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

API_VERSION = "auth.nauthera.io/v1alpha1"
SEED = 20_260_806
#: The team whose client every decision measure asks about (present from 10 policies on).
CLIENT_TEAM = 5
_APP_TYPES = ("web", "spa", "native", "service", "device")
_WEB_GRANTS = ["authorization_code", "refresh_token"]
_GLOB_FAMILIES = ("platform", "ops", "data", "ml", "edge")
_LABEL_KEYS = ("compliance", "cost-center", "data-class")


def team(index: int) -> str:
    return f"team-{index:04d}"


def _exact_policy(index: int, rng: random.Random) -> dict[str, Any]:
    """A team's own policy: its namespace, web clients (plus sometimes spa), a mix of constraints."""
    ns = team(index)
    types = ["web"] if index == CLIENT_TEAM or rng.random() < 0.7 else ["web", "spa"]
    spec: dict[str, Any] = {
        "targets": {"applicationTypes": types, "namespaces": [ns]},
        "enforcementAction": "deny"
        if index == CLIENT_TEAM
        else rng.choice(["deny"] * 8 + ["warn", "dryrun"]),
        "token": {
            "accessTokenTTL": rng.choice(["5m", "10m", "15m", "30m", "1h"]),
            "refreshTokenTTL": rng.choice(["8h", "12h", "24h", "168h"]),
            "idTokenTTL": rng.choice(["5m", "10m"]),
        },
        "allowedGrantTypes": list(_WEB_GRANTS),
        "enforcePKCE": True,
        "allowedScopes": ["openid", "profile", "email", f"api:{ns}.*", "api:shared.read"],
        "requiredScopes": ["openid"],
        "allowedResponseTypes": ["code"],
        "allowedTokenEndpointAuthMethods": ["private_key_jwt", "client_secret_basic"],
        "redirectUris": {
            "requireHttps": True,
            "allowLoopback": False,
            "allowWildcards": False,
            "allowedHosts": [f"*.{ns}.example.com", f"{ns}.example.com"],
        },
    }
    # Not every team sets every constraint; drop a few (never for the benchmark client's policy,
    # whose grant types are what the change-to-enforcement measure edits).
    if index != CLIENT_TEAM:
        for optional in ("requiredScopes", "allowedResponseTypes", "allowedTokenEndpointAuthMethods"):
            if rng.random() < 0.3:
                del spec[optional]
        if rng.random() < 0.2:
            spec["token"].pop("idTokenTTL")
    return spec


def _glob_policy(index: int, rng: random.Random) -> dict[str, Any]:
    family = _GLOB_FAMILIES[index % len(_GLOB_FAMILIES)]
    return {
        "targets": {
            "applicationTypes": [rng.choice(_APP_TYPES)],
            "namespaces": [f"{family}-{index:04d}-*"],
            "excludedNamespaces": [f"{family}-{index:04d}-sandbox"],
        },
        "enforcementAction": "deny",
        "token": {"accessTokenTTL": "15m"},
        "allowedScopes": ["openid", f"api:{family}.*"],
    }


def _label_policy(index: int, rng: random.Random) -> dict[str, Any]:
    key = _LABEL_KEYS[index % len(_LABEL_KEYS)]
    return {
        "targets": {
            "clientSelector": {
                "matchLabels": {key: f"class-{index:04d}"},
                "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "staging"]}],
            }
        },
        "enforcementAction": rng.choice(["deny", "warn"]),
        "token": {"accessTokenTTL": "10m", "refreshTokenTTL": "12h"},
        "enforcePKCE": True,
    }


def policy(index: int, seed: int = SEED) -> dict[str, Any]:
    """AuthPolicy number `index` (a pure function of seed and index)."""
    rng = random.Random(seed * 1_000_003 + index)
    if index % 50 == 17:
        name, spec = f"glob-{index:04d}", _glob_policy(index, rng)
    elif index % 50 == 33:
        name, spec = f"label-{index:04d}", _label_policy(index, rng)
    else:
        name, spec = f"{team(index)}-clients", _exact_policy(index, rng)
    return {
        "apiVersion": API_VERSION,
        "kind": "AuthPolicy",
        "metadata": {"name": name, "namespace": "security"},
        "spec": spec,
    }


def policy_file(root: Path, index: int) -> Path:
    """Where policy `index` lives: one file per policy, in folders of 100 (like a GitOps repository)."""
    return root / f"group-{index // 100:03d}" / f"policy-{index:05d}.yaml"


def write_policy(root: Path, index: int, document: dict[str, Any]) -> Path:
    """Write one policy atomically (write beside, then rename), as editors and `git checkout` do.

    JSON is valid YAML and keeps the generator fast; the loader reads it as any YAML file.
    """
    target = policy_file(root, index)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = target.with_name(f".{target.name}.tmp")
    staged.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    staged.replace(target)
    return target


def generate(root: Path, count: int, seed: int = SEED) -> Path:
    """A repository of `count` policies under `root` (created; must not hold other policies)."""
    root.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        write_policy(root, index, policy(index, seed))
    return root


def client(grant_types: list[str] | None = None) -> dict[str, Any]:
    """The benchmark AuthClient in `team-0005`, compliant with that team's policy."""
    ns = team(CLIENT_TEAM)
    return {
        "apiVersion": API_VERSION,
        "kind": "AuthClient",
        "metadata": {"name": "shop-frontend", "namespace": ns, "labels": {"tier": "prod", "env": "prod"}},
        "spec": {
            "displayName": "Shop",
            "applicationType": "web",
            "authServerRef": {"name": "main", "namespace": "auth"},
            "redirectUris": [f"https://shop.{ns}.example.com/callback"],
            "grantTypes": grant_types or list(_WEB_GRANTS),
            "responseTypes": ["code"],
            "scopes": ["openid", "profile", f"api:{ns}.orders"],
            "tokenEndpointAuthMethod": "private_key_jwt",
            "pkce": {"required": True, "method": "S256"},
            "token": {"accessTokenTTL": "5m", "refreshTokenTTL": "8h", "idTokenTTL": "5m"},
        },
    }

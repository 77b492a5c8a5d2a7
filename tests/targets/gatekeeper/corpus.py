"""A seeded generator of AuthPolicy sets and AuthClients for OPA ↔ Gatekeeper parity.

`policy_set(rng, index)` returns full AuthPolicy documents and `clients(rng, policies, count)` full
AuthClient documents (some malformed on purpose). Values are drawn from small pools chosen to hit
every SPEC §2 rule and the edges of each one: TTLs (including invalid durations), grant types,
PKCE, scope globs with dots, required scopes, response types (order and repeats), auth methods
and their per-type defaults, https/loopback/native, wildcards, one-label host globs, upper-case
hosts, and strings that YAML readers type differently (`y`, `0o17`); and SPEC §10: private-use
schemes (with and without a `.`, upper-case, without a `/`) for native and other clients, scheme
globs, fragments, DPoP/mTLS binding, PAR, signing algorithms, and both baselines alone and with
explicit fields that tighten or (with a no-effect warning) try to loosen them. Targets cover every
dimension, including namespace globs Gatekeeper's `match` cannot express (`*` in the middle or at
the start), excluded namespaces, matchLabels, every matchExpressions operator, and label
selectors that are not valid Kubernetes selectors.

Clients are biased towards the policies' own targets (namespaces derived from the globs, labels
from the selectors) so that most are governed, and some are ungoverned on purpose.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from typing import Any

API_VERSION = "auth.nauthera.io/v1alpha1"
APP_TYPES = ["web", "spa", "native", "service", "device"]
GRANT_TYPES = [
    "authorization_code",
    "refresh_token",
    "client_credentials",
    "implicit",
    "password",
    "urn:ietf:params:oauth:grant-type:device_code",
    "urn:ietf:params:oauth:grant-type:token-exchange",
    "urn:ietf:params:oauth:grant-type:jwt-bearer",
]
AUTH_METHODS = [
    "none",
    "client_secret_basic",
    "client_secret_post",
    "client_secret_jwt",
    "private_key_jwt",
    "tls_client_auth",
    "self_signed_tls_client_auth",
]
RESPONSE_TYPES = [
    "code",
    "token",
    "id_token",
    "none",
    "code id_token",
    "id_token token",
    "code id_token token",
]
CLIENT_RESPONSE_TYPES = [*RESPONSE_TYPES, "id_token code", "code code", "token id_token code"]
TTL_FIELDS = ["accessTokenTTL", "refreshTokenTTL", "idTokenTTL"]
POLICY_DURATIONS = ["15m", "1h", "1h30m", "1.5h", "900s", "24h", "5m", "500ms", "720h", "2h0m1s"]
CLIENT_DURATIONS = [
    "10m",
    "15m",
    "16m",
    "1h",
    "59m59s",
    "1h30m",
    "90m",
    "1.5h",
    "901s",
    "899s",
    "720h",
    "721h",
    "5m",
    "300001ms",
    "0",
    "0s",
    "-5m",
    "+5m",
    ".5h",
    "7d",
    "15 minutes",
    "1h.",
    "5",
    "",
    "1e3s",
    "10µs",
    "1w",
    "1y",
]
SCOPE_PATTERNS = [
    "openid",
    "profile",
    "email",
    "offline_access",
    "api:*",
    "api:orders.*",
    "api:read",
    "*",
    "a.b",
    "x*y",
    "*.write",
    'openid"} allow := true #',
    "y",
    "0o17",
]
CLIENT_SCOPES = [
    "openid",
    "profile",
    "email",
    "offline_access",
    "api:read",
    "api:orders.write",
    "api:orders",
    "api:payments.refund",
    "a.b",
    "aXb",
    "xy",
    "x.y",
    "xzzy",
    "orders.write",
    'openid"} allow := true #',
    "OpenID",
    "y",
    "0o17",
    "1e3",
]
HOST_PATTERNS = [
    "*.example.com",
    "example.com",
    "127.0.0.1",
    "Shop.Example.COM",
    "*.*.example.org",
    "login.example.net",
    "*.net",
]
REDIRECT_URIS = [
    "https://shop.example.com/callback",
    "https://SHOP.Example.com/callback",
    "https://example.com/cb",
    "https://a.b.example.com/cb",
    "https://x.y.example.org/cb",
    "https://y.example.org/cb",
    "https://login.example.net:8443/cb?x=1",
    "https://user@shop.example.com/cb",
    "http://shop.example.com/callback",
    "HTTPS://shop.example.com/upper-scheme",
    "http://127.0.0.1:8080/callback",
    "http://127.0.0.1",
    "http://[::1]:9000/cb",
    "http://[::1]",
    "http://localhost:8080/callback",
    "https://127.0.0.1/cb",
    "https://*.example.com/callback",
    "https://shop.example.com/*",
    "com.example.app:/oauth2redirect",
    "COM.Example.App:/cb",
    "com.example.app:callback",
    "com.evil.app:/cb",
    "net.partner.scanner:/oauth2redirect",
    "org.other:/cb",
    "myapp:/callback",
    "https://shop.example.com/callback#frag",
    "com.example.app:/cb#",
    "urn:ietf:wg:oauth:2.0:oob",
    "not a uri",
    "http://127.0.0.1.evil.example/cb",
]
NAMESPACE_PATTERNS = [
    "team-a",
    "team-*",
    "team-*-prod",
    "*-prod",
    "*",
    "t*a",
    "ops",
    "ops*",
    "*sandbox*",
    "kube-system",
    "Team-*",
    "team.a*",
    "0o17",
]
EXCLUDED_PATTERNS = ["team-sandbox", "*-sandbox", "team-b*", "ops", "*x*", "team-a"]
CLIENT_NAMESPACES = [
    "team-a",
    "team-b",
    "team-sandbox",
    "team-a-prod",
    "team-",
    "ta",
    "tea",
    "ops",
    "ops-prod",
    "other",
    "kube-system",
    "x-prod",
    "prod",
    "0o17",
]
LABEL_KEYS = ["tier", "env", "app", "example.com/owner"]
LABEL_VALUES = ["prod", "dev", "staging", "test", "web", "a-b", "true", "y", "1e3"]
#: Not valid Kubernetes label values: Gatekeeper's `match` cannot carry them, the Rego still can.
ODD_LABEL_VALUES = ["has space", "-dash", "a/b"]
OPERATORS = ["In", "NotIn", "Exists", "DoesNotExist"]
ACTIONS = ["deny", "deny", "warn", "dryrun", None]
SCHEME_PATTERNS = ["com.example.*", "com.example.app", "COM.EXAMPLE.*", "*.app", "org.*", "net.*.app"]
#: SPEC §10's JWS algorithms.
SIGNING_ALGORITHMS = [
    *(f"{family}{bits}" for family in ("RS", "PS", "ES") for bits in (256, 384, 512)),
    "EdDSA",
    *(f"HS{bits}" for bits in (256, 384, 512)),
]
BASELINES = [["oauth2.1"], ["fapi2-security"], ["oauth2.1", "fapi2-security"]]


def _maybe(rng: random.Random, probability: float = 0.5) -> bool:
    return rng.random() < probability


def _subset(rng: random.Random, pool: Sequence[str], low: int = 1, high: int | None = None) -> list[str]:
    high = len(pool) if high is None else min(high, len(pool))
    return rng.sample(list(pool), rng.randint(min(low, high), high))


def _targets(rng: random.Random) -> dict[str, Any] | None:
    if _maybe(rng, 0.1):
        return None
    targets: dict[str, Any] = {}
    if _maybe(rng, 0.5):
        targets["applicationTypes"] = _subset(rng, APP_TYPES, 1, 3)
    if _maybe(rng, 0.6):
        targets["namespaces"] = _subset(rng, NAMESPACE_PATTERNS, 1, 3)
    if _maybe(rng, 0.3):
        targets["excludedNamespaces"] = _subset(rng, EXCLUDED_PATTERNS, 1, 2)
    selector: dict[str, Any] = {}
    if _maybe(rng, 0.35):
        values = ODD_LABEL_VALUES if _maybe(rng, 0.15) else LABEL_VALUES
        selector["matchLabels"] = {k: rng.choice(values) for k in _subset(rng, LABEL_KEYS, 1, 2)}
    if _maybe(rng, 0.35):
        expressions = []
        for key in _subset(rng, LABEL_KEYS, 1, 2):
            operator = rng.choice(OPERATORS)
            expression: dict[str, Any] = {"key": key, "operator": operator}
            if operator in ("In", "NotIn"):
                expression["values"] = _subset(rng, LABEL_VALUES, 1, 3)
            expressions.append(expression)
        selector["matchExpressions"] = expressions
    if selector:
        targets["clientSelector"] = selector
    return targets


def _policy_spec(rng: random.Random) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    targets = _targets(rng)
    if targets is not None:
        targets_key = "targets"
        spec[targets_key] = targets
    action = rng.choice(ACTIONS)
    if action:
        spec["enforcementAction"] = action
    if _maybe(rng, 0.6):
        spec["token"] = {f: rng.choice(POLICY_DURATIONS) for f in _subset(rng, TTL_FIELDS, 1)}
    if _maybe(rng, 0.5):
        spec["allowedGrantTypes"] = _subset(rng, GRANT_TYPES, 0, 5)
    if _maybe(rng, 0.5):
        spec["enforcePKCE"] = _maybe(rng, 0.8)
    if _maybe(rng, 0.5):
        spec["allowedScopes"] = _subset(rng, SCOPE_PATTERNS, 0, 5)
    if _maybe(rng, 0.35):
        spec["requiredScopes"] = _subset(rng, ["openid", "profile", "api:read", "a.b"], 1, 2)
    if _maybe(rng, 0.4):
        spec["allowedResponseTypes"] = _subset(rng, RESPONSE_TYPES, 0, 3)
    if _maybe(rng, 0.4):
        spec["allowedTokenEndpointAuthMethods"] = _subset(rng, AUTH_METHODS, 0, 3)
    if _maybe(rng, 0.6):
        spec["redirectUris"] = _redirects(rng)
    _section_10(rng, spec)
    return spec


def _redirects(rng: random.Random) -> dict[str, Any]:
    redirects: dict[str, Any] = {}
    if _maybe(rng, 0.7):
        redirects["requireHttps"] = _maybe(rng, 0.8)
    if redirects.get("requireHttps") and _maybe(rng, 0.6):
        redirects["allowLoopback"] = _maybe(rng, 0.8)
    if _maybe(rng, 0.6):
        redirects["allowWildcards"] = _maybe(rng, 0.3)
    if _maybe(rng, 0.5):
        redirects["allowedHosts"] = _subset(rng, HOST_PATTERNS, 1, 3)
    if _maybe(rng, 0.4):
        redirects["allowPrivateUseSchemes"] = _maybe(rng, 0.8)
    if _maybe(rng, 0.45):
        redirects["allowedSchemes"] = _subset(rng, SCHEME_PATTERNS, 0, 2)
    if _maybe(rng, 0.3):
        redirects["forbidFragments"] = _maybe(rng, 0.8)
    return redirects


def _section_10(rng: random.Random, spec: dict[str, Any]) -> None:
    """SPEC §10's token binding, PAR, signing algorithms and baselines."""
    if _maybe(rng, 0.3):
        spec["senderConstrainedTokens"] = _subset(rng, ["dpop", "mtls"], 1, 2)
    if _maybe(rng, 0.3):
        spec["requirePushedAuthorizationRequests"] = _maybe(rng, 0.8)
    if _maybe(rng, 0.3):
        spec["allowedSigningAlgorithms"] = _subset(rng, SIGNING_ALGORITHMS, 0, 4)
    if _maybe(rng, 0.3):
        spec["baselines"] = list(rng.choice(BASELINES))


def policy_set(rng: random.Random, index: int) -> list[dict[str, Any]]:
    """2-6 valid AuthPolicies; names are unique, and some ids are long or ambiguous once dashed."""
    count = rng.randint(2, 6)
    policies = []
    for number in range(count):
        namespace = rng.choice(["security", "sec-team", "platform"])
        name = f"p{index}-{number}"
        if _maybe(rng, 0.1):
            name = f"{name}-{'long' * 16}"
        policies.append(
            {
                "apiVersion": API_VERSION,
                "kind": "AuthPolicy",
                "metadata": {"name": name, "namespace": namespace},
                "spec": _policy_spec(rng),
            }
        )
    if _maybe(rng, 0.3):
        # `a-b/c` and `a/b-c` read the same once joined with a dash: the names must stay unique.
        policies.append(
            {
                "apiVersion": API_VERSION,
                "kind": "AuthPolicy",
                "metadata": {"name": f"team-p{index}-0", "namespace": "sec"},
                "spec": _policy_spec(rng),
            }
        )
        policies.append(
            {
                "apiVersion": API_VERSION,
                "kind": "AuthPolicy",
                "metadata": {"name": f"p{index}-0", "namespace": "sec-team"},
                "spec": _policy_spec(rng),
            }
        )
    unique = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in policies}
    return list(unique.values())


def _namespace_for(rng: random.Random, policies: Sequence[dict[str, Any]]) -> str:
    """Mostly a namespace one of the policies' globs matches, sometimes any namespace."""
    globs = [g for p in policies for g in ((p["spec"].get("targets") or {}).get("namespaces") or [])]
    if globs and _maybe(rng, 0.6):
        glob = rng.choice(globs)
        return (
            "".join(
                part + (rng.choice(["", "x", "-a", "prod"]) if i else "")
                for i, part in enumerate(glob.split("*"))
            )
            if "*" in glob
            else glob
        )
    return rng.choice(CLIENT_NAMESPACES)


def _labels_for(rng: random.Random, policies: Sequence[dict[str, Any]]) -> dict[str, str]:
    labels: dict[str, str] = {}
    selectors = [(p["spec"].get("targets") or {}).get("clientSelector") or {} for p in policies]
    selector = rng.choice(selectors)
    if _maybe(rng, 0.7):
        labels.update(selector.get("matchLabels") or {})
        for expression in selector.get("matchExpressions") or []:
            if expression["operator"] == "In":
                labels[expression["key"]] = rng.choice(expression["values"])
            elif expression["operator"] == "Exists":
                labels[expression["key"]] = rng.choice(LABEL_VALUES)
    for key in _subset(rng, LABEL_KEYS, 0, 2):
        if _maybe(rng, 0.4):
            labels[key] = rng.choice(LABEL_VALUES + ODD_LABEL_VALUES[:1])
    return labels


def _client_spec(rng: random.Random) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if _maybe(rng, 0.85):
        spec["applicationType"] = rng.choice(APP_TYPES)
    if _maybe(rng, 0.3):
        spec["displayName"] = "Generated client"
    if _maybe(rng, 0.3):
        spec["authServerRef"] = {"name": "main", "namespace": "auth"}
    if _maybe(rng, 0.8):
        spec["redirectUris"] = _subset(rng, REDIRECT_URIS, 0, 3)
        if _maybe(rng, 0.15):
            spec["redirectUris"].append(rng.choice(["https://*.example.com/cb", "https://app.example.com/*"]))
            spec["redirectUris"] = sorted(set(spec["redirectUris"]))
    if _maybe(rng, 0.75):
        spec["grantTypes"] = _subset(rng, GRANT_TYPES, 0, 3)
    if _maybe(rng, 0.5):
        spec["responseTypes"] = _subset(rng, CLIENT_RESPONSE_TYPES, 1, 2)
    if _maybe(rng, 0.7):
        spec["scopes"] = _subset(rng, CLIENT_SCOPES, 0, 4)
    if _maybe(rng, 0.6):
        spec["tokenEndpointAuthMethod"] = rng.choice(AUTH_METHODS)
    pkce = rng.choice(
        [
            None,
            {},
            {"required": True},
            {"required": True, "method": "S256"},
            {"required": True, "method": "plain"},
            {"required": False, "method": "S256"},
            {"method": "S256"},
        ]
    )
    if pkce is not None:
        spec["pkce"] = pkce
    if _maybe(rng, 0.7):
        spec["token"] = {f: rng.choice(CLIENT_DURATIONS) for f in _subset(rng, TTL_FIELDS, 1)}
    for binding in (
        "dpopBoundAccessTokens",
        "tlsClientCertificateBoundAccessTokens",
        "requirePushedAuthorizationRequests",
    ):
        if _maybe(rng, 0.3):
            spec[binding] = _maybe(rng, 0.6)
    for algorithm in ("idTokenSignedResponseAlg", "tokenEndpointAuthSigningAlg"):
        if _maybe(rng, 0.35):
            spec[algorithm] = rng.choice(SIGNING_ALGORITHMS)
    return spec


def _break(rng: random.Random, client: dict[str, Any]) -> None:
    """Make a client violate its schema in one of the ways the SPEC names (and a few more)."""
    spec = client.setdefault("spec", {})
    kind = rng.randrange(14)
    if kind == 0:
        del client["spec"]
    elif kind == 1:
        spec["grantTypes"] = "authorization_code"
    elif kind == 2:
        spec["applicationType"] = "desktop"
    elif kind == 3:
        spec["grantTypes"] = ["authorization_code", "magic"]
    elif kind == 4:
        spec["scopes"] = {"openid": True}
    elif kind == 5:
        spec["token"] = {"accessTokenTTL": 600}
    elif kind == 6:
        spec["pkce"] = {"required": "yes"}
    elif kind == 7:
        spec["allowedScope"] = ["openid"]
    elif kind == 8:
        client["metadata"]["labels"] = {"tier": 5}
    elif kind == 9:
        spec["responseTypes"] = ["code  token"]
    elif kind == 11:
        spec["idTokenSignedResponseAlg"] = "none"
    elif kind == 12:
        spec["dpopBoundAccessTokens"] = "true"
    elif kind == 10:
        spec["redirectUris"] = ["https://a.example.com/cb", "https://a.example.com/cb"]
    else:
        spec["tokenEndpointAuthMethod"] = "client_secret"


def clients(rng: random.Random, policies: Sequence[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """`count` AuthClients with unique names; about one in eight is malformed."""
    result = []
    for number in range(count):
        metadata: dict[str, Any] = {
            "name": f"client-{number:03d}",
            "namespace": _namespace_for(rng, policies),
        }
        labels = _labels_for(rng, policies)
        if labels:
            metadata["labels"] = labels
        if _maybe(rng, 0.1):
            metadata["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration": "{}"}
            metadata["uid"] = f"00000000-0000-0000-0000-{number:012d}"
        client = {
            "apiVersion": API_VERSION,
            "kind": "AuthClient",
            "metadata": metadata,
            "spec": _client_spec(rng),
        }
        if _maybe(rng, 0.12):
            _break(rng, client)
        result.append(copy.deepcopy(client))
    return result

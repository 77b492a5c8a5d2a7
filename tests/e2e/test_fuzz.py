"""Issue 16, fuzzing with hypothesis (derandomized: every run draws the same examples). Random YAML into
`compile` never raises past its diagnostics and never leaves a partial output; random AuthClient
documents, whatever their shape, always get a decision document from OPA (one `opa eval` for each
batch)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nauthera.engines.check import evaluate
from nauthera.errors import NautheraError
from nauthera.targets.base import CompileOptions
from nauthera.targets.outputs import compile_policies

from ..conftest import EXAMPLES
from ..harness.reliability import Reliability

FUZZ = settings(derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: Text as JSON can carry it to OPA (no lone surrogates: no API server sends them).
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
JSON_LEAVES = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TEXT
)
JSON = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
SPEC_KEYS = [
    "targets",
    "allowedGrantTypes",
    "token",
    "allowedScopes",
    "requiredScopes",
    "redirectUris",
    "enforcePKCE",
    "enforcementAction",
    "allowedTokenEndpointAuthMethods",
    "allowedResponseTypes",
]
YAML_SNIPPETS = [
    "apiVersion: auth.nauthera.io/v1alpha1\n",
    "kind: AuthPolicy\n",
    "metadata: {name: p, namespace: security}\n",
    "spec:\n  targets: {namespaces: ['team-*']}\n",
    "---\n",
    "&a [*a]\n",
    "!!python/object:os.system 'x'\n",
    "key: [unclosed\n",
    "  - - -\n",
    "\t\x00\ufeff",
    "accessTokenTTL: 7d\n",
    "<<: *b\n",
    "? complex\n: key\n",
]


def _example_policy() -> dict[str, Any]:
    text = (EXAMPLES / "policies" / "mobile-spa-policy.yaml").read_text(encoding="utf-8")
    return next(doc for doc in yaml.safe_load_all(text) if doc)


@st.composite
def policy_files(draw: st.DrawFn) -> str:
    """YAML text: an example policy with random values in random places, or snippets and noise."""
    if draw(st.booleans()):
        doc = _example_policy()
        for key in draw(st.lists(st.sampled_from([*SPEC_KEYS, "metadata", "kind", "spec"]), max_size=3)):
            target = doc if key in ("metadata", "kind", "spec") else doc["spec"]
            if isinstance(target, dict):  # not when an earlier draw replaced the spec itself
                target[key] = draw(JSON)
        return yaml.safe_dump(doc, allow_unicode=True)
    parts = draw(st.lists(st.sampled_from(YAML_SNIPPETS) | st.text(max_size=30), min_size=1, max_size=8))
    return "".join(parts)


def test_random_yaml_never_breaks_compile(reliability: Reliability) -> None:
    outcomes = {"compiled": 0, "refused with diagnostics": 0, "refused with an error": 0}

    @settings(FUZZ, max_examples=80)
    @given(st.lists(policy_files(), min_size=1, max_size=3))
    def compile_fuzz(files: list[str]) -> None:
        work = Path(tempfile.mkdtemp(prefix="nauthera-fuzz-"))
        try:
            for number, text in enumerate(files):
                (work / "policies").mkdir(exist_ok=True)
                (work / "policies" / f"{number}.yaml").write_text(
                    text, encoding="utf-8", errors="surrogatepass"
                )
            out = work / "out"
            try:
                result = compile_policies(CompileOptions(paths=[work / "policies"], out=out))
            except NautheraError:  # reported by the CLI as `nauthera: error: ...`, exit 2
                outcomes["refused with an error"] += 1
                assert not out.exists(), "a refused compile left output behind"
                return
            if result.ok:
                outcomes["compiled"] += 1
                assert (out / "bundle.tar.gz").is_file()
            else:
                outcomes["refused with diagnostics"] += 1
                assert result.diagnostics and not out.exists(), "a failed compile left output behind"
                assert all(d.position for d in result.diagnostics)
        finally:
            shutil.rmtree(work)

    compile_fuzz()
    assert outcomes["compiled"] and outcomes["refused with diagnostics"], outcomes
    summary = ", ".join(f"{count} {what}" for what, count in outcomes.items())
    reliability.add(
        "fuzzing",
        "random YAML (mutated policies, snippets, noise) into compile",
        f"{summary}; no partial output",
    )


CLIENT_KEYS = [
    "applicationType",
    "grantTypes",
    "responseTypes",
    "redirectUris",
    "scopes",
    "tokenEndpointAuthMethod",
    "pkce",
    "token",
    "displayName",
]


@st.composite
def client_documents(draw: st.DrawFn) -> Any:
    """An AuthClient with random values in random places, or any JSON value at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON)
    spec = {key: draw(JSON) for key in draw(st.lists(st.sampled_from(CLIENT_KEYS), max_size=5, unique=True))}
    metadata: Any = {
        "name": draw(TEXT | st.integers()),
        "namespace": draw(st.sampled_from(["team-a", "team-b", "other-team", ""]) | JSON),
        "labels": draw(st.dictionaries(TEXT, JSON_LEAVES, max_size=3)),
    }
    document: dict[str, Any] = {"apiVersion": "auth.nauthera.io/v1alpha1", "kind": "AuthClient"}
    document["metadata"] = draw(st.just(metadata) | JSON)
    document["spec"] = draw(st.just(spec) | JSON)
    return document


def test_random_clients_always_get_a_decision_document(
    example_bundle: Path, reliability: Reliability
) -> None:
    """Hypothesis draws the documents; OPA decides them all in one batch (one `opa eval`)."""
    clients: list[Any] = []

    @settings(FUZZ, max_examples=400)
    @given(client_documents())
    def draw_clients(client: Any) -> None:
        clients.append(client)

    draw_clients()
    decisions = evaluate(example_bundle, clients)
    assert len(decisions) == len(clients) >= 400
    for client, decision in zip(clients, decisions, strict=True):
        assert isinstance(decision, dict) and isinstance(decision.get("allowed"), bool), (client, decision)
        for key in ("violations", "warnings", "dryrun", "policies"):
            assert isinstance(decision.get(key), list), (json.dumps(client)[:300], decision)
        assert decision["allowed"] == (not decision["violations"]), (json.dumps(client)[:300], decision)
    allowed = sum(d["allowed"] for d in decisions)
    reliability.add(
        "fuzzing",
        "random AuthClient documents (any JSON in any field, or no AuthClient at all) into OPA",
        f"{len(decisions)} decision documents for {len(clients)} inputs ({allowed} allowed), one opa eval",
    )

"""Issue 16: random policy/client pairs decide identically in OPA and Gatekeeper (the real `gator`).

Hypothesis (derandomized) draws each case: a policy set from the parity corpus and a client from the
corpus whose fields it then rewrites with values from the rules' vocabularies or with any JSON at all.
The cases are decided in batches (one `opa eval` and one `gator test` per policy set)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nauthera.engines.check import evaluate
from nauthera.targets.base import CompileOptions
from nauthera.targets.outputs import compile_policies

from ...harness.reliability import Reliability
from . import corpus
from .test_gatekeeper import ACTIONS, gator_results, opa_entries

SETS = 3
SEED = 16_000
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
VOCABULARY: dict[str, st.SearchStrategy[Any]] = {
    "applicationType": st.sampled_from(corpus.APP_TYPES),
    "grantTypes": st.lists(st.sampled_from(corpus.GRANT_TYPES), max_size=3),
    "responseTypes": st.lists(st.sampled_from(corpus.CLIENT_RESPONSE_TYPES), max_size=2),
    "redirectUris": st.lists(st.sampled_from(corpus.REDIRECT_URIS), max_size=3, unique=True),
    "scopes": st.lists(st.sampled_from(corpus.CLIENT_SCOPES), max_size=4),
    "tokenEndpointAuthMethod": st.sampled_from(corpus.AUTH_METHODS),
    "pkce": st.fixed_dictionaries(
        {}, optional={"required": st.booleans(), "method": st.sampled_from(["S256", "plain"])}
    ),
    "token": st.dictionaries(st.sampled_from(corpus.TTL_FIELDS), st.sampled_from(corpus.CLIENT_DURATIONS)),
}


def _policy_sets() -> list[list[dict[str, Any]]]:
    return [corpus.policy_set(random.Random(SEED + index), index) for index in range(SETS)]


@st.composite
def cases(draw: st.DrawFn) -> tuple[int, dict[str, Any]]:
    """(policy set, client): a corpus client with up to three fields rewritten."""
    index = draw(st.integers(0, SETS - 1))
    rng = random.Random(draw(st.integers(0, 2**32)))
    client = corpus.clients(rng, _policy_sets()[index], 1)[0]
    spec = client.setdefault("spec", {})
    if isinstance(spec, dict):
        for field in draw(st.lists(st.sampled_from(sorted(VOCABULARY)), max_size=3, unique=True)):
            spec[field] = draw(VOCABULARY[field] | JSON)
    return index, client


def test_random_policy_client_pairs_decide_alike_in_opa_and_gator(
    tmp_path: Path, reliability: Reliability
) -> None:
    drawn: list[tuple[int, dict[str, Any]]] = []

    @settings(derandomize=True, deadline=None, max_examples=240, suppress_health_check=[HealthCheck.too_slow])
    @given(cases())
    def draw_cases(case: tuple[int, dict[str, Any]]) -> None:
        drawn.append(case)

    draw_cases()
    mismatches, findings = [], 0
    for index, policies in enumerate(_policy_sets()):
        clients = [client for set_index, client in drawn if set_index == index]
        folder = tmp_path / f"set-{index}"
        (folder / "policies").mkdir(parents=True)
        (folder / "clients").mkdir()
        for number, policy in enumerate(policies):
            (folder / "policies" / f"{number}.yaml").write_text(yaml.safe_dump(policy))
        for number, client in enumerate(clients):
            client["metadata"]["name"] = f"fuzz-{number:03d}"
            (folder / "clients" / f"{number:03d}.json").write_text(json.dumps(client))
        out = folder / "build"
        compiled = compile_policies(CompileOptions(paths=[folder / "policies"], out=out, target="all"))
        assert compiled.ok, [str(d) for d in compiled.diagnostics]
        decisions = evaluate(out / "bundle.tar.gz", clients)
        gatekeeper = gator_results(out / "gatekeeper", folder / "clients")
        for client, decision in zip(clients, decisions, strict=True):
            key = f"{client['metadata']['namespace']}/{client['metadata']['name']}"
            for action in ACTIONS:
                expected, found = opa_entries(decision, action), gatekeeper.get(key, {}).get(action, set())
                findings += len(expected)
                if expected != found:
                    difference = f"OPA only {expected - found}, gator only {found - expected}"
                    mismatches.append(f"{key} {action}: {difference}\n  {json.dumps(client)}")
    assert not mismatches, f"{len(mismatches)} mismatches:\n" + "\n".join(mismatches[:10])
    assert len(drawn) >= 200 and findings > len(drawn)
    reliability.add(
        "fuzzing",
        f"random policy/client pairs ({len(drawn)} clients over {SETS} policy sets) in OPA and gator",
        f"identical decisions, {findings} findings compared, no mismatch",
    )

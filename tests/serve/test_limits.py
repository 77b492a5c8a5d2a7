"""Issue 16: the bounds behind the server's limits, at their edges (the probes against a real server
are in test_hostile_input.py)."""

from __future__ import annotations

import json

import pytest
from nauthera.serve.fleet import MAX_BUNDLES, MAX_TEXT, AgentRegistry, DecisionLog
from nauthera.serve.server import parse_json


@pytest.mark.parametrize(
    ("depth", "accepted"), [(1, True), (63, True), (64, True), (65, False), (10_000, False)]
)
def test_json_depth_limit_is_exact(depth: int, accepted: bool) -> None:
    document = b"[" * depth + b"]" * depth
    if accepted:
        assert parse_json(document, 64) == json.loads(document)
    else:
        with pytest.raises(ValueError, match="nested deeper than 64 levels"):
            parse_json(document, 64)


def test_brackets_inside_strings_do_not_count() -> None:
    value = "[{" * 5000 + '" ]] \\'  # brackets, an escaped quote and a backslash inside a string
    document = {"a": [value, {"b": value}]}
    assert parse_json(json.dumps(document).encode(), 3) == document


def test_unbalanced_brackets_are_the_decoders_to_report() -> None:
    with pytest.raises(ValueError, match="Expecting"):
        parse_json(b"[[[" * 10, 64)
    with pytest.raises(ValueError, match=r"Expecting|Extra data"):
        parse_json(b"]]]}}}", 64)


def _report(agent: str, bundles: int = 1, label: str = "v") -> dict[str, object]:
    return {
        "labels": {"id": agent, "team": label},
        "bundles": {
            f"b{i:03d}": {"active_revision": "r" * 1000, "code": "x", "message": "m" * 1000}
            for i in range(bundles)
        },
    }


def test_registry_keeps_what_agents_shows_and_stays_within_its_byte_budget() -> None:
    registry = AgentRegistry(max_agents=1000, max_bytes=200_000)
    for number in range(200):
        registry.record_status(_report(f"agent-{number}", bundles=100))
    assert registry.bytes <= 200_000
    kept = registry.describe({}, "stable")
    assert 0 < len(kept) < 200 and kept[0]["id"] == "agent-199", "the least recently seen go first"
    agent = kept[0]
    assert len(agent["bundles"]) == MAX_BUNDLES
    assert all(len(b["active_revision"]) == MAX_TEXT for b in agent["bundles"].values())
    assert all(len(error) <= MAX_TEXT for error in agent["errors"])
    # A new report of a known agent replaces it, and the budget follows.
    before = registry.bytes
    registry.record_status(_report("agent-199", bundles=1))
    assert registry.bytes < before and len(registry.describe({}, "stable")[0]["bundles"]) == 1


def test_decision_log_texts_are_cut() -> None:
    log = DecisionLog(max_events=10)
    event = {
        "path": "nauthera/authclient/decision",
        "input": {"metadata": {"name": "n" * 10_000, "namespace": "team-a"}},
        "result": {"allowed": False, "violations": [{"policy": "p" * 10_000, "field": "f" * 10_000}]},
    }
    assert log.ingest([event] * 50) == 50
    [row] = log.summary()
    assert row["count"] == 10
    assert all(len(row[key]) <= MAX_TEXT for key in ("policy", "field", "client"))

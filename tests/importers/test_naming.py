"""SPEC §9 names: source ids as Kubernetes names, collisions told apart by a hash, repeats refused."""

from __future__ import annotations

import hashlib

import pytest
from nauthera.compile.diagnostics import Level, Position
from nauthera.compile.kubernetes import DNS_LABEL, DNS_SUBDOMAIN
from nauthera.importers.naming import NameRequest, assign_names, dns_label, dns_name, namespace_for


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("web-shop", "web-shop"),
        ("Web_Shop", "web-shop"),
        ("My Example Client", "my-example-client"),
        ("api.orders.v2", "api.orders.v2"),
        ("-leading.and.trailing-", "leading.and.trailing"),
        ("a..b", "a.b"),
        ("..", ""),
        ("https://app.example.com/cb", "https---app.example.com-cb"),
        ("Ünïcödé", "n-c-d"),
        ("日本語", ""),
        ("x" * 300, "x" * 253),
        ("a" * 252 + "-b", "a" * 252),
        ("İstanbul", "stanbul"),
    ],
)
def test_dns_name(source: str, name: str) -> None:
    assert dns_name(source) == name
    assert name == "" or (DNS_SUBDOMAIN.match(name) and len(name) <= 253)


@pytest.mark.parametrize(
    ("source", "namespace"),
    [("acme", "acme"), ("Acme Corp.", "acme-corp"), ("team.a", "team-a"), ("y" * 70, "y" * 63), ("-x-", "x")],
)
def test_dns_label(source: str, namespace: str) -> None:
    assert dns_label(source) == namespace
    assert DNS_LABEL.match(namespace)


def test_a_namespace_with_nothing_usable_is_hashed() -> None:
    assert namespace_for("管理") == f"ns-{_hash('管理')}"
    assert DNS_LABEL.match(namespace_for("管理"))


def _request(source: str, identity: str | None = None, namespace: str = "acme", line: int = 1) -> NameRequest:
    return NameRequest(namespace, source, identity or source, Position("realm.json", line, 5))


def test_distinct_names_are_kept() -> None:
    names, notes = assign_names([_request("web"), _request("api"), _request("web", namespace="other")])
    assert names == ["web", "api", "web"]
    assert notes == []


def test_colliding_ids_get_a_hash_and_the_exact_one_keeps_its_name() -> None:
    requests = [_request("My_App", line=3), _request("my-app", line=9), _request("MY.APP", line=12)]
    names, notes = assign_names(requests)
    assert names == [f"my-app-{_hash('My_App')}", "my-app", "my.app"]
    assert [(n.level, n.code, n.position.line) for n in notes] == [(Level.NOTE, "renamed", 3)]
    assert "sanitises to 'my-app' like another client" in notes[0].message


def test_collision_naming_does_not_depend_on_input_order() -> None:
    requests = [_request("My_App"), _request("my app"), _request("my-app")]
    forward, _ = assign_names(requests)
    backward, _ = assign_names(list(reversed(requests)))
    assert forward == list(reversed(backward))
    assert len(set(forward)) == 3


def test_without_an_exact_id_every_colliding_client_is_hashed() -> None:
    names, notes = assign_names([_request("My App"), _request("My_App")])
    assert names == [f"my-app-{_hash('My App')}", f"my-app-{_hash('My_App')}"]
    assert len(notes) == 2


def test_an_id_without_usable_characters_is_named_by_its_hash() -> None:
    names, notes = assign_names([_request("日本語")])
    assert names == [f"client-{_hash('日本語')}"]
    assert "no character usable" in notes[0].message


def test_hash_suffix_keeps_long_names_valid() -> None:
    long_id = "A" * 253
    names, _ = assign_names([_request(long_id), _request("a" * 253)])
    assert names[1] == "a" * 253
    assert names[0] is not None and len(names[0]) == 253 and names[0].endswith(_hash(long_id))
    assert DNS_SUBDOMAIN.match(names[0])


def test_the_same_id_twice_in_a_namespace_is_an_error_at_the_repeat() -> None:
    names, notes = assign_names(
        [_request("web", line=2), _request("web", line=40), _request("web", namespace="b")]
    )
    assert names == ["web", None, "web"]
    assert [(n.level, n.code, n.position.line) for n in notes] == [(Level.ERROR, "duplicate-client", 40)]
    assert "already imported into namespace 'acme' from realm.json:2:5" in notes[0].message


def test_a_hashed_name_equal_to_another_clients_id_is_refused() -> None:
    taken = f"my-app-{_hash('My_App')}"
    names, notes = assign_names([_request("My_App"), _request("my-app"), _request(taken)])
    assert names.count(taken) == 1
    assert None in names
    assert [n.code for n in notes if n.level is Level.ERROR] == ["duplicate-client"]

"""JSON input with positions: every finding about an import points at `file:line:column`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nauthera.compile.diagnostics import Diagnostic, Position
from nauthera.errors import InputError
from nauthera.importers.jsoninput import JsonInput, read_json

DATA = Path(__file__).parent / "data"


def _read(tmp_path: Path, text: str | bytes) -> JsonInput | Diagnostic:
    path = tmp_path / "input.json"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return read_json(path)


def _parsed(tmp_path: Path, text: str) -> JsonInput:
    doc = _read(tmp_path, text)
    assert isinstance(doc, JsonInput), doc
    return doc


def _at(text: str, needle: str, file: str) -> Position:
    """Where `needle` first occurs in `text`, 1-based."""
    offset = text.index(needle)
    line = text.count("\n", 0, offset) + 1
    return Position(file, line, offset - (text.rfind("\n", 0, offset) + 1) + 1)


def test_positions_in_keycloaks_layout(tmp_path: Path) -> None:
    text = (
        '{\n  "realm" : "acme",\n  "clients" : [ {\n    "clientId" : "a",\n'
        '    "attributes" : { "x" : "1", "pkce.code.challenge.method" : "S256" }\n  }, {\n'
        '    "clientId" : "b"\n  } ]\n}\n'
    )
    doc = _parsed(tmp_path, text)
    file = str(tmp_path / "input.json")
    assert doc.value_position(()) == Position(file, 1, 1)
    assert doc.value_position(("realm",)) == _at(text, '"acme"', file)
    assert doc.key_position(("realm",)) == _at(text, '"realm"', file)
    assert doc.value_position(("clients", 0)) == _at(text, '{\n    "clientId" : "a"', file)
    assert doc.value_position(("clients", 1)) == _at(text, '{\n    "clientId" : "b"', file)
    pkce = ("clients", 0, "attributes", "pkce.code.challenge.method")
    assert doc.key_position(pkce) == _at(text, '"pkce', file)
    assert doc.value_position(pkce) == _at(text, '"S256"', file)
    assert doc.value_position(("clients", 1, "clientId")) == _at(text, '"b"', file)


def test_an_absent_path_points_at_its_nearest_ancestor(tmp_path: Path) -> None:
    doc = _parsed(tmp_path, '{"clients": [{"clientId": "a"}]}')
    assert doc.value_position(("clients", 0, "attributes", "x")) == doc.value_position(("clients", 0))
    assert doc.value_position(("clients", 5)) == doc.value_position(("clients",))


def test_the_last_of_duplicate_keys_counts_as_in_the_value(tmp_path: Path) -> None:
    doc = _parsed(tmp_path, '{"a": 1,\n "a": 2}')
    assert doc.value == {"a": 2}
    assert doc.value_position(("a",)).line == 2


def test_positions_in_a_large_export_skip_unrelated_values(tmp_path: Path) -> None:
    users = [{"username": f"user{i}", "attributes": {"k": [str(i)] * 3}} for i in range(20_000)]
    text = json.dumps({"realm": "big", "users": users, "clients": [{"clientId": "late"}]}, indent=2)
    doc = _parsed(tmp_path, text)
    position = doc.value_position(("clients", 0, "clientId"))
    assert text.splitlines()[position.line - 1].strip() == '"clientId": "late"'


@pytest.mark.parametrize(
    ("text", "line", "column", "words"),
    [
        ("apiVersion: v1\nkind: AuthClient\n", 1, 1, "Expecting value"),
        ('{\n  "a": 1,\n}', 3, 1, "Expecting property name"),
        ("", 1, 1, "Expecting value"),
        ('{"a": NaN}', 1, 1, "NaN is not JSON"),
        ("[" * 100_000, 1, 1, "nested too deeply"),
    ],
)
def test_text_that_is_not_json_is_one_positioned_error(
    tmp_path: Path, text: str, line: int, column: int, words: str
) -> None:
    problem = _read(tmp_path, text)
    assert isinstance(problem, Diagnostic)
    assert (problem.code, problem.position.line, problem.position.column) == ("not-json", line, column)
    assert words in problem.message


def test_bytes_that_are_not_utf8_are_an_encoding_error(tmp_path: Path) -> None:
    problem = _read(tmp_path, b'{"realm": "\xff"}')
    assert isinstance(problem, Diagnostic) and problem.code == "encoding"


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    doc = _parsed(tmp_path, '\ufeff{"realm": "acme"}')
    assert doc.value == {"realm": "acme"}


def test_an_unreadable_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        read_json(tmp_path / "missing.json")


def test_every_corpus_file_is_read_with_positions() -> None:
    for path in sorted(DATA.rglob("*.json")):
        doc = read_json(path)
        assert isinstance(doc, JsonInput), (path, doc)
        assert doc.value_position(()).line == 1

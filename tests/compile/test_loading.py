"""Load stage (``nauthera.compile.loading``): positions, multi-document files, hostile YAML, file discovery.

Positions are 1-based ``line:column`` and must point at the exact key or value a diagnostic is about
(SPEC §4), so most assertions here pin exact coordinates rather than "somewhere in the file".
"""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest
from nauthera.compile.diagnostics import Diagnostic, Level, Position
from nauthera.compile.loading import (
    MAX_DEPTH,
    LoadResult,
    SourceDocument,
    discover,
    load_file,
    load_paths,
    load_text,
)
from nauthera.errors import InputError

FILE = "in.yaml"

NESTED = textwrap.dedent(
    """\
    apiVersion: v1
    kind: Thing
    spec:
      items:
        - name: first
          tags: [a, "b"]
        - second
      nested:
        deep:
          value: 42
    """
)

#: Nine levels of nine-fold aliases: 9**9 (~387 million) strings if expanded naively.
BILLION_LAUGHS = textwrap.dedent(
    """\
    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
    b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
    c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
    d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
    e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
    f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
    g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
    h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
    i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
    """
)


def only_document(result: LoadResult) -> SourceDocument:
    assert result.diagnostics == []
    assert len(result.documents) == 1
    return result.documents[0]


def codes(diagnostics: Sequence[Diagnostic]) -> list[str]:
    return [d.code for d in diagnostics]


def at(line: int, column: int, file: str = FILE) -> Position:
    return Position(file, line, column)


# --- positions -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "line", "column"),
    [
        ((), 1, 1),
        (("kind",), 2, 7),
        (("spec",), 4, 3),  # a block mapping starts at its first key
        (("spec", "items"), 5, 5),  # a block sequence starts at its first "-"
        (("spec", "items", 0), 5, 7),
        (("spec", "items", 0, "name"), 5, 13),
        (("spec", "items", 0, "tags"), 6, 13),
        (("spec", "items", 0, "tags", 0), 6, 14),
        (("spec", "items", 0, "tags", 1), 6, 17),  # a quoted scalar starts at its quote
        (("spec", "items", 1), 7, 7),
        (("spec", "nested", "deep", "value"), 10, 14),
    ],
)
def test_value_positions_in_nested_maps_and_lists(
    path: tuple[str | int, ...], line: int, column: int
) -> None:
    doc = only_document(load_text(NESTED, FILE))
    assert doc.value_position(path) == at(line, column)


@pytest.mark.parametrize(
    ("path", "line", "column"),
    [
        (("apiVersion",), 1, 1),
        (("spec",), 3, 1),
        (("spec", "items"), 4, 3),
        (("spec", "items", 0, "name"), 5, 7),
        (("spec", "items", 0, "tags"), 6, 7),
        (("spec", "nested", "deep"), 9, 5),
        (("spec", "nested", "deep", "value"), 10, 7),
    ],
)
def test_key_positions_point_at_the_key_not_the_value(
    path: tuple[str | int, ...], line: int, column: int
) -> None:
    doc = only_document(load_text(NESTED, FILE))
    assert doc.key_position(path) == at(line, column)
    assert doc.key_position(path) != doc.value_position(path)


def test_key_position_of_list_items_and_root_is_the_value_position() -> None:
    doc = only_document(load_text(NESTED, FILE))
    assert doc.key_position(("spec", "items", 1)) == at(7, 7)
    assert doc.key_position(("spec", "items", 0, "tags", 1)) == at(6, 17)
    assert doc.key_position(()) == at(1, 1)


@pytest.mark.parametrize(
    ("path", "line", "column"),
    [
        (("spec", "nested", "deep", "missing"), 10, 7),  # parent mapping
        (("spec", "nested", "deep", "missing", "deeper", 3), 10, 7),  # several levels absent
        (("spec", "items", 5), 5, 5),  # index past the end: the list
        (("spec", "items", 0, "tags", 9), 6, 13),
        (("nope", "x"), 1, 1),  # nothing matches: the document
    ],
)
def test_absent_paths_fall_back_to_the_nearest_ancestor(
    path: tuple[str | int, ...], line: int, column: int
) -> None:
    doc = only_document(load_text(NESTED, FILE))
    assert doc.value_position(path) == at(line, column)
    assert doc.key_position(path) == at(line, column)


def test_content_is_plain_json_like_values() -> None:
    doc = only_document(load_text(NESTED, FILE))
    assert doc.content == {
        "apiVersion": "v1",
        "kind": "Thing",
        "spec": {
            "items": [{"name": "first", "tags": ["a", "b"]}, "second"],
            "nested": {"deep": {"value": 42}},
        },
    }
    assert doc.file == FILE
    assert doc.start == at(1, 1)


def test_columns_count_characters_not_bytes() -> None:
    doc = only_document(load_text('{é: 1, "ü": 2, b: 3}\n', FILE))
    assert doc.key_position(("b",)) == at(1, 16)
    assert doc.value_position(("b",)) == at(1, 19)


# --- documents -------------------------------------------------------------------------------------


def test_multi_document_file_numbers_documents_and_positions_them_in_the_file() -> None:
    text = "kind: A\n---\nkind: B\nspec:\n  x: 1\n---\n# comment\nkind: C\n"
    result = load_text(text, FILE)
    assert result.diagnostics == []
    assert [d.index for d in result.documents] == [0, 1, 2]
    assert [d.content["kind"] for d in result.documents] == ["A", "B", "C"]
    assert [d.start for d in result.documents] == [at(1, 1), at(3, 1), at(8, 1)]
    assert result.documents[1].value_position(("spec", "x")) == at(5, 6)
    assert result.documents[2].value_position(("kind",)) == at(8, 7)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n   \n"])
def test_files_without_documents_yield_nothing(text: str) -> None:
    assert load_text(text, FILE) == LoadResult()


@pytest.mark.parametrize(
    "text",
    [
        "---\n# nothing here\n---\nkind: A\n",
        "kind: A\n---\n",
        "kind: A\n---\n...\n",
    ],
)
def test_explicit_empty_documents_are_skipped(text: str) -> None:
    result = load_text(text, FILE)
    assert result.diagnostics == []
    assert [d.content for d in result.documents] == [{"kind": "A"}]


# --- keys ------------------------------------------------------------------------------------------


def test_duplicate_key_is_reported_at_the_second_key() -> None:
    text = "a:\n  b:\n    c: 1\n    d: 2\n    c: 3\n"
    result = load_text(text, FILE)
    assert len(result.diagnostics) == 1
    (diagnostic,) = result.diagnostics
    assert diagnostic.level is Level.ERROR
    assert diagnostic.code == "yaml-duplicate-key"
    assert diagnostic.position == at(5, 5)
    assert '"c"' in diagnostic.message
    assert "line 3" in diagnostic.message


def test_duplicate_key_in_a_flow_mapping_inside_a_list() -> None:
    result = load_text("items:\n  - {x: 1, y: 2, x: 3}\n", FILE)
    assert [(d.code, d.position) for d in result.diagnostics] == [("yaml-duplicate-key", at(2, 18))]


def test_top_level_duplicate_key_across_lines() -> None:
    result = load_text("apiVersion: v1\nkind: A\napiVersion: v2\n", FILE)
    assert [(d.code, d.position) for d in result.diagnostics] == [("yaml-duplicate-key", at(3, 1))]
    assert "line 1" in result.diagnostics[0].message


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("ok: 1\n1: x\n", 2, 1),
        ("ok: 1\nnull: x\n", 2, 1),
        ("ok: 1\ntrue: x\n", 2, 1),
        ("ok: 1\n2.5: x\n", 2, 1),
        ("ok: 1\n? [a, b]\n: x\n", 2, 3),
        ("ok: 1\n? {a: b}\n: x\n", 2, 3),
        ("outer:\n  ok: 1\n  7: x\n", 3, 3),
    ],
)
def test_non_string_keys_are_errors_at_the_key(text: str, line: int, column: int) -> None:
    result = load_text(text, FILE)
    assert [(d.level, d.code, d.position) for d in result.diagnostics] == [
        (Level.ERROR, "yaml-key", at(line, column))
    ]


def test_quoted_numeric_keys_are_strings() -> None:
    doc = only_document(load_text("\"1\": x\n'true': y\n", FILE))
    assert doc.content == {"1": "x", "true": "y"}


# --- hostile input ---------------------------------------------------------------------------------


def test_billion_laughs_alias_bomb_is_refused_before_it_expands() -> None:
    # Unbounded, the expansion would never finish; the diagnostic proves the loader stopped counting at
    # its limit (timings are for `make bench`, not unit tests).
    result = load_text(BILLION_LAUGHS, FILE)
    assert result.documents == []
    assert len(result.diagnostics) == 1
    (diagnostic,) = result.diagnostics
    assert diagnostic.level is Level.ERROR
    assert diagnostic.code == "yaml-too-large"
    assert diagnostic.position.file == FILE
    assert diagnostic.position.line in range(1, 10)
    assert "alias" in diagnostic.message


def test_alias_bomb_does_not_swallow_the_following_documents() -> None:
    result = load_text(BILLION_LAUGHS + "---\nkind: After\n", FILE)
    assert codes(result.diagnostics) == ["yaml-too-large"]
    assert [(d.index, d.content) for d in result.documents] == [(1, {"kind": "After"})]
    assert result.documents[0].start == at(11, 1)


def test_modest_alias_reuse_is_expanded() -> None:
    doc = only_document(load_text("a: &x [1, 2]\nb: *x\nc: {k: *x}\n", FILE))
    assert doc.content == {"a": [1, 2], "b": [1, 2], "c": {"k": [1, 2]}}


def _nested_lists(depth: int) -> str:
    return "x: " + "[" * depth + "]" * depth + "\n"


def test_nesting_up_to_the_limit_is_accepted() -> None:
    doc = only_document(load_text(_nested_lists(MAX_DEPTH), FILE))
    value = doc.content["x"]
    for _ in range(MAX_DEPTH - 1):
        value = value[0]
    assert value == []


def test_nesting_beyond_the_limit_is_too_large_at_the_first_node_too_deep() -> None:
    result = load_text(_nested_lists(MAX_DEPTH + 1), FILE)
    assert result.documents == []
    # "x: " is three characters; the 65th "[" is at column 3 + 65.
    assert [(d.code, d.position) for d in result.diagnostics] == [
        ("yaml-too-large", at(1, 3 + MAX_DEPTH + 1))
    ]
    assert str(MAX_DEPTH) in result.diagnostics[0].message


def test_deep_block_mappings_are_too_large() -> None:
    depth = MAX_DEPTH + 2
    text = "".join("  " * i + f"k{i}:\n" for i in range(depth)) + "  " * depth + "leaf: 1\n"
    result = load_text(text, FILE)
    assert result.documents == []
    # The value of k64 is the 65th nested value; it starts at key k65 (line 66, indented 130 spaces).
    assert [(d.code, d.position) for d in result.diagnostics] == [("yaml-too-large", at(66, 131))]


def test_thousands_of_nesting_levels_finish_with_a_diagnostic() -> None:
    result = load_text(_nested_lists(5_000), FILE)
    assert codes(result.diagnostics) == ["yaml-too-large"]
    assert result.documents == []


_DEEP_CHILD = """
import sys
from nauthera.compile.loading import load_text
result = load_text(sys.stdin.read(), "deep.yaml")
print(",".join(d.code for d in result.diagnostics))
"""


def _limit_stack() -> None:
    # Pin the child's stack at the common 8 MiB default so the outcome does not depend on `ulimit -s`.
    _soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    limit = 8 * 1024 * 1024
    if hard == resource.RLIM_INFINITY or hard >= limit:
        resource.setrlimit(resource.RLIMIT_STACK, (limit, hard))


def test_very_deep_nesting_does_not_crash_the_process() -> None:
    text = "- " * 50_000 + "x\n"
    completed = subprocess.run(
        [sys.executable, "-c", _DEEP_CHILD],
        input=text,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        preexec_fn=_limit_stack,
    )
    assert completed.returncode == 0, f"exit {completed.returncode}: {completed.stderr[-500:]}"
    assert completed.stdout.strip() == "yaml-too-large"


# --- syntax and values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("a: b: c\n", 1, 5),
        ("a:\n\t- x\n", 2, 1),
        ("ok: 1\nlist: [1, 2\nnext: 3\n", 3, 5),
    ],
)
def test_malformed_yaml_is_a_syntax_error_with_position(text: str, line: int, column: int) -> None:
    result = load_text(text, FILE)
    assert len(result.diagnostics) == 1
    (diagnostic,) = result.diagnostics
    assert (diagnostic.level, diagnostic.code, diagnostic.position) == (
        Level.ERROR,
        "yaml-syntax",
        at(line, column),
    )
    assert diagnostic.message.startswith("invalid YAML: ")
    assert len(diagnostic.message) > len("invalid YAML: ")


def test_syntax_error_in_a_later_document_keeps_the_earlier_ones() -> None:
    result = load_text("kind: A\n---\na: b: c\n", FILE)
    assert [d.content for d in result.documents] == [{"kind": "A"}]
    assert [(d.code, d.position) for d in result.diagnostics] == [("yaml-syntax", at(3, 5))]


@pytest.mark.parametrize("literal", [".nan", ".NaN", ".inf", "-.Inf", "+.INF"])
def test_non_finite_floats_are_value_errors(literal: str) -> None:
    result = load_text(f"ok: 1\nvalue: {literal}\n", FILE)
    assert [(d.level, d.code, d.position) for d in result.diagnostics] == [
        (Level.ERROR, "yaml-value", at(2, 8))
    ]
    assert literal in result.diagnostics[0].message
    assert result.documents[0].content["ok"] == 1


def test_quoted_nan_is_just_a_string() -> None:
    assert only_document(load_text('value: ".nan"\n', FILE)).content == {"value": ".nan"}


@pytest.mark.parametrize(
    "written",
    ["2024-01-02", "2001-12-14t21:59:43.10-05:00", "2001-12-14 21:59:43.10 -5", "2002-12-14"],
)
def test_timestamps_keep_the_text_written(written: str) -> None:
    assert only_document(load_text(f"when: {written}\n", FILE)).content == {"when": written}


def test_scalars_become_json_types() -> None:
    doc = only_document(load_text("i: 7\nf: 1.5\nb: true\nn: null\ne:\ns: '7'\nh: 0x1F\n", FILE))
    assert doc.content == {"i": 7, "f": 1.5, "b": True, "n": None, "e": None, "s": "7", "h": 31}
    assert type(doc.content["i"]) is int
    assert type(doc.content["b"]) is bool


def _crashes(text: str) -> str | None:
    try:
        load_text(text, FILE)
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("base: &b {x: 1}\nmerged: {<<: *b}\n", 2),  # YAML merge key, common in hand-written manifests
        ("value: !custom thing\n", 1),
        ("value: =\n", 1),  # PyYAML resolves a bare '=' to the YAML 1.1 'value' tag
        ("value: !!int twelve\n", 1),
        ("value: !!bool maybe\n", 1),
        ("value: !!timestamp 2001-13-45\n", 1),
    ],
)
def test_unconstructible_scalars_become_diagnostics(text: str, line: int) -> None:
    assert _crashes(text) is None
    result = load_text(text, FILE)
    errors = [d for d in result.diagnostics if d.level is Level.ERROR]
    if errors:  # either an error that points at the offending node ...
        assert [d.position.line for d in errors] == [line]
    else:  # ... or a document that loaded cleanly (e.g. the merge applied, '=' read as a string)
        assert len(result.documents) == 1
        assert result.documents[0].content


# --- files: encodings ------------------------------------------------------------------------------


def test_non_utf8_byte_is_an_encoding_error_at_its_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"kind: A\nname: caf\xe9\n")
    result = load_file(path)
    assert result.documents == []
    assert [(d.level, d.code, d.position) for d in result.diagnostics] == [
        (Level.ERROR, "encoding", Position(str(path), 2, 10))
    ]
    assert "0xe9" in result.diagnostics[0].message


def test_invalid_utf8_sequence_on_the_first_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"ab: \xc3\x28\n")
    result = load_file(path, display="shown.yaml")
    assert [(d.code, d.position) for d in result.diagnostics] == [("encoding", Position("shown.yaml", 1, 5))]


def test_utf8_bom_is_accepted_and_does_not_shift_columns(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbfkind: A\nname: x\n")
    result = load_file(path)
    assert result.diagnostics == []
    (doc,) = result.documents
    assert doc.content == {"kind": "A", "name": "x"}
    assert doc.key_position(("kind",)) == Position(str(path), 1, 1)
    assert doc.value_position(("kind",)) == Position(str(path), 1, 7)


def test_load_file_uses_the_display_name(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("kind: A\n", encoding="utf-8")
    (doc,) = load_file(path, display="policies/p.yaml").documents
    assert doc.file == "policies/p.yaml"
    assert doc.start == Position("policies/p.yaml", 1, 1)


def test_unreadable_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        load_file(tmp_path / "absent.yaml")


# --- discover --------------------------------------------------------------------------------------


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("kind: A\n", encoding="utf-8")


def test_discover_recurses_sorted_and_takes_yaml_and_yml_only(tmp_path: Path) -> None:
    _touch(
        tmp_path,
        "b.yaml",
        "a.yml",
        "notes.txt",
        "data.json",
        "yaml",
        "sub/c.yaml",
        "sub/deeper/d.yml",
        "sub/deeper/e.yaml.bak",
        "z/zz.yaml",
    )
    found = [p.relative_to(tmp_path).as_posix() for p in discover([tmp_path])]
    assert found == ["a.yml", "b.yaml", "sub/c.yaml", "sub/deeper/d.yml", "z/zz.yaml"]


def test_discover_keeps_argument_order_and_yields_each_file_once(tmp_path: Path) -> None:
    _touch(tmp_path, "one/a.yaml", "two/b.yaml", "two/c.yaml")
    found = list(discover([tmp_path / "two", tmp_path / "one", tmp_path / "two" / "b.yaml", tmp_path]))
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["two/b.yaml", "two/c.yaml", "one/a.yaml"]


def test_discover_accepts_a_single_file(tmp_path: Path) -> None:
    _touch(tmp_path, "only.yml")
    assert list(discover([tmp_path / "only.yml"])) == [tmp_path / "only.yml"]


def test_discover_missing_path_is_an_input_error(tmp_path: Path) -> None:
    _touch(tmp_path, "a.yaml")
    missing = tmp_path / "nope"
    with pytest.raises(InputError, match="no such file or directory") as raised:
        list(discover([tmp_path, missing]))
    assert str(missing) in str(raised.value)


def test_load_paths_collects_documents_and_diagnostics_from_every_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("kind: A\n---\nkind: B\n", encoding="utf-8")
    (tmp_path / "b.yml").write_text("a: 1\na: 2\n", encoding="utf-8")
    (tmp_path / "c.yaml").write_bytes(b"x: \xff\n")
    result = load_paths([tmp_path])
    assert [(Path(d.file).name, d.index, d.content) for d in result.documents] == [
        ("a.yaml", 0, {"kind": "A"}),
        ("a.yaml", 1, {"kind": "B"}),
        ("b.yml", 0, {"a": 1}),
    ]
    assert sorted((Path(d.position.file).name, d.code) for d in result.diagnostics) == [
        ("b.yml", "yaml-duplicate-key"),
        ("c.yaml", "encoding"),
    ]


@pytest.mark.parametrize("character", ["\x1f", "\x00", "\x7f", "\ufffe"])
def test_a_control_character_is_a_diagnostic_at_its_position(character: str) -> None:
    """Found by fuzzing (issue 16): YAML's reader refuses these with an error that is not a
    MarkedYAMLError, which used to escape as a traceback."""
    result = load_text(f"kind: AuthPolicy\nname: a{character}b\n", FILE)
    assert not result.documents
    [diagnostic] = result.diagnostics
    assert diagnostic.code == "yaml-syntax" and (diagnostic.position.line, diagnostic.position.column) == (
        2,
        8,
    )
    assert f"U+{ord(character):04X}" in diagnostic.message

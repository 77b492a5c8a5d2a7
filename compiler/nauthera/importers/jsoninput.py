"""JSON input that can say where each of its values is (`file:line:column`), without slowing the parse.

Realm exports can be large (users included), so the document is parsed once by the C decoder; positions
are found only for the few values a finding is about, by walking the text of the containers on their
path and skipping every sibling with the same C decoder.
"""

from __future__ import annotations

import bisect
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from json.decoder import WHITESPACE, scanstring  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any

from nauthera.compile.diagnostics import Diagnostic, Level, Position
from nauthera.compile.loading import JsonPath, decode_utf8
from nauthera.errors import InputError

STDIN = "-"
STDIN_NAME = "<stdin>"
_DECODER = json.JSONDecoder()


def _skip(text: str, index: int) -> int:
    """The index of the first character at or after `index` that is not JSON whitespace."""
    return int(WHITESPACE.match(text, index).end())


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


@dataclass
class JsonInput:
    """One parsed JSON file and a lazily built map from JSON paths to offsets in its text."""

    file: str
    text: str
    value: Any
    _values: dict[JsonPath, int] = field(default_factory=dict, repr=False)
    _keys: dict[JsonPath, int] = field(default_factory=dict, repr=False)
    _indexed: set[JsonPath] = field(default_factory=set, repr=False)
    _line_starts: list[int] = field(default_factory=list, repr=False)

    @property
    def stem(self) -> str:
        return "stdin" if self.file == STDIN_NAME else Path(self.file).stem

    def value_position(self, path: Sequence[str | int]) -> Position:
        """Where the value at `path` starts, or its nearest ancestor when it is absent."""
        return self._position(self._offset(tuple(path), self._values))

    def key_position(self, path: Sequence[str | int]) -> Position:
        """Where the key naming `path` is (for list items: where the item is)."""
        return self._position(self._offset(tuple(path), self._keys))

    def _offset(self, path: JsonPath, table: dict[JsonPath, int]) -> int:
        if not path:
            return _skip(self.text, 0)
        parent = path[:-1]
        parent_offset = self._offset(parent, self._values)
        if parent not in self._indexed:
            self._index(parent, parent_offset)
        return table.get(path, self._values.get(path, parent_offset))

    def _index(self, path: JsonPath, start: int) -> None:
        """Record where every child of the container at `start` begins; skip their contents in C."""
        self._indexed.add(path)
        text, opening = self.text, self.text[start : start + 1]
        if opening not in ("{", "["):
            return
        index, position = _skip(text, start + 1), 0
        while text[index] not in "}]":
            key: str | int = position
            key_offset = index
            if opening == "{":
                key, index = scanstring(text, index + 1)
                index = _skip(text, index) + 1  # past the ':'
                index = _skip(text, index)
            self._keys[(*path, key)] = key_offset
            self._values[(*path, key)] = index
            _, index = _DECODER.raw_decode(text, index)
            index = _skip(text, index)
            if text[index] == ",":
                index = _skip(text, index + 1)
            position += 1

    def _position(self, offset: int) -> Position:
        if not self._line_starts:
            self._line_starts = [0, *(match.end() for match in re.finditer("\n", self.text))]
        line = bisect.bisect_right(self._line_starts, offset)
        return Position(self.file, line, offset - self._line_starts[line - 1] + 1)


def read_json(path: Path) -> JsonInput | Diagnostic:
    """Parse one file (`-` is standard input): unreadable files are I/O errors, bad text a Diagnostic."""
    file = STDIN_NAME if str(path) == STDIN else str(path)
    try:
        data = sys.stdin.buffer.read() if str(path) == STDIN else path.read_bytes()
    except OSError as error:
        raise InputError(f"{file}: cannot read: {error.strerror or error}") from error
    text = decode_utf8(data, file)
    if isinstance(text, Diagnostic):
        return text
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        return Diagnostic(
            Level.ERROR,
            Position(file, error.lineno, error.colno),
            "not-json",
            f"not JSON: {error.msg}; export the data as JSON",
        )
    except (ValueError, RecursionError) as error:
        problem = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        return Diagnostic(Level.ERROR, Position(file, 1, 1), "not-json", f"not JSON: {problem}")
    return JsonInput(file, text, value)

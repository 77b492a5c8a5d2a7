"""Load stage: multi-document YAML into JSON-like values that remember where every key and value came from.

We construct values ourselves from PyYAML's node graph instead of using `safe_load`, because that gives
exact positions for every node, rejects duplicate keys, and bounds the work an alias bomb can cause.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nauthera.compile.diagnostics import Diagnostic, Level, Position
from nauthera.errors import InputError

JsonPath = tuple[str | int, ...]
#: A 1-based (line, column) in the document's file; a `Position` is made only when one is reported.
Place = tuple[int, int]

#: Values one document may expand to; aliases can multiply a small file into an enormous one.
MAX_NODES_PER_DOCUMENT = 200_000
#: Nesting depth beyond which a document is certainly not a Kubernetes object.
MAX_DEPTH = 64
#: Above this bound on nesting we do not hand text to libyaml at all: its C composer recurses per level
#: and overflows the stack (a crash, not an exception) at some tens of thousands of levels.
MAX_SCANNED_DEPTH = 1_000
_MERGE_TAG = "tag:yaml.org,2002:merge"
_NULL_TAG = "tag:yaml.org,2002:null"
_STR_TAG = "tag:yaml.org,2002:str"
YAML_SUFFIXES = (".yaml", ".yml")

_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_scalar_constructor = yaml.constructor.SafeConstructor()


@dataclass(frozen=True)
class SourceDocument:
    """One YAML document with the places of its keys and values, addressed by JSON path.

    Places are plain (line, column) pairs: a document records one for every node, and only the few
    that end up in a diagnostic become `Position`s.
    """

    file: str
    index: int
    content: Any
    value_places: Mapping[JsonPath, Place] = field(repr=False)
    key_places: Mapping[JsonPath, Place] = field(repr=False)
    #: What made this document unreadable as written (a duplicate key, a value that cannot be read):
    #: its content is not what the author meant, so it must never be allowed or compiled.
    errors: tuple[Diagnostic, ...] = field(default=(), repr=False)

    @property
    def start(self) -> Position:
        return self._position(self.value_places[()])

    def value_position(self, path: Sequence[str | int]) -> Position:
        """Where the value at `path` is, or its nearest ancestor when the value is absent."""
        key = tuple(path)
        while key not in self.value_places:
            key = key[:-1]
        return self._position(self.value_places[key])

    def key_position(self, path: Sequence[str | int]) -> Position:
        """Where the key naming `path` is; for list items and the root, where the value is."""
        key = tuple(path)
        if key in self.key_places:
            return self._position(self.key_places[key])
        return self.value_position(key)

    def _position(self, place: Place) -> Position:
        return Position(self.file, place[0], place[1])


class _DocumentTooLargeError(Exception):
    def __init__(self, position: Position, reason: str) -> None:
        super().__init__(reason)
        self.position = position
        self.reason = reason


class _Builder:
    """Turns one composed node graph into plain values, recording positions and collecting problems."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.values: dict[JsonPath, Place] = {}
        self.keys: dict[JsonPath, Place] = {}
        self.diagnostics: list[Diagnostic] = []
        self.visited = 0

    def position(self, mark: Any) -> Position:
        return Position(self.file, mark.line + 1, mark.column + 1)

    def build(self, node: yaml.Node, path: JsonPath) -> Any:
        self.visited += 1
        if self.visited > MAX_NODES_PER_DOCUMENT:
            raise _DocumentTooLargeError(
                self.position(node.start_mark),
                f"document expands to more than {MAX_NODES_PER_DOCUMENT} values; "
                "remove nested YAML aliases (*name) or split the document",
            )
        if len(path) > MAX_DEPTH:
            raise _DocumentTooLargeError(
                self.position(node.start_mark), f"document is nested deeper than {MAX_DEPTH} levels"
            )
        mark = node.start_mark
        self.values[path] = (mark.line + 1, mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, index)) for index, item in enumerate(node.value)]
        return self._scalar(node)

    def _mapping(self, node: yaml.MappingNode, path: JsonPath) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            mark = key_node.start_mark
            key_place = (mark.line + 1, mark.column + 1)
            if key_node.tag == _MERGE_TAG:
                self.diagnostics.append(
                    Diagnostic(
                        Level.ERROR,
                        Position(self.file, *key_place),
                        "yaml-merge-key",
                        "YAML merge keys (<<) are not supported (Kubernetes "
                        "does not read them either); write the keys out",
                    )
                )
                continue
            key = self._scalar(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                self.diagnostics.append(
                    Diagnostic(
                        Level.ERROR,
                        Position(self.file, *key_place),
                        "yaml-key",
                        "mapping keys must be strings",
                    )
                )
                continue
            if key in result:
                first_line = self.keys[(*path, key)][0]
                self.diagnostics.append(
                    Diagnostic(
                        Level.ERROR,
                        Position(self.file, *key_place),
                        "yaml-duplicate-key",
                        f'duplicate key "{key}" (first defined at line {first_line}); remove one of them',
                    )
                )
                continue
            self.keys[(*path, key)] = key_place
            result[key] = self.build(value_node, (*path, key))
        return result

    def _scalar(self, node: yaml.Node) -> Any:
        if node.tag == _STR_TAG:  # most scalars: no constructor call needed
            return node.value
        try:
            value = _scalar_constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, KeyError, OverflowError):
            self.diagnostics.append(
                Diagnostic(
                    Level.ERROR,
                    self.position(node.start_mark),
                    "yaml-value",
                    f"cannot read {node.value!r} as {node.tag}; remove the tag or quote the value",
                )
            )
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self.diagnostics.append(
                Diagnostic(
                    Level.ERROR,
                    self.position(node.start_mark),
                    "yaml-value",
                    f'"{node.value}" is not representable in JSON; quote it if a string is meant',
                )
            )
            return None
        if value is None or isinstance(value, bool | int | float | str):
            return value
        # Timestamps, binary and other YAML-only types: keep the text the user wrote.
        return str(node.value)


@dataclass
class LoadResult:
    documents: list[SourceDocument] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)


def decode_utf8(data: bytes, file: str) -> str | Diagnostic:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        line_start = data.rfind(b"\n", 0, error.start) + 1
        column = len(data[line_start : error.start].decode("utf-8", errors="replace")) + 1
        return Diagnostic(
            Level.ERROR,
            Position(file, line, column),
            "encoding",
            f"file is not valid UTF-8 (byte 0x{data[error.start]:02x}); save it as UTF-8",
        )


def nesting_bound(text: str) -> int:
    """An upper bound on how deeply `text` nests: indentation plus indicators plus open flow brackets.

    Quotes are tracked roughly (no escapes); overcounting only sends odd text to the depth error.
    """
    deepest, flow = 0, 0
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        indicators = 0
        while stripped[:2] in ("- ", "? ", ": ") or stripped == "-":
            indicators += 1
            stripped = stripped[2:].lstrip(" ")
        quote = ""
        if not flow and not any(bracket in stripped for bracket in "[{"):
            deepest = max(deepest, len(line) - len(line.lstrip(" ")) + indicators)
            continue
        base = len(line) - len(line.lstrip(" ")) + indicators
        deepest = max(deepest, base + flow)
        for char in stripped:
            if quote:
                quote = "" if char == quote else quote
            elif char in "'\"":
                quote = char
            elif char in "[{":
                flow += 1
                deepest = max(deepest, base + flow)  # `[[[…]]]` on one line nests as deep as it opens
            elif char in "]}":
                flow = max(flow - 1, 0)
            elif char == "#":
                break
    return deepest


#: A run of indentation and block indicators this long, or this many flow brackets, could nest deeply.
_DEEP_RUN = re.compile(rf"[ ?:-]{{{MAX_SCANNED_DEPTH // 2},}}")


def _may_nest_too_deeply(text: str) -> bool:
    """An overestimate of `nesting_bound(text) > MAX_SCANNED_DEPTH` at C speed, for the common case.

    A line's indentation plus indicators is one run of spaces, `-`, `?` and `:`, and open flow
    brackets are at most all of them: below half the limit each, the bound is below the limit.
    """
    brackets = text.count("[") + text.count("{")
    return brackets >= MAX_SCANNED_DEPTH // 2 or _DEEP_RUN.search(text) is not None


def load_text(text: str, file: str) -> LoadResult:
    """Parse every document of one YAML text."""
    result = LoadResult()
    if _may_nest_too_deeply(text) and nesting_bound(text) > MAX_SCANNED_DEPTH:
        result.diagnostics.append(
            Diagnostic(
                Level.ERROR,
                Position(file, 1, 1),
                "yaml-too-large",
                f"YAML is nested more than {MAX_SCANNED_DEPTH} levels deep",
            )
        )
        return result
    stream = yaml.compose_all(text, Loader=_SafeLoader)
    index = 0
    while True:
        try:
            node = next(stream)
        except StopIteration:
            break
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            position = Position(file, mark.line + 1, mark.column + 1) if mark else Position(file, 1, 1)
            problem = " ".join(part for part in (error.context, error.problem) if part)
            result.diagnostics.append(
                Diagnostic(Level.ERROR, position, "yaml-syntax", f"invalid YAML: {problem or error}")
            )
            break
        except yaml.reader.ReaderError as error:  # a character YAML does not allow, found while reading
            before = text[: error.position]
            position = Position(file, before.count("\n") + 1, len(before) - before.rfind("\n"))
            result.diagnostics.append(
                Diagnostic(
                    Level.ERROR,
                    position,
                    "yaml-syntax",
                    f"invalid YAML: character U+{error.character:04X} is not allowed (YAML takes no control "
                    "characters but tab, line feed and carriage return); remove it",
                )
            )
            break
        except RecursionError:
            result.diagnostics.append(
                Diagnostic(Level.ERROR, Position(file, 1, 1), "yaml-too-large", "YAML is nested too deeply")
            )
            break
        if node is None or (
            isinstance(node, yaml.ScalarNode)
            and node.tag == _NULL_TAG
            and node.value in ("", "~", "null", "Null", "NULL")
        ):
            continue
        builder = _Builder(file)
        try:
            content = builder.build(node, ())
        except _DocumentTooLargeError as error:
            result.diagnostics.append(Diagnostic(Level.ERROR, error.position, "yaml-too-large", error.reason))
            index += 1
            continue
        result.diagnostics.extend(builder.diagnostics)
        errors = tuple(builder.diagnostics)
        result.documents.append(SourceDocument(file, index, content, builder.values, builder.keys, errors))
        index += 1
    return result


def load_file(path: Path, display: str | None = None) -> LoadResult:
    """Read and parse one file; unreadable files are I/O errors, bad content becomes diagnostics."""
    file = display or str(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputError(f"{file}: cannot read: {error.strerror or error}") from error
    text = decode_utf8(data, file)
    if isinstance(text, Diagnostic):
        return LoadResult(diagnostics=[text])
    return load_text(text, file)


def _is_yaml_name(name: str) -> bool:
    """`Path(name).suffix` is .yaml or .yml (a name that is only the suffix, like `.yaml`, has none)."""
    return name.endswith(YAML_SUFFIXES) and name.rfind(".") > 0


def _is_folder(root: Path) -> bool:
    """Whether a PATH from the command line is a folder; a missing or unreachable one is an I/O error."""
    try:
        return stat.S_ISDIR(root.stat().st_mode)
    except FileNotFoundError:
        raise InputError(f"{root}: no such file or directory") from None
    except OSError as error:
        raise InputError(f"{root}: cannot read: {error.strerror or error}") from error


def _yaml_files(folder: Path, unreadable: list[str]) -> list[tuple[tuple[str, ...], str, str]]:
    """(relative parts, path, real path) of every YAML file under `folder`, sorted as paths sort.

    Symlinked folders are followed, as `opa build` does, each real folder once (the first in path
    order), so a link back up cannot loop. A folder that cannot be listed is added to `unreadable`.
    Every real folder's path is known from its parent's, so only symlinks need `realpath`, which costs
    a system call per path component.
    """
    found: list[tuple[tuple[str, ...], str, str]] = []
    visited: set[str] = set()
    pending: list[tuple[tuple[str, ...], str, str]] = [((), str(folder), os.path.realpath(folder))]
    while pending:
        parts, current, real = pending.pop()
        if real in visited:
            continue
        visited.add(real)
        try:
            entries = sorted(os.scandir(current), key=lambda entry: entry.name, reverse=True)
        except OSError as error:
            unreadable.append(f"{current}: cannot read: {error.strerror or error}")
            continue
        for entry in entries:  # reversed, so that the stack pops folders in path order
            linked = entry.is_symlink()
            if entry.is_dir():
                target = os.path.realpath(entry.path) if linked else f"{real}/{entry.name}"
                pending.append(((*parts, entry.name), entry.path, target))
            elif _is_yaml_name(entry.name) and entry.is_file():
                target = os.path.realpath(entry.path) if linked else f"{real}/{entry.name}"
                found.append(((*parts, entry.name), entry.path, target))
    found.sort()
    return found


def walk_paths(paths: Sequence[Path]) -> list[tuple[tuple[int, tuple[str, ...]], Path]]:
    """YAML files under each path with their order keys: argument order, then path order within a
    folder; a file reachable twice counts once, where it is first met.

    A file named on the command line is read whatever its suffix; folders contribute `*.yaml`/`*.yml`.
    A missing path, or any folder that cannot be listed, is an I/O error: skipping it would silently
    drop the policies (or clients) inside.
    """
    seen: set[str] = set()
    found = []
    unreadable: list[str] = []
    for index, root in enumerate(paths):
        if _is_folder(root):
            candidates = _yaml_files(root, unreadable)
        else:
            candidates = [((), str(root), os.path.realpath(root))]
        for parts, path, real in candidates:
            if real not in seen:
                seen.add(real)
                found.append(((index, parts), Path(path)))
    if unreadable:
        raise InputError("; ".join(unreadable))
    return found


def discover(paths: Sequence[Path]) -> list[Path]:
    """The YAML files under each path, in a stable order, each file once (see `walk_paths`)."""
    return [path for _, path in walk_paths(paths)]


def load_paths(paths: Sequence[Path]) -> LoadResult:
    """Load every YAML document under the given files and directories."""
    total = LoadResult()
    for file in discover(paths):
        loaded = load_file(file)
        total.documents.extend(loaded.documents)
        total.diagnostics.extend(loaded.diagnostics)
    return total

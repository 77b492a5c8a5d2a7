"""SPEC glob semantics, compiled once into RE2 regexes that OPA and Gatekeeper evaluate as data.

Only `*` is special. Every other character is escaped as `\\x{HEX}`, which RE2 and Python both read
literally, so no policy value can change a regex's meaning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ANY_RUN = "(?s:.*)"
_ONE_LABEL = "[^.]+"


_SPECIAL = re.compile(r"[^A-Za-z0-9]")


def _escape(match: re.Match[str]) -> str:
    return f"\\x{{{ord(match.group()):X}}}"


def _literal(text: str) -> str:
    """`text` as RE2 that matches it literally: every character but ASCII letters and digits escaped."""
    return _SPECIAL.sub(_escape, text)


def glob_regex(pattern: str, wildcard: str) -> str:
    """Anchored regex for `pattern` where each `*` becomes `wildcard`."""
    return "^" + wildcard.join(_literal(part) for part in pattern.split("*")) + "$"


@dataclass(frozen=True)
class PatternSet:
    """Exact entries (looked up) and glob entries (matched), as the Rego consumes them."""

    source: tuple[str, ...]
    exact: frozenset[str]
    regexes: tuple[str, ...]
    one_label: bool

    def matches(self, value: str) -> bool:
        """The regexes' meaning, decided here without them (the compiler checks thousands of values)."""
        if value in self.exact:
            return True
        globs = (p.split("*") for p in self.source if "*" in p)
        if self.one_label:
            return any(_one_label_match(parts, value) for parts in globs)
        return any(_any_run_match(parts, value) for parts in globs)


def _any_run_match(parts: list[str], value: str) -> bool:
    """`a*b*c` with `*` matching any run: prefix, suffix, and the middle parts in order between them."""
    head, *middle, tail = parts
    if len(value) < len(head) + len(tail) or not value.startswith(head) or not value.endswith(tail):
        return False
    position, end = len(head), len(value) - len(tail)
    for part in middle:
        found = value.find(part, position, end)
        if found < 0:
            return False
        position = found + len(part)
    return True


def _one_label_match(parts: list[str], value: str) -> bool:
    """`*` matching one or more characters other than `.`, as `[^.]+` does."""
    head, *rest = parts
    if not value.startswith(head):
        return False
    remainder = value[len(head) :]
    if not rest:
        return remainder == ""
    label_end = remainder.find(".")
    longest = len(remainder) if label_end < 0 else label_end
    return any(_one_label_match(rest, remainder[size:]) for size in range(1, longest + 1))


def pattern_set(patterns: tuple[str, ...], wildcard: str) -> PatternSet:
    exact = frozenset(p for p in patterns if "*" not in p)
    regexes = tuple(glob_regex(p, wildcard) for p in patterns if "*" in p)
    return PatternSet(patterns, exact, regexes, wildcard == _ONE_LABEL)


def text_globs(patterns: tuple[str, ...]) -> PatternSet:
    """Namespaces and scopes: `*` matches any run of characters, dots included."""
    return pattern_set(patterns, _ANY_RUN)


def host_globs(patterns: tuple[str, ...]) -> PatternSet:
    """Redirect hosts: matched lower-cased, `*` stands for exactly one DNS label."""
    return pattern_set(tuple(p.lower() for p in patterns), _ONE_LABEL)


def scheme_globs(patterns: tuple[str, ...]) -> PatternSet:
    """Private-use URI schemes: matched lower-cased, `*` matches any run of characters, dots included."""
    return pattern_set(tuple(p.lower() for p in patterns), _ANY_RUN)


def literal_prefix(pattern: str) -> str:
    """The part before the first `*`: what an index can look a namespace glob up by."""
    return pattern.split("*", 1)[0]

"""SPEC glob semantics, compiled once into RE2 regexes that OPA and Gatekeeper evaluate as data.

Only `*` is special. Every other character is escaped as `\\x{HEX}`, which RE2 and Python both read
literally, so no policy value can change a regex's meaning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ANY_RUN = "(?s:.*)"
_ONE_LABEL = "[^.]+"


def _literal(text: str) -> str:
    return "".join(ch if ch.isascii() and ch.isalnum() else f"\\x{{{ord(ch):X}}}" for ch in text)


def glob_regex(pattern: str, wildcard: str) -> str:
    """Anchored regex for `pattern` where each `*` becomes `wildcard`."""
    return "^" + wildcard.join(_literal(part) for part in pattern.split("*")) + "$"


@dataclass(frozen=True)
class PatternSet:
    """Exact entries (looked up) and glob entries (matched), as the Rego consumes them."""

    source: tuple[str, ...]
    exact: frozenset[str]
    regexes: tuple[str, ...]

    def matches(self, value: str) -> bool:
        return value in self.exact or any(_python_re(rx).fullmatch(value) for rx in self.regexes)


def _python_re(regex: str) -> re.Pattern[str]:
    # RE2 reads \x{HEX} as one character; Python spells that differently, so re-escape for local use.
    return re.compile(re.sub(r"\\x\{([0-9A-F]+)\}", lambda m: re.escape(chr(int(m.group(1), 16))), regex))


def pattern_set(patterns: tuple[str, ...], wildcard: str) -> PatternSet:
    exact = frozenset(p for p in patterns if "*" not in p)
    regexes = tuple(glob_regex(p, wildcard) for p in patterns if "*" in p)
    return PatternSet(patterns, exact, regexes)


def text_globs(patterns: tuple[str, ...]) -> PatternSet:
    """Namespaces and scopes: `*` matches any run of characters, dots included."""
    return pattern_set(patterns, _ANY_RUN)


def host_globs(patterns: tuple[str, ...]) -> PatternSet:
    """Redirect hosts: matched lower-cased, `*` stands for exactly one DNS label."""
    return pattern_set(tuple(p.lower() for p in patterns), _ONE_LABEL)


def literal_prefix(pattern: str) -> str:
    """The part before the first `*`: what an index can look a namespace glob up by."""
    return pattern.split("*", 1)[0]

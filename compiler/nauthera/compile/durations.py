"""Go's `time.ParseDuration`, ported exactly so the compiler and OPA agree on every duration."""

from __future__ import annotations

import functools

_UNITS_NS: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign
    "\u03bcs": 1_000,  # Greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_MAX_U63 = 1 << 63
_DIGITS = "0123456789"


class DurationError(ValueError):
    """The text is not a Go duration."""


def _leading_int(text: str) -> tuple[int, str]:
    value = 0
    index = 0
    while index < len(text) and text[index] in _DIGITS:
        value = value * 10 + int(text[index])
        if value > _MAX_U63:
            raise DurationError("overflows a 64-bit duration")
        index += 1
    return value, text[index:]


def _leading_fraction(text: str) -> tuple[int, float, str]:
    value, scale, overflow, index = 0, 1.0, False, 0
    while index < len(text) and text[index] in _DIGITS:
        if not overflow:
            candidate = value * 10 + int(text[index])
            if candidate > _MAX_U63:
                overflow = True
            else:
                value, scale = candidate, scale * 10
        index += 1
    return value, scale, text[index:]


@functools.lru_cache(maxsize=4096)
def parse_duration_ns(text: str) -> int:
    """Return nanoseconds for a Go duration such as `15m`, `1h30m` or `1.5h`; raise DurationError.

    Cached: a repository repeats a handful of durations thousands of times, and each is parsed
    twice (validation, then the model)."""
    rest = text
    negative = False
    if rest[:1] in ("-", "+"):
        negative = rest[0] == "-"
        rest = rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise DurationError("is empty")
    total = 0
    while rest:
        if rest[0] != "." and rest[0] not in _DIGITS:
            raise DurationError("must start each component with a number")
        before = len(rest)
        whole, rest = _leading_int(rest)
        has_whole = before != len(rest)
        fraction, scale, has_fraction = 0, 1.0, False
        if rest.startswith("."):
            rest = rest[1:]
            before = len(rest)
            fraction, scale, rest = _leading_fraction(rest)
            has_fraction = before != len(rest)
        if not has_whole and not has_fraction:
            raise DurationError("has a component without digits")
        unit_end = 0
        while unit_end < len(rest) and rest[unit_end] != "." and rest[unit_end] not in _DIGITS:
            unit_end += 1
        if unit_end == 0:
            raise DurationError("is missing a unit (ns, us, ms, s, m, h)")
        unit = rest[:unit_end]
        rest = rest[unit_end:]
        if unit not in _UNITS_NS:
            raise DurationError(f'has unknown unit "{unit}" (use ns, us, ms, s, m or h; there is no d)')
        factor = _UNITS_NS[unit]
        if whole > _MAX_U63 // factor:
            raise DurationError("overflows a 64-bit duration")
        component = whole * factor
        if fraction > 0:
            component += int(float(fraction) * (float(factor) / scale))
            if component > _MAX_U63:
                raise DurationError("overflows a 64-bit duration")
        total += component
        if total > _MAX_U63:
            raise DurationError("overflows a 64-bit duration")
    if negative:
        return -total
    if total > _MAX_U63 - 1:
        raise DurationError("overflows a 64-bit duration")
    return total

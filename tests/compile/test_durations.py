"""``nauthera.compile.durations`` must agree with Go's ``time.ParseDuration`` (SPEC §1.1), and so with OPA.

The valid and invalid cases are Go's own table from ``src/time/time_test.go`` (parseDurationTests and
parseDurationErrorTests), plus the examples from the SPEC. A sample is cross-checked against the real
OPA engine's ``time.parse_duration_ns``; only valid durations are compared, because OPA's builtin also
accepts ``d``, ``w`` and ``y`` units that Go (and the SPEC) reject.
"""

from __future__ import annotations

import subprocess

import pytest
from nauthera.compile.durations import DurationError, parse_duration_ns
from nauthera.engines.tools import find_tool

NS = 1
US = 1_000 * NS
MS = 1_000 * US
S = 1_000 * MS
M = 60 * S
H = 60 * M

MICRO_SIGN = "\u00b5"  # µ, as Go's unit table spells it
GREEK_MU = "\u03bc"  # μ, also accepted by Go

VALID: list[tuple[str, int]] = [
    # simple
    ("0", 0),
    ("5s", 5 * S),
    ("30s", 30 * S),
    ("1478s", 1478 * S),
    # sign
    ("-5s", -5 * S),
    ("+5s", 5 * S),
    ("-0", 0),
    ("+0", 0),
    # decimal
    ("5.0s", 5 * S),
    ("5.6s", 5 * S + 600 * MS),
    ("5.s", 5 * S),
    (".5s", 500 * MS),
    ("1.0s", 1 * S),
    ("1.00s", 1 * S),
    ("1.004s", 1 * S + 4 * MS),
    ("1.0040s", 1 * S + 4 * MS),
    ("100.00100s", 100 * S + 1 * MS),
    # different units
    ("10ns", 10 * NS),
    ("11us", 11 * US),
    (f"12{MICRO_SIGN}s", 12 * US),
    (f"12{GREEK_MU}s", 12 * US),
    ("13ms", 13 * MS),
    ("14s", 14 * S),
    ("15m", 15 * M),
    ("16h", 16 * H),
    # composite durations
    ("3h30m", 3 * H + 30 * M),
    ("10.5s4m", 4 * M + 10 * S + 500 * MS),
    ("-2m3.4s", -(2 * M + 3 * S + 400 * MS)),
    ("1h2m3s4ms5us6ns", 1 * H + 2 * M + 3 * S + 4 * MS + 5 * US + 6 * NS),
    ("39h9m14.425s", 39 * H + 9 * M + 14 * S + 425 * MS),
    # large value
    ("52763797000ns", 52763797000 * NS),
    # more than 9 digits after decimal point, see https://golang.org/issue/6617
    ("0.3333333333333333333h", 20 * M),
    # 9007199254740993 = 1<<53+1 cannot be stored precisely in a float64
    ("9007199254740993ns", ((1 << 53) + 1) * NS),
    # largest duration that can be represented by int64 in nanoseconds
    ("9223372036854775807ns", ((1 << 63) - 1) * NS),
    ("9223372036854775.807us", ((1 << 63) - 1) * NS),
    ("9223372036s854ms775us807ns", ((1 << 63) - 1) * NS),
    ("-9223372036854775808ns", -(1 << 63) * NS),
    ("-9223372036854775.808us", -(1 << 63) * NS),
    ("-9223372036s854ms775us808ns", -(1 << 63) * NS),
    # huge string; issue 15011.
    ("0.100000000000000000000h", 6 * M),
    # This value tests the first overflow check in leadingFraction.
    ("0.830103483285477580700h", 49 * M + 48 * S + 372539827 * NS),
    # the SPEC's examples
    ("1h30m", 90 * M),
    ("1.5h", 90 * M),
    (".5h", 30 * M),
    ("900s", 900 * S),
    ("24h", 24 * H),
    ("168h", 7 * 24 * H),
]

INVALID: list[str] = [
    # Go's parseDurationErrorTests
    "",
    "3",
    "-",
    "s",
    ".",
    "-.",
    ".s",
    "+.s",
    "1d",
    "9223372036854775810ns",
    "9223372036854775808ns",
    "-9223372036854775809ns",
    "9223372036854776us",
    "3000000h",
    "9223372036854775.808us",
    "9223372036854ms775.808us",
    "9223372036s854ms775us808ns",
    # what policy authors actually write by mistake
    "7d",
    "30d",
    "15 minutes",
    "15M",
    "1H",
    " 15m",
    "15m ",
    "1h 30m",
    "PT15M",
    "1,5h",
    "--5s",
    "+-5s",
    "1w",
    "1y",
]

#: Valid durations compared with OPA's builtin, which wraps Go's time.ParseDuration.
OPA_SAMPLE: list[str] = [
    "15m",
    "1h30m",
    "1.5h",
    ".5h",
    "5.s",
    "-2m3.4s",
    "10.5s4m",
    f"12{MICRO_SIGN}s",
    f"12{GREEK_MU}s",
    "1h2m3s4ms5us6ns",
    "0.3333333333333333333h",
    "0.830103483285477580700h",
    "9007199254740993ns",
    "9223372036854775807ns",
    "9223372036854775.807us",
    "9223372036s854ms775us807ns",
    "-9223372036854775808ns",
    "-9223372036s854ms775us808ns",
    "0.100000000000000000000h",
]


@pytest.mark.parametrize(("text", "nanoseconds"), VALID, ids=[text or "<empty>" for text, _ in VALID])
def test_valid_go_durations(text: str, nanoseconds: int) -> None:
    result = parse_duration_ns(text)
    assert result == nanoseconds
    assert type(result) is int


@pytest.mark.parametrize("text", INVALID, ids=[repr(text) for text in INVALID])
def test_invalid_go_durations_raise_duration_error(text: str) -> None:
    with pytest.raises(DurationError) as raised:
        parse_duration_ns(text)
    assert str(raised.value), "a DurationError must say what is wrong"


def test_duration_error_is_a_value_error() -> None:
    assert issubclass(DurationError, ValueError)


def test_day_unit_error_names_the_unit() -> None:
    with pytest.raises(DurationError, match='"d"'):
        parse_duration_ns("7d")


def test_overflow_error_says_so() -> None:
    with pytest.raises(DurationError, match="overflow"):
        parse_duration_ns("3000000h")


@pytest.mark.parametrize(
    ("text", "nanoseconds"),
    [("9223372036854775807ns", (1 << 63) - 1), ("-9223372036854775808ns", -(1 << 63))],
)
def test_int64_bounds_are_exact(text: str, nanoseconds: int) -> None:
    assert parse_duration_ns(text) == nanoseconds
    assert -(1 << 63) <= parse_duration_ns(text) <= (1 << 63) - 1


def _opa() -> str:
    """The real OPA; a missing one fails the test (conftest stops the run before that anyway)."""
    return str(find_tool("opa"))


@pytest.mark.parametrize("text", OPA_SAMPLE)
def test_agrees_with_opa_parse_duration_ns(text: str) -> None:
    completed = subprocess.run(
        [_opa(), "eval", "--format", "raw", f'time.parse_duration_ns("{text}")'],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip(), f"OPA left time.parse_duration_ns({text!r}) undefined"
    assert int(completed.stdout.strip()) == parse_duration_ns(text)

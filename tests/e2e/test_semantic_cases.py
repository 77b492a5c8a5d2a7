"""End-to-end decision semantics (SPEC §2, §3), driven by the case tables in ``cases/``.

Every ``cases/*.yaml`` file is a mapping with one key, ``cases``, holding a list of cases::

    cases:
      - name: short-kebab-name        # unique in its file; pytest id is "<file stem>::<name>"
        description: which SPEC rule this pins
        ambiguous: "..."              # optional: why the SPEC is ambiguous here, what was chosen
        default_allow: false          # optional: compile with --default-allow
        policies: [{...}, ...]        # full AuthPolicy documents (at least one)
        client: {...}                 # one full AuthClient document (may be malformed on purpose)
        expect:
          allowed: true|false         # must be true exactly when `violations` is empty
          violations: [[policy-or-null, field], ...]
          warnings: [[policy, field], ...]
          dryrun: [[policy, field], ...]
          message_contains: ["implicit", ...]

``violations``, ``warnings`` and ``dryrun`` are exact multisets of ``(policy, field)`` pairs
(order irrelevant, an omitted list means empty); ``policy`` is ``"namespace/name"``, or null
exactly for the ``targets`` and ``schema`` fields. Each ``message_contains`` string must occur
in the message of some entry of the three lists.

Each case writes its policies (one file each) and its client into temporary directories, runs
``nauthera compile POLICY_DIR --out OUT_DIR [--default-allow]`` and then
``nauthera check --bundle OUT_DIR/bundle.tar.gz CLIENT --format json`` through
``python -m nauthera``, and checks: the result's ``client`` is ``namespace/name``; ``allowed``;
the three multisets; ``message_contains``; that every entry is well-formed and each list is
sorted by policy, field, message (SPEC §3); and that ``check`` exits 0 when the client is
allowed and 1 when it is not. Cases with the same policies and ``default_allow`` share one
compile. The case files themselves are validated when the module is collected, so a malformed
table fails loudly instead of testing nothing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

CASES_DIR = Path(__file__).parent / "cases"
API_VERSION = "auth.nauthera.io/v1alpha1"
FIELDS = frozenset(
    {
        "token.accessTokenTTL",
        "token.refreshTokenTTL",
        "token.idTokenTTL",
        "allowedGrantTypes",
        "enforcePKCE",
        "allowedScopes",
        "requiredScopes",
        "allowedResponseTypes",
        "allowedTokenEndpointAuthMethods",
        "redirectUris.requireHttps",
        "redirectUris.allowWildcards",
        "redirectUris.allowedHosts",
        "redirectUris.allowedSchemes",
        "redirectUris.forbidFragments",
        "senderConstrainedTokens",
        "requirePushedAuthorizationRequests",
        "allowedSigningAlgorithms",
        "targets",
        "schema",
    }
)
NULL_POLICY_FIELDS = frozenset({"targets", "schema"})
ENTRY_LISTS = ("violations", "warnings", "dryrun")
CASE_KEYS = frozenset({"name", "description", "ambiguous", "default_allow", "policies", "client", "expect"})
EXPECT_KEYS = frozenset({"allowed", "message_contains", *ENTRY_LISTS})
KEBAB = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
CLI_TIMEOUT_SECONDS = 120

Document = dict[str, Any]
Pair = tuple[str | None, str]


class CaseFormatError(ValueError):
    """A case file does not follow the format in the module docstring."""


@dataclass(frozen=True)
class Expectation:
    """What ``nauthera check`` must report for one case."""

    allowed: bool
    entries: Mapping[str, Counter[Pair]]
    message_contains: tuple[str, ...]


@dataclass(frozen=True)
class Case:
    """One row of a case table."""

    file: str
    name: str
    description: str
    ambiguous: str | None
    default_allow: bool
    policies: tuple[Document, ...]
    client: Document
    expect: Expectation

    @property
    def id(self) -> str:
        return f"{self.file}::{self.name}"

    @property
    def client_ref(self) -> str | None:
        """``namespace/name`` of the client, when its metadata carries both."""
        metadata = self.client.get("metadata")
        if not isinstance(metadata, dict):
            return None
        namespace, name = metadata.get("namespace"), metadata.get("name")
        if isinstance(namespace, str) and isinstance(name, str):
            return f"{namespace}/{name}"
        return None


def policy_ref(policy: Mapping[str, Any]) -> str:
    metadata = policy["metadata"]
    return f"{metadata['namespace']}/{metadata['name']}"


def _check_document(doc: object, kind: str, where: str) -> Document:
    """The minimal shape every document needs to be written and referred to."""
    if not isinstance(doc, dict):
        raise CaseFormatError(f"{where}: a {kind} must be a mapping")
    if doc.get("apiVersion") != API_VERSION or doc.get("kind") != kind:
        raise CaseFormatError(f"{where}: expected apiVersion {API_VERSION} and kind {kind}")
    metadata = doc.get("metadata")
    if not (
        isinstance(metadata, dict)
        and isinstance(metadata.get("name"), str)
        and isinstance(metadata.get("namespace"), str)
    ):
        raise CaseFormatError(f"{where}: metadata needs string name and namespace")
    return doc


def _parse_pairs(raw: object, where: str, policy_refs: frozenset[str]) -> Counter[Pair]:
    if not isinstance(raw, list):
        raise CaseFormatError(f"{where}: must be a list of [policy, field] pairs")
    pairs: Counter[Pair] = Counter()
    for item in raw:
        if not (isinstance(item, list) and len(item) == 2):
            raise CaseFormatError(f"{where}: {item!r} is not a [policy, field] pair")
        policy, field = item
        if field not in FIELDS:
            raise CaseFormatError(f"{where}: unknown field {field!r}")
        if (policy is None) != (field in NULL_POLICY_FIELDS):
            raise CaseFormatError(f"{where}: policy must be null exactly for {sorted(NULL_POLICY_FIELDS)}")
        if policy is not None and policy not in policy_refs:
            raise CaseFormatError(f"{where}: {policy!r} is not one of the case's policies")
        pairs[(policy, field)] += 1
    return pairs


def _parse_expectation(raw: object, where: str, policy_refs: frozenset[str]) -> Expectation:
    if not isinstance(raw, dict) or not isinstance(raw.get("allowed"), bool):
        raise CaseFormatError(f"{where}: needs a mapping with a boolean 'allowed'")
    if unknown := set(raw) - EXPECT_KEYS:
        raise CaseFormatError(f"{where}: unknown keys {sorted(unknown)}")
    entries = {key: _parse_pairs(raw.get(key, []), f"{where}.{key}", policy_refs) for key in ENTRY_LISTS}
    if raw["allowed"] == bool(entries["violations"]):
        raise CaseFormatError(f"{where}: 'allowed' must be true exactly when 'violations' is empty")
    substrings = raw.get("message_contains", [])
    if not (isinstance(substrings, list) and all(isinstance(s, str) and s for s in substrings)):
        raise CaseFormatError(f"{where}.message_contains: must be a list of non-empty strings")
    return Expectation(allowed=raw["allowed"], entries=entries, message_contains=tuple(substrings))


def _parse_case(raw: object, file: str) -> Case:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise CaseFormatError(f"{file}: every case needs a string 'name'")
    name = raw["name"]
    where = f"{file}::{name}"
    if not KEBAB.fullmatch(name):
        raise CaseFormatError(f"{where}: name must be kebab-case")
    if unknown := set(raw) - CASE_KEYS:
        raise CaseFormatError(f"{where}: unknown keys {sorted(unknown)}")
    description, ambiguous = raw.get("description"), raw.get("ambiguous")
    if not (isinstance(description, str) and description):
        raise CaseFormatError(f"{where}: needs a non-empty 'description'")
    if ambiguous is not None and not (isinstance(ambiguous, str) and ambiguous):
        raise CaseFormatError(f"{where}: 'ambiguous' must be a non-empty string")
    default_allow = raw.get("default_allow", False)
    if not isinstance(default_allow, bool):
        raise CaseFormatError(f"{where}: 'default_allow' must be a boolean")
    raw_policies = raw.get("policies")
    if not (isinstance(raw_policies, list) and raw_policies):
        raise CaseFormatError(f"{where}: 'policies' must be a non-empty list")
    policies = tuple(
        _check_document(p, "AuthPolicy", f"{where}.policies[{i}]") for i, p in enumerate(raw_policies)
    )
    refs = [policy_ref(p) for p in policies]
    if len(set(refs)) != len(refs):
        raise CaseFormatError(f"{where}: duplicate policy namespace/name")
    client = _check_document(raw.get("client"), "AuthClient", f"{where}.client")
    expect = _parse_expectation(raw.get("expect"), f"{where}.expect", frozenset(refs))
    return Case(
        file=file,
        name=name,
        description=description,
        ambiguous=ambiguous,
        default_allow=default_allow,
        policies=policies,
        client=client,
        expect=expect,
    )


def load_cases(directory: Path = CASES_DIR) -> list[Case]:
    """Every case of every ``*.yaml`` file in ``directory``, validated, in file order."""
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise CaseFormatError(f"no case files in {directory}")
    cases: list[Case] = []
    for path in files:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not (isinstance(data, dict) and set(data) == {"cases"} and isinstance(data["cases"], list)):
            raise CaseFormatError(f"{path.name}: must be a mapping with a single 'cases' list")
        file_cases = [_parse_case(raw, path.stem) for raw in data["cases"]]
        names = [case.name for case in file_cases]
        if duplicates := sorted({n for n in names if names.count(n) > 1}):
            raise CaseFormatError(f"{path.name}: duplicate case names {duplicates}")
        cases.extend(file_cases)
    return cases


def write_yaml(path: Path, document: Document) -> None:
    path.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), encoding="utf-8")


def run_cli(args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m nauthera ARGS``; the child imports the same ``nauthera`` as this process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.run(
        [sys.executable, "-m", "nauthera", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
        check=False,
    )


def _process_output(proc: subprocess.CompletedProcess[str]) -> str:
    command = " ".join(proc.args)
    return f"$ {command}\nexit code {proc.returncode}\n--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"


class BundleCache:
    """Compiles each distinct (policies, default_allow) once per test session."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp_path_factory = tmp_path_factory
        self._bundles: dict[str, Path] = {}

    def bundle_for(self, case: Case) -> Path:
        key = json.dumps([case.default_allow, case.policies], sort_keys=True)
        if key not in self._bundles:
            self._bundles[key] = self._compile(case)
        return self._bundles[key]

    def _compile(self, case: Case) -> Path:
        work = self._tmp_path_factory.mktemp("bundle")
        policy_dir = work / "policies"
        policy_dir.mkdir()
        for index, policy in enumerate(case.policies):
            metadata = policy["metadata"]
            write_yaml(policy_dir / f"{index:02d}-{metadata['namespace']}-{metadata['name']}.yaml", policy)
        out_dir = work / "out"
        args = ["compile", str(policy_dir), "--out", str(out_dir)]
        if case.default_allow:
            args.append("--default-allow")
        proc = run_cli(args, cwd=work)
        bundle = out_dir / "bundle.tar.gz"
        if proc.returncode != 0 or not bundle.is_file():
            pytest.fail(f"{case.id}: compiling the case's policies failed\n{_process_output(proc)}")
        return bundle


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> BundleCache:
    return BundleCache(tmp_path_factory)


def _entry_problems(name: str, entries: object) -> tuple[list[Pair], list[str], list[str]]:
    """The (policy, field) pairs and messages of one result list, and what is wrong with its shape."""
    if not isinstance(entries, list):
        return [], [], [f"{name}: expected a list, got {entries!r}"]
    pairs: list[Pair] = []
    messages: list[str] = []
    problems: list[str] = []
    for entry in entries:
        if not (
            isinstance(entry, dict)
            and (entry.get("policy") is None or isinstance(entry.get("policy"), str))
            and entry.get("field") in FIELDS
            and isinstance(entry.get("message"), str)
            and entry["message"]
        ):
            problems.append(f"{name}: malformed entry {entry!r}")
            continue
        pairs.append((entry["policy"], entry["field"]))
        messages.append(entry["message"])
    keys = [(p is not None, p or "", f, m) for (p, f), m in zip(pairs, messages, strict=True)]
    if keys != sorted(keys):
        problems.append(f"{name}: not sorted by policy, field, message (SPEC §3)")
    return pairs, messages, problems


def _format_pairs(pairs: Counter[Pair]) -> str:
    return "[" + ", ".join(f"[{p or 'null'}, {f}]" for p, f in sorted(pairs.elements(), key=str)) + "]"


CASES = load_cases()


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_case(case: Case, bundles: BundleCache, tmp_path: Path) -> None:
    bundle = bundles.bundle_for(case)
    client_file = tmp_path / "client.yaml"
    write_yaml(client_file, case.client)
    proc = run_cli(["check", "--bundle", str(bundle), str(client_file), "--format", "json"], cwd=tmp_path)

    header = f"{case.id}: {case.description}"
    if case.ambiguous:
        header += f"\n(ambiguous in SPEC: {case.ambiguous})"
    try:
        report = json.loads(proc.stdout)
        [result] = report["results"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        pytest.fail(f"{header}\nexpected JSON with exactly one result\n{_process_output(proc)}")

    problems: list[str] = []
    if not isinstance(result, dict):
        pytest.fail(f"{header}\nresult is not an object\n{_process_output(proc)}")
    if case.client_ref is not None and result.get("client") != case.client_ref:
        problems.append(f"client: expected {case.client_ref!r}, got {result.get('client')!r}")
    if result.get("allowed") is not case.expect.allowed:
        problems.append(f"allowed: expected {case.expect.allowed}, got {result.get('allowed')!r}")
    messages: list[str] = []
    for name in ENTRY_LISTS:
        pairs, list_messages, shape_problems = _entry_problems(name, result.get(name))
        problems.extend(shape_problems)
        messages.extend(list_messages)
        expected, actual = case.expect.entries[name], Counter(pairs)
        if actual != expected:
            problems.append(f"{name}: expected {_format_pairs(expected)}, got {_format_pairs(actual)}")
    problems.extend(
        f"no message contains {substring!r}"
        for substring in case.expect.message_contains
        if not any(substring in message for message in messages)
    )
    expected_exit = 0 if case.expect.allowed else 1
    if proc.returncode != expected_exit:
        problems.append(f"exit code: expected {expected_exit}, got {proc.returncode}")
    if problems:
        pytest.fail("\n".join([header, *problems, _process_output(proc)]))

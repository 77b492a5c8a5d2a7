"""Shared fixtures. Tests use the real engines; a missing engine is a failure, never a skip.

The Kubernetes fixtures compose, each started once per session on first use and stopped (cleanly, or
the session fails) at its end: `control_plane` (etcd + kube-apiserver) → `cluster` (the Nauthera CRDs
installed) → `opa_webhook` (the sidecar and OPA of deploy/kubernetes/opa-webhook.yaml) and
`gatekeeper` (the controller with the generated ConstraintTemplates). Which of them admits AuthClients
is up to each test (tests/harness/admission.py `route_admission`).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from nauthera.engines.tools import find_tool
from nauthera.errors import ToolNotFoundError
from nauthera.targets.base import CompileOptions
from nauthera.targets.outputs import compile_policies

from .harness import controlplane
from .harness import gatekeeper as gatekeeper_harness
from .harness import opa_webhook as opa_webhook_harness
from .harness.admission import Compiled, compile_for_admission
from .harness.cli import nauthera
from .harness.controlplane import ControlPlane, documents, install_crds
from .harness.gatekeeper import Gatekeeper, GatekeeperCrdsMissingError
from .harness.opa_webhook import OpaWebhook
from .harness.reliability import Reliability

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
CRDS = REPO / "deploy" / "crds"
#: How many AuthPolicy documents examples/policies holds.
EXAMPLE_POLICIES = sum(
    1
    for path in (EXAMPLES / "policies").glob("*.yaml")
    for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
    if doc and doc.get("kind") == "AuthPolicy"
)
ENGINES = ("opa", "regal", "gator", *controlplane.ENGINES, "gatekeeper", "registry")
#: Start-up seconds of the session's long-running parts, printed at the end of the run.
STARTUP_SECONDS: dict[str, float] = {}

Cli = Callable[..., subprocess.CompletedProcess[str]]


def pytest_sessionstart(session: pytest.Session) -> None:
    """Fail loudly up front when an engine is missing, instead of letting tests skip or error one by one."""
    missing = []
    for tool in ENGINES:
        try:
            find_tool(tool)
        except ToolNotFoundError as error:
            missing.append(str(error))
    try:
        gatekeeper_harness.crd_manifest()
    except GatekeeperCrdsMissingError as error:
        missing.append(str(error))
    if missing:
        raise pytest.UsageError("required engines are missing (run `make tools`):\n" + "\n".join(missing))


def compile_to(policies: Path, out: Path) -> Path:
    """Compile a policy folder with the real pipeline; the bundle path."""
    result = compile_policies(CompileOptions(paths=[policies], out=out))
    assert result.ok and result.bundle is not None, result.diagnostics
    return result.bundle


@pytest.fixture(scope="session")
def example_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/policies compiled once; tests copy it, never change it."""
    return compile_to(EXAMPLES / "policies", tmp_path_factory.mktemp("examples"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if STARTUP_SECONDS:
        started = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in STARTUP_SECONDS.items())
        terminalreporter.write_line(f"start-up: {started}")


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """One etcd + kube-apiserver on loopback for the whole session."""
    with controlplane.control_plane(tmp_path_factory.mktemp("control-plane")) as plane:
        STARTUP_SECONDS["control plane"] = plane.start_seconds
        yield plane


@pytest.fixture(scope="session")
def cluster(control_plane: ControlPlane) -> ControlPlane:
    """The control plane with deploy/crds applied server-side and Established."""
    install_crds(control_plane, [doc for path in sorted(CRDS.glob("*.yaml")) for doc in documents(path)])
    return control_plane


@pytest.fixture(scope="session")
def opa_webhook(cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaWebhook]:
    """The OPA admission webhook, fed by the sidecar on a copy of examples/policies (`load` replaces it)."""
    work = tmp_path_factory.mktemp("opa-webhook")
    shutil.copytree(EXAMPLES / "policies", work / "policies")
    started = time.monotonic()
    webhook = opa_webhook_harness.start_opa_webhook(cluster.ca, work / "policies", work)
    STARTUP_SECONDS["OPA webhook"] = time.monotonic() - started
    try:
        yield webhook
    finally:
        webhook.stop()


@pytest.fixture(scope="session")
def compiled_examples(tmp_path_factory: pytest.TempPathFactory) -> Compiled:
    """examples/policies compiled for OPA and Gatekeeper (from a copy outside Git: see Compiled)."""
    return compile_for_admission(EXAMPLES / "policies", tmp_path_factory.mktemp("examples"))


@pytest.fixture(scope="session")
def gatekeeper(
    cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory, compiled_examples: Compiled
) -> Iterator[Gatekeeper]:
    """The Gatekeeper controller with the generated ConstraintTemplates (the same for every policy set)."""
    running = gatekeeper_harness.start_gatekeeper(cluster, tmp_path_factory.mktemp("gatekeeper"))
    try:
        running.apply_templates(compiled_examples.templates())
        STARTUP_SECONDS["Gatekeeper"] = running.start_seconds
        yield running
    finally:
        running.stop()


_PASSED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    report: pytest.TestReport = yield
    if report.when == "call":
        item.stash[_PASSED] = report.passed
    return report


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> Iterator[Reliability]:
    """Rows for docs/reliability.md (tests/harness/reliability.py), kept only when the test passes."""
    rows = Reliability(request.node.nodeid)
    yield rows
    if request.node.stash.get(_PASSED, False):
        rows.save()
    else:
        rows.discard()


@pytest.fixture
def cli() -> Cli:
    """Run the real command line in a subprocess, exactly as users and CI do (never with a traceback)."""
    return nauthera


@pytest.fixture
def opa() -> Callable[..., subprocess.CompletedProcess[str]]:
    binary = find_tool("opa")

    def run(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(binary), *map(str, args)],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )

    return run

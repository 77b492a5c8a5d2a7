"""AuthClients through the API server's admission: server-side dry runs, their outcome, and routing.

One keep-alive HTTPS session sends `POST .../authclients?dryRun=All&fieldValidation=Strict` (what
`kubectl create --dry-run=server` does, without spawning kubectl per request): the API server decodes,
defaults and validates the object against the CRD, runs admission (webhooks included) and stores
nothing. The outcome keeps what a user sees: the HTTP status, the refusal message and the warnings.

Which engine admits is decided by which ValidatingWebhookConfiguration exists: `route_admission` keeps
exactly one of ours (or none), and waits until a probe request shows it took effect.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import requests
from nauthera.targets.base import CompileOptions
from nauthera.targets.outputs import compile_policies

from .controlplane import ControlPlane, documents, status_details
from .processes import wait_until

GROUP_PATH = "/apis/auth.nauthera.io/v1alpha1"
#: Every ValidatingWebhookConfiguration the harness or deploy/ installs carries this label.
PART_OF = {"app.kubernetes.io/part-of": "nauthera"}
_DENIED_BY = re.compile(r'admission webhook "([^"]+)" denied the request: ')
_FAILED_CALLING = re.compile(r'failed calling webhook "([^"]+)"')
_WARNING = re.compile(r'^\s*\d{3}\s+\S+\s+"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Compiled:
    """A policy folder compiled for both engines: the OPA bundle and the Gatekeeper objects."""

    policies: Path
    out: Path
    revision: str

    @property
    def bundle(self) -> Path:
        return self.out / "bundle.tar.gz"

    def templates(self) -> list[dict[str, Any]]:
        return self._gatekeeper("templates")

    def constraints(self) -> list[dict[str, Any]]:
        return self._gatekeeper("constraints")

    def _gatekeeper(self, kind: str) -> list[dict[str, Any]]:
        folder = self.out / "gatekeeper" / kind
        return [doc for path in sorted(folder.glob("*.yaml")) for doc in documents(path)]


def compile_for_admission(source: Path, work: Path) -> Compiled:
    """Copy the policy folder `source` to `work/policies` (outside any Git checkout, so the revision
    depends on the content only: the sidecar compiling its own copy gets the same) and compile it for
    OPA and Gatekeeper into `work/build`."""
    policies = work / "policies"
    shutil.copytree(source, policies, ignore=shutil.ignore_patterns(".*"))
    result = compile_policies(CompileOptions(paths=[policies], out=work / "build", target="all"))
    assert result.ok and result.revision, [str(d) for d in result.diagnostics]
    return Compiled(policies, work / "build", result.revision)


@dataclass(frozen=True)
class Outcome:
    """What the API server answered to one AuthClient request."""

    status: int
    message: str
    reason: str
    warnings: tuple[str, ...]

    @property
    def allowed(self) -> bool:
        return 200 <= self.status < 300

    @property
    def denied_by(self) -> str | None:
        """The webhook that denied the request, if one did."""
        match = _DENIED_BY.search(self.message)
        return match.group(1) if match else None

    @property
    def failed_webhook(self) -> str | None:
        """The webhook the API server could not call, if that is why the request failed."""
        match = _FAILED_CALLING.search(self.message)
        return match.group(1) if match else None

    @property
    def refused_before_admission(self) -> bool:
        """Refused by decoding or schema validation (400/422), before any webhook ran."""
        return self.status in (400, 422)

    def webhook_message(self) -> str:
        """The denying webhook's own message (what follows `denied the request: `)."""
        match = _DENIED_BY.search(self.message)
        assert match, f"not a webhook denial: {self.status} {self.message}"
        return self.message[match.end() :]


def _warnings(response: requests.Response) -> tuple[str, ...]:
    """The `Warning: 299 - "text"` headers, one entry each (requests would join them with commas)."""
    found = []
    for header in response.raw.headers.getlist("Warning"):
        match = _WARNING.match(header)
        assert match, f"unparseable Warning header: {header!r}"
        found.append(re.sub(r"\\(.)", r"\1", match.group(1)))
    return tuple(found)


def outcome_of(response: requests.Response) -> Outcome:
    details = status_details(response)
    return Outcome(
        response.status_code,
        str(details.get("message", "")),
        str(details.get("reason", "")),
        _warnings(response),
    )


def dry_run_create(
    plane: ControlPlane, client: dict[str, Any], session: requests.Session | None = None
) -> Outcome:
    """Create `client` with `dryRun=All` and strict field validation, as `kubectl create --dry-run=server`."""
    namespace = client["metadata"]["namespace"]
    response = (session or plane.api).post(
        plane.url(f"{GROUP_PATH}/namespaces/{namespace}/authclients"),
        params={"dryRun": "All", "fieldValidation": "Strict"},
        json=client,
        timeout=30,
    )
    return outcome_of(response)


def webhook_configurations(plane: ControlPlane) -> list[str]:
    """Names of our ValidatingWebhookConfigurations in the cluster."""
    selector = ",".join(f"{k}={v}" for k, v in PART_OF.items())
    response = plane.api.get(
        plane.url("/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"),
        params={"labelSelector": selector},
        timeout=30,
    )
    response.raise_for_status()
    return sorted(item["metadata"]["name"] for item in response.json()["items"])


def route_admission(
    plane: ControlPlane,
    configuration: dict[str, Any] | None,
    probe: Callable[[], bool],
    timeout: float = 30,
) -> None:
    """Make `configuration` our only webhook configuration (None: no webhook), then wait for `probe`.

    The API server picks up configuration changes asynchronously (about a second); `probe` sends a
    request whose outcome shows which engine answered, so nothing runs on the previous route.
    """
    keep = configuration["metadata"]["name"] if configuration else None
    for name in webhook_configurations(plane):
        if name != keep:
            plane.kubectl("delete", "validatingwebhookconfiguration", name, "--wait=true")
    if configuration is not None:
        labels = configuration.setdefault("metadata", {}).setdefault("labels", {})
        labels.update(PART_OF)
        plane.apply([configuration])
    described = keep or "no admission webhook"
    try:
        wait_until(probe, timeout, f"AuthClient admission to go through {described}", interval=0.1)
    except AssertionError as error:
        raise AssertionError(f"{error}; {probe}") from None


class AdmissionEngine(Protocol):
    """The OPA webhook or Gatekeeper: loads a compiled policy set, answers as the webhook `name`."""

    @property
    def name(self) -> str: ...

    @property
    def configuration(self) -> dict[str, Any]: ...

    def load(self, compiled: Compiled) -> None: ...


def admit_through(
    plane: ControlPlane, engine: AdmissionEngine, compiled: Compiled, denied: dict[str, Any]
) -> None:
    """Load `compiled` into `engine` and route AuthClient admission to it; `denied` is a client those
    policies deny, the probe that shows the route took effect."""
    engine.load(compiled)
    route_admission(plane, engine.configuration, denial_probe(plane, denied, engine.name))


@dataclass
class DenialProbe:
    """A probe for `route_admission`: `client` (which the loaded policies deny) is denied by `webhook`,
    or, with `webhook` None, admitted because no webhook runs. It remembers the last answer."""

    plane: ControlPlane
    client: dict[str, Any]
    webhook: str | None
    last: Outcome | None = None

    def __call__(self) -> bool:
        self.last = dry_run_create(self.plane, self.client)
        return self.last.allowed if self.webhook is None else self.last.denied_by == self.webhook

    def __str__(self) -> str:
        name = f"{self.client['metadata']['namespace']}/{self.client['metadata']['name']}"
        return f"probe {name}, last answer: {self.last}"


def denial_probe(plane: ControlPlane, client: dict[str, Any], webhook: str | None) -> DenialProbe:
    return DenialProbe(plane, client, webhook)

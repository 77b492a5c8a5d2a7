"""`make demo-kubernetes`: a real API server refuses non-compliant AuthClients, through the OPA webhook.

Starts a throwaway control plane on loopback (etcd + kube-apiserver, tests/harness), installs the CRDs,
runs the OPA admission webhook of deploy/kubernetes/opa-webhook.yaml fed by `nauthera sidecar` on a copy
of examples/policies, applies every examples/clients file with kubectl and prints kubectl's own output,
then edits a policy in the copy and applies a refused client again. Everything it started is stopped
(and checked to exit cleanly) at the end, also on Ctrl-C or an error.

    python -m demo.kubernetes [--keep-workdir]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from tests.harness.admission import Compiled, admit_through, compile_for_admission
from tests.harness.controlplane import ControlPlane, control_plane
from tests.harness.examples import EXAMPLES, REPO, expected_outcomes
from tests.harness.opa_webhook import OpaWebhook, start_opa_webhook

EDITED_POLICY = "web-apps-policy.yaml"
EDIT = ('accessTokenTTL: "15m"', 'accessTokenTTL: "1h"')
REFUSED_THEN_ACCEPTED = "web-long-access-token.yaml"
CRDS = ("authclients.auth.nauthera.io", "authpolicies.auth.nauthera.io")


def heading(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run(plane: ControlPlane, *args: str) -> None:
    """Show a kubectl command and exactly what kubectl prints (stdout and stderr, as a terminal would)."""
    print(f"$ kubectl {' '.join(args)}", flush=True)
    result = plane.kubectl(*args, check=False, cwd=REPO, interleaved=True)
    print(result.stdout.rstrip("\n"), flush=True)


def demo(work: Path) -> None:
    with control_plane(work / "cluster") as plane:
        version = plane.kubectl("version", "-o", "yaml").stdout
        server = yaml.safe_load(version)["serverVersion"]["gitVersion"]
        heading(
            f"Control plane: etcd + kube-apiserver {server} on {plane.server} "
            f"(ready in {plane.start_seconds:.1f} s)"
        )
        run(plane, "apply", "--server-side", "-f", "deploy/crds")
        run(plane, "wait", "--for=condition=Established", *(f"crd/{name}" for name in CRDS))

        compiled = compile_for_admission(EXAMPLES / "policies", work / "examples")
        policies = work / "sidecar-policies"
        shutil.copytree(compiled.policies, policies)
        webhook = start_opa_webhook(plane.ca, policies, work / "opa-webhook")
        try:
            show(plane, webhook, compiled, work)
        finally:
            webhook.stop()
    heading("Stopped OPA, the sidecar, kube-apiserver and etcd: each exited cleanly on SIGTERM")


def show(plane: ControlPlane, webhook: OpaWebhook, compiled: Compiled, work: Path) -> None:
    clients = {
        name: yaml.safe_load((EXAMPLES / "clients" / name).read_text()) for name in expected_outcomes()
    }
    ungoverned = clients["ungoverned-client.yaml"]
    heading(
        f"OPA admission webhook: nauthera sidecar on a copy of examples/policies, OPA serving revision "
        f"{compiled.revision} over TLS ({webhook.opa_url})"
    )
    for namespace in sorted({c["metadata"]["namespace"] for c in clients.values()}):
        run(plane, "create", "namespace", namespace)
    admit_through(plane, webhook, compiled, ungoverned)
    run(plane, "get", "validatingwebhookconfigurations")

    heading("The example clients, applied one by one (examples/clients/EXPECTED.md says what to expect)")
    for name in clients:
        run(plane, "apply", "-f", f"examples/clients/{name}")
    run(plane, "get", "authclients", "--all-namespaces")

    old, new = EDIT
    heading(f"A policy edit: {EDITED_POLICY} in the sidecar's folder, {old} -> {new}")
    edited = work / "edited"
    shutil.copytree(compiled.policies, edited)
    path = edited / EDITED_POLICY
    path.write_text(path.read_text().replace(old, new))
    relaxed = compile_for_admission(edited, work / "relaxed")
    started = time.monotonic()
    webhook.load(relaxed)
    print(
        f"the sidecar recompiled and published revision {relaxed.revision}; OPA long-polled it and "
        f"enforces it {time.monotonic() - started:.1f} s after the edit",
        flush=True,
    )
    run(plane, "apply", "-f", f"examples/clients/{REFUSED_THEN_ACCEPTED}")

    heading("OPA stopped: the webhook fails closed (deletes are not admission-checked)")
    webhook.stop_opa()
    run(plane, "delete", "-f", "examples/clients/web-shop-ok.yaml")
    run(plane, "apply", "-f", "examples/clients/web-shop-ok.yaml")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keep-workdir", action="store_true", help="keep the logs, PKI and kubeconfig")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="nauthera-demo-"))
    try:
        demo(work)
    finally:
        if args.keep_workdir:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

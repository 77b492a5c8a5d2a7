"""`nauthera operator` (SPEC section 7) and `nauthera inventory`: the cluster-facing commands."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from nauthera.cli.common import EXIT_FINDINGS, EXIT_OK, errors_exit_2, format_option
from nauthera.cli.serve import _logging, _state, exit_on_stop_signals, server_options
from nauthera.serve.bundles import in_daemon_thread
from nauthera.serve.server import ServerState, create_app, parse_listen, run, serve

if TYPE_CHECKING:
    from nauthera.kube.inventory import Inventory
    from nauthera.kube.leader import LeaderElector
    from nauthera.kube.reconcile import Operator
    from nauthera.store.base import BundleStore

ENFORCE = ("opa", "gatekeeper", "both")
#: How long the operator's threads get to stop (release the Lease, end the watches) at SIGTERM; what
#: the bundle server's stop takes comes before it, and Kubernetes-minded users expect an exit in 2 s.
STOP_SECONDS = 1.2
log = logging.getLogger("nauthera.operator")
_kubeconfig_option = click.option(
    "--kubeconfig",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Kubeconfig file; without it, the in-cluster service account.",
)


@click.command("operator")
@_kubeconfig_option
@click.option(
    "--policies",
    default="cluster",
    show_default=True,
    help="`cluster` (AuthPolicy resources) or a policy folder / Git checkout, watched like the sidecar's.",
)
@click.option(
    "--enforce",
    type=click.Choice(ENFORCE),
    default="opa",
    show_default=True,
    help="gatekeeper or both: also apply the generated ConstraintTemplates and Constraints (the bundle is "
    "published and served in every mode).",
)
@server_options(
    "Channel each good compile is published to and served on; also the channel of agents whose bundle "
    "name is not a channel."
)
@click.option("--leader-elect", is_flag=True, help="Only the holder of the Lease nauthera-operator writes.")
@click.option(
    "--lease-namespace",
    "lease_namespace_option",
    help="Namespace of the Lease (default: $POD_NAMESPACE, else nauthera-system).",
)
@click.option(
    "--writes-per-second",
    type=click.FloatRange(min=1),
    default=100.0,
    show_default=True,
    help="Status writes and Events per second, at most (bursts of twice that).",
)
@errors_exit_2
def operator_command(
    kubeconfig: Path | None,
    policies: str,
    enforce: str,
    store: BundleStore,
    listen: str,
    token_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    channel: str,
    stale_after: str,
    leader_elect: bool,
    lease_namespace_option: str | None,
    writes_per_second: float,
    **limits: str,
) -> None:
    """Audit every AuthClient against the AuthPolicies: status, Events, bundles, Gatekeeper objects.

    Serves the bundle (OPA's bundle protocol) and the AuthPolicy validating webhook at
    /validate/authpolicies on --listen (HTTPS with --tls-cert/--tls-key, which the API server needs).
    """
    # The kubernetes client takes a second and 35 MB to import: only the cluster commands pay for it.
    from nauthera.kube.client import KubeClient  # noqa: PLC0415
    from nauthera.kube.leader import LeaderElector, identity, lease_namespace  # noqa: PLC0415
    from nauthera.kube.reconcile import Operator, OperatorConfig  # noqa: PLC0415

    exit_on_stop_signals()
    _logging()
    policy_paths: tuple[Path, ...] = ()
    if policies != "cluster":
        folder = Path(policies)
        if not folder.is_dir():
            raise click.BadParameter(
                f"{policies!r} is neither `cluster` nor a folder", param_hint="--policies"
            )
        policy_paths = (folder,)
    state = _state(store, token_file, channel, stale_after, tls_cert, tls_key, limits)
    host, port = parse_listen(listen)
    client = KubeClient(kubeconfig)
    name = identity()
    config = OperatorConfig(
        policy_paths=policy_paths,
        gatekeeper=enforce in ("gatekeeper", "both"),
        channel=channel,
        writes_per_second=writes_per_second,
        identity=name,
    )
    operator = Operator(client, state.store, config)
    state.readiness = operator.readiness
    elector = (
        LeaderElector(client, lease_namespace(lease_namespace_option), name, operator.set_leading)
        if leader_elect
        else None
    )
    run(_run_operator(operator, elector, state, host, port, tls_cert, tls_key))


async def _run_operator(
    operator: Operator,
    elector: LeaderElector | None,
    state: ServerState,
    host: str,
    port: int,
    tls_cert: Path | None,
    tls_key: Path | None,
) -> None:
    from nauthera.kube import webhook  # noqa: PLC0415 - see operator_command

    loop = asyncio.get_running_loop()

    def published(channel: str) -> None:
        loop.call_soon_threadsafe(state.watcher.notify, channel)

    operator.published = published
    operator.failed = state.metrics.compile_failures.inc
    app = create_app(state)
    app.add_route(webhook.PATH, webhook.validate, methods=["POST"])
    operator.start()
    if elector is None:
        operator.set_leading(True)
    else:
        elector.start()

    def shutdown() -> None:
        if elector is not None:
            elector.stop()  # releases the Lease: a standby takes over without waiting for it to expire
        operator.stop()
        operator.client.close()

    try:
        await serve(app, host, port, tls_cert, tls_key)
    finally:
        try:
            await asyncio.wait_for(in_daemon_thread(shutdown), STOP_SECONDS)
        except TimeoutError:  # a write or watch still under way: the API server keeps what it has
            log.warning("the operator did not stop within %.1f s; exiting anyway", STOP_SECONDS)


def _inventory_text(inventory: Inventory) -> str:
    lines = []
    summary = inventory.as_json()["summary"]
    lines.append(
        f"AuthClients: {summary['clients']} ({summary['compliant']} compliant, "
        f"{summary['nonCompliant']} not compliant or unknown)"
    )
    for entry in inventory.clients:
        policies = ", ".join(entry["policies"]) or "-"
        lines.append(f"  {entry['client']}: {entry['compliant']} {entry['reason']}; policies: {policies}")
        for kind in ("violations", "warnings", "dryrun"):
            label = {"violations": "violation", "warnings": "warning"}.get(kind, kind)
            lines.extend(f"      {label}: [{f['field']}] {f['message']}" for f in entry[kind])
    lines.append(f"AuthPolicies: {len(inventory.policies)}")
    for policy in inventory.policies:
        governed, violating = (
            "?" if policy[k] is None else policy[k] for k in ("governedClients", "violatingClients")
        )
        lines.append(
            f"  {policy['policy']}: Ready={policy['ready']} {policy['reason']}; "
            f"{policy['enforcementAction']}; governs {governed}, violating {violating}"
        )
        if policy["ready"] == "False":
            lines.append(f"      {policy['message']}")
    return "\n".join(lines) + "\n"


@click.command("inventory")
@_kubeconfig_option
@format_option(("text", "json"))
@errors_exit_2
def inventory_command(kubeconfig: Path | None, output_format: str) -> None:
    """Every AuthClient with its governing policies, compliance and findings; every AuthPolicy with its
    governed and violating counts. Exit 1 when any client is not compliant (or has no current status)."""
    from nauthera.kube.client import KubeClient  # noqa: PLC0415 - see operator_command
    from nauthera.kube.inventory import take_inventory  # noqa: PLC0415

    client = KubeClient(kubeconfig)
    try:
        inventory = take_inventory(client)
    finally:
        client.close()
    if output_format == "json":
        click.echo(json.dumps(inventory.as_json(), indent=2))
    else:
        click.echo(_inventory_text(inventory), nl=False)
    sys.exit(EXIT_FINDINGS if inventory.non_compliant else EXIT_OK)

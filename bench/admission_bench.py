"""Admission round trip through a real kube-apiserver: no webhook vs the OPA webhook vs Gatekeeper.

One AuthClient create with `dryRun=All` (the benchmark client, governed by exactly one policy and
compliant with it) goes through the same API server, over one keep-alive HTTPS session, in three ways:
no admission webhook (the anchor: decoding, defaulting, CRD validation, the server's own admission),
the OPA webhook of deploy/kubernetes/opa-webhook.yaml fed by the sidecar, and the real Gatekeeper with
the generated templates and constraints, at 10 and 1,000 policies. Only one webhook configuration
exists at a time; a probe (an ungoverned client, denied by either engine) shows each switch took
effect, before and after every run. Runs alternate between the three routes so that load from
elsewhere on the machine falls on all of them alike. Gatekeeper's audit is off while measuring.

The control plane, webhook and Gatekeeper processes are tests/harness's, as in the tests.
"""

from __future__ import annotations

import copy
import shutil
import time
from typing import Any

from bench.common import REPO_ROOT, Budget, Result, Row, Step, Ui, Workspace, ratio, summary
from bench.generate import CLIENT_TEAM, client, team
from tests.harness.admission import (
    AdmissionEngine,
    Compiled,
    compile_for_admission,
    denial_probe,
    dry_run_create,
    route_admission,
)
from tests.harness.controlplane import ControlPlane, control_plane, documents, ensure_namespaces, install_crds
from tests.harness.gatekeeper import start_gatekeeper
from tests.harness.opa_webhook import OpaWebhook, start_opa_webhook

COUNTS = (10, 1_000)
QUICK_COUNTS = (10, 100)
ROUTES = ("none", "opa", "gatekeeper")
LABELS = {"none": "no webhook", "opa": "OPA webhook", "gatekeeper": "Gatekeeper webhook"}
#: (warm-up requests, runs per route, requests per run)
PLAN = (50, 3, 300)
QUICK_PLAN = (20, 2, 100)
ADDED_GOAL_MS = 5.0
FLAT_GOAL = 1.5
PROBE_NAMESPACE = "nauthera-bench-probe"


def _probe_client() -> dict[str, Any]:
    """The benchmark client in a namespace no generated policy governs: denied by either engine."""
    probe = copy.deepcopy(client())
    probe["metadata"] = {"name": "admission-probe", "namespace": PROBE_NAMESPACE}
    return probe


class Routes:
    """Switches AuthClient admission between no webhook, the OPA webhook and Gatekeeper."""

    def __init__(self, plane: ControlPlane, engines: dict[str, AdmissionEngine]) -> None:
        self.plane = plane
        self.engines = engines
        self.probe = _probe_client()

    def use(self, route: str) -> None:
        engine = self.engines.get(route)
        configuration = engine.configuration if engine else None
        probe = denial_probe(self.plane, self.probe, engine.name if engine else None)
        route_admission(self.plane, configuration, probe)

    def check(self, route: str) -> None:
        """Fail if the route changed under a run (the probe must still get its route's answer)."""
        engine = self.engines.get(route)
        probe = denial_probe(self.plane, self.probe, engine.name if engine else None)
        if not probe():
            raise RuntimeError(f"admission left the {route} route during a run: {probe}")


def _measure(plane: ControlPlane, requests: int, session: Any) -> list[float]:
    """Milliseconds per AuthClient dry-run create; every one must be admitted."""
    body = client()
    samples = []
    for _ in range(requests):
        started = time.perf_counter()
        outcome = dry_run_create(plane, body, session)
        samples.append((time.perf_counter() - started) * 1000)
        if not outcome.allowed:
            raise RuntimeError(f"the benchmark client was not admitted: {outcome}")
    return samples


def _opa_direct(webhook: OpaWebhook, requests: int) -> list[float]:
    """Milliseconds per AdmissionReview POSTed straight to OPA (same TLS, same path): the webhook's own
    share of the round trip, without the API server."""
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "bench",
            "kind": {"group": "auth.nauthera.io", "version": "v1alpha1", "kind": "AuthClient"},
            "operation": "CREATE",
            "namespace": team(CLIENT_TEAM),
            "object": client(),
        },
    }
    url = f"{webhook.opa_url}/v0/data/nauthera/admission/review"
    samples = []
    for _ in range(requests):
        started = time.perf_counter()
        answer = webhook.https.post(url, json=review, timeout=10)
        samples.append((time.perf_counter() - started) * 1000)
        if answer.status_code != 200 or answer.json()["response"]["allowed"] is not True:
            raise RuntimeError(
                f"OPA did not allow the benchmark client: {answer.status_code} {answer.text[:300]}"
            )
    return samples


def _measure_count(
    plane: ControlPlane, routes: Routes, plan: tuple[int, int, int], step: Step, budget: Budget, count: int
) -> dict[str, list[list[float]]]:
    """Runs alternate between the routes; past the time budget no new round of runs starts."""
    warmup, runs, per_run = plan
    session = plane.session()
    samples: dict[str, list[list[float]]] = {route: [] for route in ROUTES}
    try:
        for rep in range(runs):
            if rep and budget.expired():
                break
            for route in ROUTES:
                step.describe(f"admission, {count:,} policies, run {rep + 1}/{runs}: {LABELS[route]}")
                routes.use(route)
                _measure(plane, warmup, session)
                samples[route].append(_measure(plane, per_run, session))
                routes.check(route)
                step.advance()
    finally:
        session.close()
    return samples


def _crds() -> list[dict[str, Any]]:
    return [doc for path in sorted((REPO_ROOT / "deploy" / "crds").glob("*.yaml")) for doc in documents(path)]


def _measure_all(
    ws: Workspace, ui: Ui, budget: Budget, counts: tuple[int, ...], plan: tuple[int, int, int]
) -> dict[str, Any]:
    work = ws.scratch("admission")
    series: dict[str, Any] = {}
    step = ui.task("admission round trips", total=len(counts) * plan[1] * len(ROUTES))
    with control_plane(work / "cluster") as plane:
        series["control_plane_start_seconds"] = plane.start_seconds
        install_crds(plane, _crds())
        ensure_namespaces(plane, [team(CLIENT_TEAM), PROBE_NAMESPACE])
        compiled: dict[int, Compiled] = {}
        for count in counts:
            step.describe(f"admission: compiling {count:,} policies for OPA and Gatekeeper")
            compiled[count] = compile_for_admission(ws.repo(count), work / f"policies-{count}")
        sidecar_source = work / "sidecar-policies"
        shutil.copytree(compiled[counts[0]].policies, sidecar_source)
        webhook = start_opa_webhook(plane.ca, sidecar_source, work / "opa-webhook")
        try:
            gatekeeper = start_gatekeeper(plane, work / "gatekeeper", audit_interval=0)
            try:
                series["gatekeeper_start_seconds"] = gatekeeper.start_seconds
                gatekeeper.apply_templates(compiled[counts[0]].templates())
                routes = Routes(plane, {"opa": webhook, "gatekeeper": gatekeeper})
                for count in counts:
                    step.describe(f"admission: loading {count:,} policies into OPA and Gatekeeper")
                    loads = {}
                    for name, engine in (("opa", webhook), ("gatekeeper", gatekeeper)):
                        started = time.monotonic()
                        engine.load(compiled[count])
                        loads[name] = time.monotonic() - started
                    samples = _measure_count(plane, routes, plan, step, budget, count)
                    direct = _opa_direct(webhook, plan[2])
                    series[str(count)] = {
                        "policies": count,
                        "constraints": len(compiled[count].constraints()),
                        "load_seconds": loads,
                        "samples_ms": samples,
                        "summary_ms": {
                            r: summary([v for run in runs for v in run]) for r, runs in samples.items()
                        },
                        "opa_direct_ms": direct,
                        "opa_direct_summary_ms": summary(direct),
                    }
            finally:
                gatekeeper.stop()
        finally:
            webhook.stop()
    step.finish()
    return series


def run(ws: Workspace, ui: Ui, budget: Budget) -> Result:
    counts = QUICK_COUNTS if ws.quick else COUNTS
    plan = QUICK_PLAN if ws.quick else PLAN
    result = Result(
        "admission",
        "Admission: an AuthClient dry-run create through kube-apiserver, no webhook vs OPA vs Gatekeeper",
        config={"counts": list(counts), "warmup": plan[0], "runs": plan[1], "requests_per_run": plan[2]},
    )
    series = _measure_all(ws, ui, budget, counts, plan)
    result.series = series
    for count in counts:
        stats = series[str(count)]["summary_ms"]
        base = stats["none"]
        for route in ("opa", "gatekeeper"):
            value = stats[route]
            added, added_p99 = value["median"] - base["median"], value["p99"] - base["p99"]
            result.rows.append(
                Row(
                    f"{LABELS[route]}, {count:,} policies: AuthClient create (dry run)",
                    "ms",
                    value["median"],
                    value["p99"],
                    "no webhook, same API server and client",
                    base["median"],
                    base["p99"],
                    goal=f"adds <= {ADDED_GOAL_MS:.0f} ms p50" if route == "opa" else "",
                    goal_met=added <= ADDED_GOAL_MS if route == "opa" else None,
                    note=f"adds {added:+.2f} ms p50, {added_p99:+.2f} ms p99",
                )
            )
    first, last = str(counts[0]), str(counts[-1])
    for route in ("opa", "gatekeeper"):
        low, high = series[first]["summary_ms"][route], series[last]["summary_ms"][route]
        flat = (ratio(high["median"], low["median"]) or 0) <= FLAT_GOAL and (
            ratio(high["p99"], low["p99"]) or 0
        ) <= FLAT_GOAL
        result.rows.append(
            Row(
                f"{LABELS[route]}, {counts[-1]:,} policies",
                "ms",
                high["median"],
                high["p99"],
                f"same at {counts[0]:,} policies",
                low["median"],
                low["p99"],
                goal=f"flat: p50 and p99 <= {FLAT_GOAL}x" if route == "opa" else "",
                goal_met=flat if route == "opa" else None,
                note=f"p99 ratio {ratio(high['p99'], low['p99']) or 0:.2f}x",
            )
        )
    result.notes.append(
        "Round trips of one keep-alive HTTPS session (Python requests) to kube-apiserver on loopback: "
        "decoding, defaulting and CRD validation are in every figure, so the webhook's cost is the "
        "difference to the anchor. The OPA webhook is OPA with TLS and the manifest's authorization "
        "policy; Gatekeeper runs with `--audit-interval=0` while measuring."
    )
    for count in counts:
        direct = series[str(count)]["opa_direct_summary_ms"]
        result.notes.append(
            f"{count:,} policies: the AdmissionReview POSTed straight to the OPA webhook (HTTPS, no API "
            f"server) takes {direct['median']:.2f} ms p50, {direct['p99']:.2f} ms p99."
        )
    for count in counts:
        loads = series[str(count)]["load_seconds"]
        result.notes.append(
            f"{count:,} policies: OPA ran the new revision {loads['opa']:.1f} s after the policy files "
            f"changed (sidecar compile + long poll); Gatekeeper enforced all "
            f"{series[str(count)]['constraints']:,} constraints {loads['gatekeeper']:.1f} s after they "
            "were applied."
        )
    return result

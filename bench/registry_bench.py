"""Measure: the registry store (SPEC section 8) on a local distribution v3.1.2 registry.

- Fleet convergence: 20 OPA processes pull `stable` straight from the registry (`services.X.type: oci`,
  polling every INTERVAL seconds). The channel is promoted back and forth; for each promotion, the time
  from `promote` returning until each agent's decision flips (decisions polled every 25 ms). Anchor: the
  polling interval; the goal is a fleet that converges within one interval (spread <= interval).
- Publish throughput: revisions published to a channel one after another (each a distinct revision of
  a one-policy bundle), registry vs a folder store on the same disk.
- Fresh machine: `nauthera bundle list` of 100 revisions in a new process with only the URL, vs the same
  command on a folder store holding the same revisions; and the same listing in process (a new store
  object, no caches), without Python's start-up.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import requests
from nauthera.store.base import open_store

from bench.common import Budget, Result, Row, Ui, Workspace, nauthera_command, run_wait4, summary
from tests.conftest import compile_to
from tests.harness.processes import Process, decide, opa_agent, stop_all, wait_until, write_policy
from tests.harness.registry import start_registry
from tests.serve.test_sidecar_e2e import ALLOWING, CLIENT, DENYING
from tests.store.conftest import with_revision

AGENTS, QUICK_AGENTS = 20, 5
INTERVAL = 2
PROMOTIONS, QUICK_PROMOTIONS = 4, 2
PUBLISHES, QUICK_PUBLISHES = 40, 10
LISTED = 100
LIST_RUNS = 3


def _bundles(ws: Workspace) -> dict[str, Path]:
    bundles = {}
    for name, spec in (("allowing", ALLOWING), ("denying", DENYING)):
        folder = ws.scratch(f"registry-{name}")
        write_policy(folder, "grants", spec)
        bundles[name] = compile_to(folder, ws.scratch(f"registry-{name}-out"))
    return bundles


def _converge(agents: list[str], allowed: bool, timeout: float) -> list[float]:
    """Seconds until each agent decides `allowed`, polled from one thread per agent."""
    started = time.monotonic()
    times: list[float] = [float("nan")] * len(agents)

    def watch(index: int, url: str) -> None:
        with requests.Session() as session:
            while time.monotonic() - started < timeout:
                answer = session.post(
                    f"{url}/v1/data/nauthera/authclient/decision", json={"input": CLIENT}, timeout=5
                ).json()
                if answer.get("result", {}).get("allowed") is allowed:
                    times[index] = time.monotonic() - started
                    return
                time.sleep(0.1)

    threads = [threading.Thread(target=watch, args=(i, url)) for i, url in enumerate(agents)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return times


def fleet(ws: Workspace, ui: Ui, bundles: dict[str, Path]) -> dict[str, Any]:
    count = QUICK_AGENTS if ws.quick else AGENTS
    promotions = QUICK_PROMOTIONS if ws.quick else PROMOTIONS
    work = ws.scratch("registry-fleet")
    registry = start_registry(work)
    processes: list[Process] = []
    try:
        store = open_store(registry.store("fleet/bundles"))
        allowing = store.publish(bundles["allowing"], "stable").revision
        denying = store.publish(bundles["denying"], None).revision
        step = ui.task(f"registry: starting {count} OPA agents", total=count)
        agents = []
        for index in range(count):
            process, url = opa_agent(
                work,
                f"agent-{index:02d}",
                "http://127.0.0.1:1",  # no status server: this measures pulls only
                registry=registry.opa_source("fleet/bundles", "stable"),
                min_delay=INTERVAL,
                max_delay=INTERVAL,
                decision_logs=False,
            )
            processes.append(process)
            agents.append(url)
            step.advance()
        for url in agents:
            wait_until(lambda url=url: (decide(url, CLIENT) or {}).get("allowed") is True, 60, "first bundle")
        step = ui.task("registry: promotions", total=promotions)
        rounds = []
        for index in range(promotions):
            target, allowed = (denying, False) if index % 2 == 0 else (allowing, True)
            time.sleep(INTERVAL * (0.3 + 0.17 * index))  # promote at different phases of the polling
            store.promote(target, "stable")
            rounds.append(_converge(agents, allowed, timeout=INTERVAL * 5))
            step.advance()
        return {"agents": count, "interval_s": INTERVAL, "rounds": rounds}
    finally:
        stop_all([*processes, registry.process])


def publishing(ws: Workspace, ui: Ui, bundles: dict[str, Path]) -> dict[str, Any]:
    count = QUICK_PUBLISHES if ws.quick else PUBLISHES
    work = ws.scratch("registry-publish")
    files = [with_revision(bundles["allowing"], f"pub-{i:04d}", work / f"{i}.tar.gz") for i in range(count)]
    listed = [
        with_revision(bundles["allowing"], f"list-{i:04d}", work / f"l{i}.tar.gz") for i in range(LISTED)
    ]
    registry = start_registry(work)
    try:
        rates: dict[str, float] = {}
        step = ui.task("registry: publishing", total=2 * count)
        for name, location in (
            ("registry", registry.store("publish/bundles")),
            ("folder", str(work / "store")),
        ):
            store = open_store(location)
            started = time.monotonic()
            for file in files:
                store.publish(file, "stable")
                step.advance()
            rates[name] = count / (time.monotonic() - started)
        listing: dict[str, list[float]] = {}
        in_process: dict[str, float] = {}
        step = ui.task(f"registry: fresh `bundle list` of {LISTED} revisions", total=2 * LIST_RUNS)
        for name, location in (
            ("registry", registry.store("list/bundles")),
            ("folder", str(work / "listed")),
        ):
            store = open_store(location)
            for file in listed:
                store.publish(file, None)
            store.promote(f"list-{LISTED - 1:04d}", "stable")
            listing[name] = []
            started = time.monotonic()
            listed_in_process = len(open_store(location).revisions())
            in_process[name] = time.monotonic() - started
            assert listed_in_process == LISTED, listed_in_process
            for _ in range(LIST_RUNS):
                run = run_wait4(
                    nauthera_command("bundle", "list", "--store", location, "--format", "json"), 120
                )
                if run.returncode != 0:
                    raise RuntimeError(f"bundle list failed:\n{run.output}")
                listing[name].append(run.seconds)
                step.advance()
        return {
            "publishes": count,
            "publish_per_s": rates,
            "listed": LISTED,
            "list_seconds": listing,
            "list_in_process_seconds": in_process,
        }
    finally:
        registry.stop()


def run(ws: Workspace, ui: Ui, budget: Budget) -> Result:
    del budget
    result = Result(
        "registry", "Registry store: a fleet pulling over OCI, publishing, a fresh machine's list"
    )
    bundles = _bundles(ws)
    converge = fleet(ws, ui, bundles)
    result.series["fleet"] = converge
    lasts = [max(r) for r in converge["rounds"]]
    spreads = [max(r) - min(r) for r in converge["rounds"]]
    interval = converge["interval_s"]
    result.rows.append(
        Row(
            f"promotion reaches all {converge['agents']} OPA agents (last one)",
            "s",
            summary(lasts)["median"],
            max(lasts),
            "OPA polling interval",
            interval,
            goal="<= 1 interval + 1 s",
            goal_met=max(lasts) <= interval + 1,
            note=f"{len(lasts)} promotions; p99 column: the slowest promotion",
        )
    )
    result.rows.append(
        Row(
            f"spread between the first and the last of {converge['agents']} agents",
            "s",
            summary(spreads)["median"],
            max(spreads),
            "OPA polling interval",
            interval,
            note="per promotion: last agent's flip minus first agent's (the agents poll at their own phases)",
        )
    )
    data = publishing(ws, ui, bundles)
    result.series["publishing"] = data
    result.rows.append(
        Row(
            "publish throughput (revision + channel move)",
            "revisions/s",
            data["publish_per_s"]["registry"],
            None,
            "folder store, same revisions",
            data["publish_per_s"]["folder"],
            note=f"{data['publishes']} sequential publishes of a one-policy bundle",
        )
    )
    result.rows.append(
        Row(
            f"fresh machine: `bundle list` of {data['listed']} revisions",
            "s",
            summary(data["list_seconds"]["registry"])["median"],
            None,
            "folder store, same revisions",
            summary(data["list_seconds"]["folder"])["median"],
            note=f"new process with only the URL (Python start-up included); median of {LIST_RUNS}",
        )
    )
    result.rows.append(
        Row(
            f"fresh store object: list {data['listed']} revisions in process",
            "s",
            data["list_in_process_seconds"]["registry"],
            None,
            "folder store, same revisions",
            data["list_in_process_seconds"]["folder"],
            note="one manifest read per revision, 8 in parallel",
        )
    )
    return result

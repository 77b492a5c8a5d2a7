"""Fleet load on one `nauthera serve` (issue 16): 1,000 long-polling agents, 200 status reports/s and
1,000 decision-log events/s for 60 s. Figures: errors (anything but the expected 204/304, and every
failed connection), the p99 of 304 answers to conditional GETs under that load against the same
requests to the idle server, and the server's RSS over time. Its rows also go to docs/reliability.md
(`series.reliability`, rendered by `make reliability`).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import requests

from bench.common import (
    BENCH_DIR,
    LOOPBACK,
    Budget,
    Result,
    Row,
    Ui,
    Workspace,
    nauthera_command,
    percentile,
    process_memory_kib,
    summary,
)
from bench.server_bench import check_response, holder_status, holders, holding, long_poll_waiters, serves
from tests.harness.processes import Process, free_port, wait_until

AGENTS = 1_000
QUICK_AGENTS = 200
STATUS_RATE = 200
EVENTS_RATE = 1_000
PROBE_RATE = 50
SECONDS = 60
QUICK_SECONDS = 15
IDLE_SECONDS = 10
BUNDLE_POLICIES = 1_000
WINDOW = 5


def _load(workdir: Path, name: str, port: int, etag: str, duration: float, busy: bool) -> Process:
    """The fleet_load child: status reports and decision logs when `busy`, conditional GETs always."""
    rates = (STATUS_RATE, EVENTS_RATE) if busy else (0, 0)
    args = [
        sys.executable,
        "-m",
        "bench.fleet_load",
        "--port",
        str(port),
        "--etag",
        etag,
        "--status-rate",
        str(rates[0]),
        "--events-rate",
        str(rates[1]),
        "--probe-rate",
        str(PROBE_RATE),
        "--duration",
        str(duration),
        "--out",
        str(workdir / f"{name}.json"),
    ]
    env = {**os.environ, "PYTHONPATH": str(BENCH_DIR.parent)}
    return Process(args, workdir / f"{name}.log", env=env).start()


def _finished(process: Process, workdir: Path, name: str, timeout: float) -> dict[str, Any]:
    assert process.handle is not None
    code = process.handle.wait(timeout=timeout)
    assert code == 0, f"{name} failed ({code}):\n{process.tail()}"
    data: dict[str, Any] = json.loads((workdir / f"{name}.json").read_text())
    return data


def _latencies(kind: dict[str, Any]) -> list[float]:
    return [ms for _, ms in kind["latencies"]]


def _windows(kind: dict[str, Any], seconds: float) -> list[dict[str, float]]:
    """p99 per WINDOW seconds of the run."""
    windows = []
    for start in range(0, int(seconds), WINDOW):
        values = [ms for at, ms in kind["latencies"] if start <= at < start + WINDOW]
        if values:
            windows.append({"t": start + WINDOW / 2, "p99_ms": percentile(values, 99), "count": len(values)})
    return windows


def _rounded(kind: dict[str, Any]) -> dict[str, Any]:
    """`kind` with its latencies as [seconds, ms] rounded to the microsecond (a smaller JSON)."""
    return {**kind, "latencies": [[round(at, 3), round(ms, 3)] for at, ms in kind["latencies"]]}


def _compact(kind: dict[str, Any]) -> dict[str, Any]:
    """`kind` without its raw latencies: their summary and p99 per window instead."""
    compact = {key: value for key, value in kind.items() if key != "latencies"}
    return {**compact, "latency_ms": summary(_latencies(kind))}


def _failed(kind: dict[str, Any], expected: str) -> int:
    """Requests that failed, got another answer, or were still unsent when the run ended."""
    unexpected = sum(count for status, count in kind["statuses"].items() if status != expected)
    return int(kind["errors"]) + unexpected + int(kind["unsent"])


def measure(ws: Workspace, ui: Ui, budget: Budget) -> dict[str, Any]:
    from nauthera.store.folder import FolderStore  # noqa: PLC0415 - only when measuring

    del budget  # a fixed-length run
    agents = QUICK_AGENTS if ws.quick else AGENTS
    seconds = QUICK_SECONDS if ws.quick else SECONDS
    workdir = ws.scratch("fleet")
    FolderStore(workdir / "store").publish(
        ws.bundle(BUNDLE_POLICIES), "stable", message="bench", author="bench"
    )
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    step = ui.task("fleet load", total=4)
    children: list[Process] = []
    try:
        listen = f"{LOOPBACK}:{port}"
        server = Process(
            nauthera_command("serve", "--store", workdir / "store", "--listen", listen), workdir / "serve.log"
        )
        children.append(server.start())
        wait_until(functools.partial(serves, url), 60, "the server to serve")
        etag = check_response(url, None, 200)
        check_response(url, etag, 304)
        step.describe(f"idle: {PROBE_RATE} conditional GETs/s for {IDLE_SECONDS} s")
        idle = _finished(_load(workdir, "idle", port, etag, IDLE_SECONDS, busy=False), workdir, "idle", 60)
        rss_idle = process_memory_kib(server.pid)["VmRSS"] / 1024
        step.advance()
        step.describe(f"{agents:,} agents long-polling")
        children.append(holders(workdir, "held", url, etag, agents, "long-poll", seconds + 90))
        wait_until(functools.partial(holding, workdir, "held"), 60, "the agents to hold")
        wait_until(lambda: (long_poll_waiters(url) or 0) >= 0.99 * agents, 30, "the long polls held")
        rss_held = process_memory_kib(server.pid)["VmRSS"] / 1024
        held_before = holder_status(workdir, "held")
        step.advance()
        step.describe(f"{STATUS_RATE} status reports/s, {EVENTS_RATE:,} decision events/s for {seconds} s")
        load = _load(workdir, "busy", port, etag, seconds, busy=True)
        children.append(load)
        started, rss = time.monotonic(), []
        while load.alive():
            rss.append(
                {
                    "t": round(time.monotonic() - started, 1),
                    "rss_mib": process_memory_kib(server.pid)["VmRSS"] / 1024,
                }
            )
            time.sleep(1)
        busy = _finished(load, workdir, "busy", 30)
        held_after = holder_status(workdir, "held")
        step.advance()
        fleet = requests.get(f"{url}/v1/agents", timeout=30).json()["agents"]
        denied = requests.get(f"{url}/v1/decisions", timeout=30).json()["denied"]
        healthy = requests.get(f"{url}/healthz", timeout=5).status_code == 200
        step.advance()
    finally:
        for child in reversed(children):
            child.stop()
    return {
        "agents": agents,
        "seconds": seconds,
        "rates": busy["rates"],
        "events_per_upload": busy["events_per_upload"],
        "bundle_policies": BUNDLE_POLICIES,
        "idle": idle["kinds"],
        "busy": busy["kinds"],
        "held_before": held_before,
        "held_after": held_after,
        "rss_mib": {"idle": rss_idle, "held": rss_held, "timeline": rss},
        "agents_listed": len(fleet),
        "denials_summarised": sum(row["count"] for row in denied),
        "healthy_after": healthy,
    }


def run(ws: Workspace, ui: Ui, budget: Budget) -> Result:
    data = measure(ws, ui, budget)
    busy, idle = data["busy"], data["idle"]
    held_before, held_after = data["held_before"], data["held_after"]
    errors = {
        "status": _failed(busy["status"], "204"),
        "logs": _failed(busy["logs"], "204"),
        "304 probes": _failed(busy["probe"], "304"),
        "long polls": held_after["errors"] + held_after["status_other"],
    }
    error_list = ", ".join(f"{k} {v}" for k, v in errors.items())
    probe, probe_idle = summary(_latencies(busy["probe"])), summary(_latencies(idle["probe"]))
    status = summary(_latencies(busy["status"]))
    logs = summary(_latencies(busy["logs"]))
    timeline = [point["rss_mib"] for point in data["rss_mib"]["timeline"]]
    rss_peak, rss_end = max(timeline), timeline[-1]
    load = f"{data['agents']:,} long polls, {data['rates']['status']:.0f} status/s, "
    load += f"{data['rates']['logs'] * data['events_per_upload']:,.0f} events/s"
    result = Result(
        "fleet",
        f"Fleet load on one server: {load}, {data['seconds']} s",
        config={
            "agents": data["agents"],
            "seconds": data["seconds"],
            "rates": data["rates"],
            "events_per_upload": data["events_per_upload"],
            "bundle_policies": data["bundle_policies"],
            "probes": f"{PROBE_RATE} conditional GETs/s (no wait) on {8} keep-alive connections",
        },
    )
    result.rows += [
        Row(
            f"304 latency under load ({load})",
            "ms",
            probe["median"],
            probe["p99"],
            f"the same {PROBE_RATE}/s conditional GETs to the idle server",
            probe_idle["median"],
            probe_idle["p99"],
            note=f"{probe['n']:,} probes under load, {probe_idle['n']:,} idle",
        ),
        Row(
            f"status report latency ({data['rates']['status']:.0f}/s)",
            "ms",
            status["median"],
            status["p99"],
            "none",
            None,
        ),
        Row(
            f"decision-log upload latency ({data['events_per_upload']} events each)",
            "ms",
            logs["median"],
            logs["p99"],
            "none",
            None,
        ),
        Row(
            f"server RSS, peak over {data['seconds']} s of load",
            "MiB",
            rss_peak,
            None,
            f"holding the {data['agents']:,} long polls before the load",
            data["rss_mib"]["held"],
            note=f"idle {data['rss_mib']['idle']:.0f} MiB; at the end {rss_end:.0f} MiB",
        ),
        Row(
            "errors (unexpected answers, failed connections, requests left unsent)",
            "count",
            float(sum(errors.values())),
            None,
            "none",
            None,
            goal="0",
            goal_met=sum(errors.values()) == 0,
            note=error_list,
        ),
    ]
    answered = held_after["status_304"] - held_before["status_304"]
    result.series = {
        **data,
        # Raw latencies of the 304s (the headline figure); the other kinds as summaries per window.
        "idle": {"probe": _rounded(idle["probe"])},
        "busy": {name: _rounded(kind) if name == "probe" else _compact(kind) for name, kind in busy.items()},
        "windows": {
            "probe": _windows(busy["probe"], data["seconds"]),
            "status": _windows(busy["status"], data["seconds"]),
        },
        "reliability": [
            {
                "area": "load",
                "check": f"{load} for {data['seconds']} s against one server",
                "measured": f"{sum(errors.values())} errors ({error_list}); "
                f"{busy['status']['ok']:,} status reports and {busy['logs']['ok']:,} uploads taken, "
                f"{answered:,} long polls answered 304",
                "test": "bench/fleet_bench.py",
            },
            {
                "area": "load",
                "check": f"p99 of 304 answers ({PROBE_RATE}/s conditional GETs) under that load",
                "measured": f"{probe['p99']:.1f} ms (idle server: {probe_idle['p99']:.1f} ms)",
                "test": "bench/fleet_bench.py",
            },
            {
                "area": "load",
                "check": "server RSS over the load (plot: bench/results/fleet.png)",
                "measured": f"{data['rss_mib']['held']:.0f} MiB holding the polls, {rss_end:.0f} MiB at the "
                f"end: the decision log filling with {data['denials_summarised']:,} denials (it keeps the "
                f"newest 100,000, --max-decisions); {data['agents_listed']:,} agents listed",
                "test": "bench/fleet_bench.py",
            },
        ],
    }
    result.notes.append(f"healthy after the run: {data['healthy_after']}")
    return result

"""Measure 4: the bundle server under a held fleet, beside nginx serving the same file.

`nauthera serve` serves a store in which the 10,000-policy bundle is published on `stable`; 1,000
long polls (`If-None-Match` + `Prefer: wait=60`, asked again at once when answered, timeouts spread
as in a fleet that started at different times) are held open by a child process (bench/holders.py).
nginx (Debian's package, one worker, `sendfile`, default `etag on`) serves the same bytes from a
generated config on another loopback port; nginx has no long polling, so its fleet of 1,000 keep-alive
connections polls as OPA does by default (a conditional GET every 60-120 s). While both fleets are held,
wrk (one thread, 32 keep-alive connections) measures (a) conditional GETs answered 304 and (b) full
downloads answered 200, alternating between the two servers, several short runs each.

(The sidecar's memory is measured with its change-to-enforcement series, start-up and edits included.)
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import requests

from bench.common import (
    BENCH_DIR,
    LOOPBACK,
    Budget,
    Result,
    Row,
    Step,
    Ui,
    Workspace,
    children_of,
    nauthera_command,
    process_cpu_seconds,
    process_memory_kib,
    summary,
)
from tests.harness.processes import Process, free_port, wait_until

HELD = 1_000
QUICK_HELD = 200
BUNDLE_POLICIES = 10_000
QUICK_BUNDLE_POLICIES = 1_000
RUNS = 3
QUICK_RUNS = 1
RUN_SECONDS = 4
CONNECTIONS = 32
CHANNEL_PATH = "/bundles/stable"
#: Issue 12: 304 throughput with 1,000 long polls held, at least this share of nginx's.
GOAL_304_RATIO = 0.5
SCENARIOS = ("304", "200")


def nginx_config(prefix: Path, port: int) -> Path:
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"  {kind}_temp_path {prefix / 'tmp' / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    config = f"""{user}worker_processes 1;
daemon off;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
worker_rlimit_nofile 8192;
events {{ worker_connections 4096; }}
http {{
  access_log off;
{temp}
  sendfile on;
  tcp_nopush on;
  keepalive_timeout 300s;
  keepalive_requests 1000000;
  default_type application/gzip;
  server {{
    listen {LOOPBACK}:{port};
    root {prefix / "www"};
    etag on;
  }}
}}
"""
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    target = prefix / "nginx.conf"
    target.write_text(config)
    return target


def start_nginx(workdir: Path, bundle: Path) -> tuple[Process, str]:
    prefix = workdir / "nginx"
    (prefix / "www" / "bundles").mkdir(parents=True)
    shutil.copyfile(bundle, prefix / "www" / "bundles" / "stable")
    port = free_port()
    config = nginx_config(prefix, port)
    child = Process(
        ["nginx", "-p", prefix, "-e", prefix / "error.log", "-c", config], workdir / "nginx.log"
    ).start()
    return child, f"http://{LOOPBACK}:{port}"


def holders(workdir: Path, name: str, url: str, etag: str, count: int, mode: str, duration: float) -> Process:
    port = int(url.rsplit(":", 1)[1])
    status = workdir / f"{name}.json"
    args = [
        sys.executable,
        "-m",
        "bench.holders",
        "--port",
        str(port),
        "--path",
        CHANNEL_PATH,
        "--etag",
        etag,
        "--count",
        str(count),
        "--mode",
        mode,
        "--wait",
        "60",
        "--status",
        str(status),
        "--duration",
        str(duration),
    ]
    return Process(
        args, workdir / f"{name}.log", env={**os.environ, "PYTHONPATH": str(BENCH_DIR.parent)}
    ).start()


def holder_status(workdir: Path, name: str) -> dict[str, Any]:
    path = workdir / f"{name}.json"
    status: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    return status


def wrk(url: str, etag: str | None, seconds: int) -> dict[str, Any]:
    args = [
        "wrk",
        "-t1",
        f"-c{CONNECTIONS}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(BENCH_DIR / "wrk_report.lua"),
    ]
    if etag:
        args += ["-H", f"If-None-Match: {etag}"]
    completed = subprocess.run(
        [*args, url + CHANNEL_PATH], capture_output=True, text=True, timeout=seconds + 30, check=False
    )
    line = next((x for x in completed.stdout.splitlines() if x.startswith("{")), None)
    if completed.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed: {completed.stdout[-1000:]} {completed.stderr[-1000:]}")
    report: dict[str, Any] = json.loads(line)
    report["throughput_rps"] = report["requests"] / (report["duration_us"] / 1e6)
    report["bytes_per_response"] = report["bytes"] / max(report["requests"], 1)
    report["p50_ms"] = report["latency_us"]["p50"] / 1e3
    report["p99_ms"] = report["latency_us"]["p99"] / 1e3
    return report


def long_poll_waiters(url: str) -> float | None:
    try:
        text = requests.get(f"{url}/metrics", timeout=5).text
    except requests.RequestException:
        return None
    match = re.search(r"^nauthera_long_poll_waiters (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def rss_mib(pid: int, with_children: bool = False) -> float:
    pids = [pid, *(children_of(pid) if with_children else [])]
    return sum(process_memory_kib(p).get("VmRSS", 0) for p in pids) / 1024


def serves(url: str) -> bool:
    return requests.get(url + CHANNEL_PATH, timeout=2).ok


def holding(workdir: Path, name: str) -> bool:
    return bool(holder_status(workdir, name).get("ready"))


def check_response(url: str, etag: str | None, expected: int) -> str:
    headers = {"If-None-Match": etag} if etag else {}
    response = requests.get(url + CHANNEL_PATH, headers=headers, timeout=10)
    if response.status_code != expected:
        raise RuntimeError(f"{url}: expected {expected}, got {response.status_code}")
    return response.headers.get("ETag", "")


def _measure(
    step: Step,
    urls: dict[str, str],
    etags: dict[str, str],
    answering: dict[str, list[int]],
    runs: int,
    data: dict[str, Any],
) -> None:
    """The wrk runs, alternating servers, each with the answering processes' CPU per request."""
    for rep in range(runs):
        for scenario in SCENARIOS:
            for name, url in urls.items():
                step.describe(f"run {rep + 1}/{runs}: {scenario} from {name}")
                before = sum(process_cpu_seconds(pid) for pid in answering[name])
                report = wrk(url, etags[name] if scenario == "304" else None, RUN_SECONDS)
                spent = sum(process_cpu_seconds(pid) for pid in answering[name]) - before
                report["server_cpu_us_per_request"] = 1e6 * spent / max(report["requests"], 1)
                data["results"][name][scenario].append(report)
                step.advance()


def throughput(ws: Workspace, ui: Ui, budget: Budget) -> dict[str, Any]:
    from nauthera.store.folder import FolderStore  # noqa: PLC0415 - only when measuring

    held = QUICK_HELD if ws.quick else HELD
    runs = QUICK_RUNS if ws.quick else RUNS
    count = QUICK_BUNDLE_POLICIES if ws.quick else BUNDLE_POLICIES
    bundle = ws.bundle(count)
    workdir = ws.scratch("server")
    store = workdir / "store"
    FolderStore(store).publish(bundle, "stable", message="bench", author="bench")
    port = free_port()
    nauthera_url = f"http://{LOOPBACK}:{port}"
    children: list[Process] = []
    step = ui.task("bundle server", total=2 + runs * len(SCENARIOS) * 2)
    data: dict[str, Any] = {
        "bundle_policies": count,
        "bundle_bytes": bundle.stat().st_size,
        "held": held,
        "runs": runs,
        "run_seconds": RUN_SECONDS,
        "connections": CONNECTIONS,
        "results": {"nauthera": {s: [] for s in SCENARIOS}, "nginx": {s: [] for s in SCENARIOS}},
    }
    try:
        server = Process(
            nauthera_command("serve", "--store", store, "--listen", f"{LOOPBACK}:{port}"),
            workdir / "serve.log",
        ).start()
        children.append(server)
        nginx, nginx_url = start_nginx(workdir, bundle)
        children.append(nginx)
        for url in (nauthera_url, nginx_url):
            wait_until(functools.partial(serves, url), 60, f"{url} to serve")
        etags = {
            "nauthera": check_response(nauthera_url, None, 200),
            "nginx": check_response(nginx_url, None, 200),
        }
        urls = {"nauthera": nauthera_url, "nginx": nginx_url}
        for name, url in urls.items():
            check_response(url, etags[name], 304)
        step.describe(f"holding {held:,} long polls (nauthera) and {held:,} polling connections (nginx)")
        duration = 60 + runs * len(SCENARIOS) * 2 * (RUN_SECONDS + 3)
        children.append(
            holders(workdir, "held-nauthera", nauthera_url, etags["nauthera"], held, "long-poll", duration)
        )
        children.append(holders(workdir, "held-nginx", nginx_url, etags["nginx"], held, "poll", duration))
        for name in ("held-nauthera", "held-nginx"):
            wait_until(functools.partial(holding, workdir, name), 60, f"{name} to hold")
        waiting = wait_until(
            lambda: (long_poll_waiters(nauthera_url) or 0) >= 0.99 * held,
            30,
            "the server to count its long polls",
        )
        data["long_poll_waiters_before"] = waiting and long_poll_waiters(nauthera_url)
        data["rss_mib_held"] = {
            "nauthera": rss_mib(server.pid),
            "nginx": rss_mib(nginx.pid, with_children=True),
        }
        step.advance()
        step.describe("warm-up")
        for name, url in urls.items():
            wrk(url, etags[name], 1)
            wrk(url, None, 1)
        step.advance()
        # The processes that answer: nauthera's one, nginx's worker (its master answers nothing).
        answering = {"nauthera": [server.pid], "nginx": children_of(nginx.pid)}
        _measure(step, urls, etags, answering, runs, data)
        data["long_poll_waiters_after"] = long_poll_waiters(nauthera_url)
        data["holders"] = {name: holder_status(workdir, name) for name in ("held-nauthera", "held-nginx")}
    finally:
        for child in reversed(children):
            child.stop()
    step.finish()
    for name in ("nauthera", "nginx"):
        for scenario in SCENARIOS:
            runs_data = data["results"][name][scenario]
            per = [r["bytes_per_response"] for r in runs_data]
            ui.log(
                f"{name:8} {scenario}: "
                + ", ".join(f"{r['throughput_rps']:,.0f} req/s p99 {r['p99_ms']:.1f} ms" for r in runs_data)
                + f" ({summary(per)['median']:,.0f} B/response)"
            )
    return data


def _cpu_note(data: dict[str, Any], scenario: str) -> str:
    """Server CPU per request beside the rates: it stays put when other work slows both servers."""
    per = {
        name: summary([r["server_cpu_us_per_request"] for r in data["results"][name][scenario]])["median"]
        for name in ("nauthera", "nginx")
    }
    return f"; server CPU per request: {per['nauthera']:.0f} us (nginx {per['nginx']:.0f} us)"


def run(ws: Workspace, ui: Ui, budget: Budget) -> Result:
    result = Result(
        "server",
        "Bundle server: 1,000 held long polls, conditional GETs and downloads vs nginx",
        config={
            "wrk": {"threads": 1, "connections": CONNECTIONS, "seconds_per_run": RUN_SECONDS},
            "nginx": "worker_processes 1, sendfile on, etag on, keepalive_requests 1000000, access_log off",
            "nauthera": "nauthera serve (one process: httptools on uvloop)",
        },
    )
    data = throughput(ws, ui, budget)
    result.series["throughput"] = data
    labels = {"304": "conditional GET (304)", "200": "full download (200)"}
    for scenario in SCENARIOS:
        ours = data["results"]["nauthera"][scenario]
        theirs = data["results"]["nginx"][scenario]
        rps, rps_nginx = [r["throughput_rps"] for r in ours], [r["throughput_rps"] for r in theirs]
        p99, p99_nginx = [r["p99_ms"] for r in ours], [r["p99_ms"] for r in theirs]
        held = f"{data['held']:,} held"
        goal = scenario == "304"
        ours_rps, theirs_rps = summary(rps)["median"], summary(rps_nginx)["median"]
        result.rows.append(
            Row(
                f"{labels[scenario]} throughput, {held}",
                "req/s",
                ours_rps,
                None,
                "nginx, same file, same fleet size",
                theirs_rps,
                None,
                goal=f">= {GOAL_304_RATIO}x nginx" if goal else "",
                goal_met=ours_rps >= GOAL_304_RATIO * theirs_rps if goal else None,
                note=f"median of {len(rps)} run(s) of {RUN_SECONDS} s; bundle {data['bundle_bytes']:,} B"
                + _cpu_note(data, scenario),
            )
        )
        result.rows.append(
            Row(
                f"{labels[scenario]} latency, {held}",
                "ms",
                summary([r["p50_ms"] for r in ours])["median"],
                summary(p99)["median"],
                "nginx, same file, same fleet size",
                summary([r["p50_ms"] for r in theirs])["median"],
                summary(p99_nginx)["median"],
                note="median over runs of wrk's p50 and p99",
            )
        )
    rss = data["rss_mib_held"]
    result.rows.append(
        Row(
            f"server memory (RSS) holding {data['held']:,} connections",
            "MiB",
            rss["nauthera"],
            None,
            "nginx (master + worker), same connections",
            rss["nginx"],
            None,
        )
    )
    return result

"""Measure 2: decision latency for one client as the bundle grows from 10 to 10,000 policies.

Three views of the same question, all on the client in `team-0005`, which exactly one policy governs:
- the real OPA server (`opa run --server -b bundle.tar.gz`) over REST with a keep-alive session, as
  an application asks it (client round trip included), with OPA's default store and with
  `--optimize-store-for-read-speed`;
- `opa bench` (evaluation only, Go's benchmark loop) on the same bundle and input;
- the Gatekeeper target through `gator bench --engine rego` at the same policy counts: the templates
  and Constraints that `nauthera compile --target gatekeeper` writes (built with the same function,
  serialized as JSON documents), plus the same client as the reviewed object.

Flatness is each figure at N policies over the same figure at 10 policies (goal: <= 1.5x at 10,000).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import requests
import yaml

from bench.common import (
    Budget,
    Result,
    Row,
    Step,
    Ui,
    Workspace,
    nauthera_command,
    process_memory_kib,
    ratio,
    run_wait4,
    summary,
    tool,
)
from bench.generate import CLIENT_TEAM, client, team
from tests.harness.processes import Process, opa_serving, wait_until

COUNTS = (10, 1_000, 10_000)
QUICK_COUNTS = (10, 1_000)
QUERY = "data.nauthera.authclient.decision"
DECISION_PATH = "/v1/data/nauthera/authclient/decision"
EXPECTED_POLICY = f"security/{team(CLIENT_TEAM)}-clients"
FLAT_GOAL = 1.5
#: gator bench: (runs, iterations) per count; 10,000 Constraints take ~20 s to load and ~0.3 s a review.
GATOR_PLAN = {10: (3, 300), 1_000: (3, 100), 10_000: (1, 20)}
GATOR_TIMEOUT = {10: 60, 1_000: 120, 10_000: 240}
STORES = {"default": [], "read-optimized": ["--optimize-store-for-read-speed"]}


# --- OPA server over REST --------------------------------------------------------------------------


def opa_server(bundle: Path, log: Path, extra: list[str]) -> tuple[Process, str]:
    return opa_serving(bundle, log, "--log-level", "error", *extra)


def check_decision(result: dict[str, Any] | None) -> None:
    if not result or result.get("allowed") is not True or result.get("policies") != [EXPECTED_POLICY]:
        raise RuntimeError(f"unexpected decision for the benchmark client: {result}")


class RestTarget:
    """One `opa run --server` with one bundle and store option, and a keep-alive session to it."""

    def __init__(self, bundle: Path, log: Path, extra: list[str]) -> None:
        self.server, self.url = opa_server(bundle, log, extra)
        self.session = requests.Session()
        self.body = json.dumps({"input": client()}).encode()
        self.headers = {"Content-Type": "application/json"}
        self.endpoint = self.url + DECISION_PATH
        self.runs: list[list[float]] = []

    def ready(self) -> bool:
        return requests.get(f"{self.url}/health?bundles", timeout=2).status_code == 200

    def decide(self) -> dict[str, Any] | None:
        response = self.session.post(self.endpoint, data=self.body, headers=self.headers, timeout=10)
        result: dict[str, Any] | None = response.json().get("result")
        return result

    def measure(self, requests_count: int) -> None:
        run: list[float] = []
        for _ in range(requests_count):
            started = time.perf_counter_ns()
            response = self.session.post(self.endpoint, data=self.body, headers=self.headers, timeout=10)
            run.append((time.perf_counter_ns() - started) / 1e6)
            if response.status_code != 200:
                raise RuntimeError(f"OPA answered {response.status_code}: {response.text[:200]}")
        self.runs.append(run)

    def report(self) -> dict[str, Any]:
        flat = [value for run in self.runs for value in run]
        return {
            "samples_ms": self.runs,
            "summary_ms": summary(flat),
            "per_run_ms": [summary(run) for run in self.runs],
            "opa_rss_mib": process_memory_kib(self.server.pid).get("VmRSS", 0) / 1024,
        }

    def stop(self) -> None:
        self.session.close()
        self.server.stop()


def rest_latency(
    ws: Workspace, counts: tuple[int, ...], plan: tuple[int, int, int], step: Step
) -> dict[tuple[int, str], dict[str, Any]]:
    """Round-trip milliseconds of POST /v1/data/... for every (count, store), runs interleaved.

    All servers run at once and the runs go round-robin over them, so load from anything else on the
    machine (it has 2 cores) falls on every configuration alike instead of on whichever came last.
    """
    warmup, runs, per_run = plan
    targets: dict[tuple[int, str], RestTarget] = {}
    try:
        for count in counts:
            for store, extra in STORES.items():
                log = ws.root / f"opa-rest-{count}-{store}.log"
                targets[(count, store)] = RestTarget(ws.bundle(count), log, extra)
        for (count, store), target in targets.items():
            step.describe(f"OPA REST: loading {count:,} policies ({store} store)")
            wait_until(target.ready, 180, f"OPA with {count} policies to load")
            check_decision(target.decide())
            for _ in range(warmup):
                target.decide()
        for rep in range(runs):
            for (count, store), target in targets.items():
                step.describe(f"OPA REST run {rep + 1}/{runs}: {count:,} policies, {store} store")
                target.measure(per_run)
                step.advance()
        for target in targets.values():
            check_decision(target.decide())
        return {key: target.report() for key, target in targets.items()}
    finally:
        for target in targets.values():
            target.stop()


# --- opa bench -------------------------------------------------------------------------------------


def _json_stream(text: str) -> list[dict[str, Any]]:
    decoder, found, index = json.JSONDecoder(), [], 0
    text = text.strip()
    while index < len(text):
        value, end = decoder.raw_decode(text, index)
        found.append(value)
        index = end
        while index < len(text) and text[index].isspace():
            index += 1
    return found


def opa_bench(bundle: Path, input_file: Path, count: int, extra: list[str]) -> dict[str, Any]:
    """`opa bench --format json`: per repetition ns/op and the query-eval histogram (ms)."""
    args: list[str | Path] = [
        tool("opa"),
        "bench",
        "--format",
        "json",
        "--count",
        str(count),
        *extra,
        "-b",
        str(bundle),
        "-i",
        str(input_file),
        QUERY,
    ]
    completed = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"opa bench failed: {completed.stderr[-2000:]}")
    runs = []
    for doc in _json_stream(completed.stdout):
        extra_metrics = doc.get("Extra", {})
        key = "histogram_timer_rego_query_eval_ns_"
        runs.append(
            {
                "iterations": doc["N"],
                "ns_per_op": doc["T"] / doc["N"],
                "allocs_per_op": doc["MemAllocs"] / doc["N"],
                "bytes_per_op": doc["MemBytes"] / doc["N"],
                "eval_median_ms": extra_metrics.get(key + "median", 0) / 1e6,
                "eval_p99_ms": extra_metrics.get(key + "99%", 0) / 1e6,
                "eval_mean_ms": extra_metrics.get(key + "mean", 0) / 1e6,
            }
        )
    return {"runs": runs}


# --- gator bench -----------------------------------------------------------------------------------

_GO_DURATION = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_MS = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "μs": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4, "h": 3.6e6}


def go_duration_ms(text: str) -> float:
    parts = _GO_DURATION.findall(text)
    if not parts:
        raise ValueError(f"not a Go duration: {text!r}")
    return sum(float(number) * _UNIT_MS[unit] for number, unit in parts)


def gatekeeper_input(ws: Workspace, count: int) -> Path:
    """Templates + one Constraint per policy + the governed Constraint, and the reviewed client.

    The objects are those `nauthera compile --target gatekeeper` writes to gatekeeper/ (same
    function), serialized as JSON documents (valid YAML) rather than through the CLI, which also
    renders a gator suite with fixtures per policy and takes minutes at 10,000 policies.
    """
    from nauthera.compile.analysis import analyse  # noqa: PLC0415
    from nauthera.targets.gatekeeper import gatekeeper_objects  # noqa: PLC0415 - heavy, only when needed

    folder = ws.scratch(f"gator-{count}")
    policies, _ = analyse([ws.repo(count)])
    objects = gatekeeper_objects(policies, True)
    documents = [*objects.templates.values(), *objects.constraints.values(), objects.governed]
    (folder / "gatekeeper.yaml").write_text("".join(f"---\n{json.dumps(d)}\n" for d in documents))
    (folder / "authclient.json").write_text(json.dumps(client()))
    return folder


def check_gatekeeper_equivalence(ws: Workspace) -> bool:
    """At 10 policies, the CLI's gatekeeper/ output holds exactly the objects benchmarked."""
    out = ws.scratch("gatekeeper-cli-10")
    compiled = run_wait4(
        nauthera_command("compile", ws.repo(10), "--out", out, "--target", "gatekeeper"), timeout=300
    )
    if compiled.returncode != 0:
        raise RuntimeError(f"nauthera compile --target gatekeeper failed:\n{compiled.output}")
    from_cli = sorted(
        (
            json.dumps(doc, sort_keys=True)
            for f in sorted((out / "gatekeeper").rglob("*.yaml"))
            for doc in yaml.safe_load_all(f.read_text())
            if doc
        ),
    )
    folder = gatekeeper_input(ws, 10)
    benchmarked = sorted(
        json.dumps(doc, sort_keys=True)
        for doc in yaml.safe_load_all((folder / "gatekeeper.yaml").read_text())
    )
    return from_cli == benchmarked


def gator_bench(folder: Path, runs: int, iterations: int, timeout: float, budget: Budget) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    unfinished: str | None = None
    for index in range(runs):
        # The first run always gets its full timeout; repetitions only while the measure's budget lasts.
        if index > 0 and budget.left() < 1.5 * results[-1]["wall_seconds"]:
            break
        allowed = timeout
        args: list[str | Path] = [
            tool("gator"),
            "bench",
            "--engine",
            "rego",
            "-f",
            str(folder / "gatekeeper.yaml"),
            "-f",
            str(folder / "authclient.json"),
            "-n",
            str(iterations),
            "--warmup",
            str(max(2, iterations // 10)),
            "-o",
            "json",
        ]
        started = time.perf_counter()
        try:
            completed = subprocess.run(args, capture_output=True, text=True, timeout=allowed, check=False)
        except subprocess.TimeoutExpired:
            unfinished = f"not finished within {allowed:.0f} s ({iterations} iterations)"
            break
        if completed.returncode != 0:
            raise RuntimeError(f"gator bench failed: {completed.stderr[-2000:]}")
        report = json.loads(completed.stdout)[0]
        if report.get("violationCount"):
            raise RuntimeError(f"gator found violations on a compliant client: {report}")
        latencies = report["latencies"]
        results.append(
            {
                "wall_seconds": time.perf_counter() - started,
                "constraints": report["constraintCount"],
                "iterations": report["iterations"],
                "setup_seconds": go_duration_ms(report["setupDuration"]) / 1e3,
                "constraint_loading_seconds": go_duration_ms(report["setupBreakdown"]["constraintLoading"])
                / 1e3,
                **{f"{k}_ms": go_duration_ms(v) for k, v in latencies.items()},
                "reviews_per_second": report["reviewsPerSecond"],
            }
        )
    return {"runs": results, "unfinished": unfinished}


# --- the measure -----------------------------------------------------------------------------------


def _median(values: list[float]) -> float | None:
    return summary(values)["median"] if values else None


def _flat_row(
    figure: str,
    value: tuple[float | None, float | None],
    base: tuple[float | None, float | None],
    base_count: int,
    goal: bool,
    note: str = "",
) -> Row:
    p50_ratio = ratio(value[0], base[0])
    p99_ratio = ratio(value[1], base[1])
    met = p50_ratio is not None and p99_ratio is not None and max(p50_ratio, p99_ratio) <= FLAT_GOAL
    p99_note = f"p99 ratio {p99_ratio:.2f}x" if p99_ratio is not None else ""
    return Row(
        figure,
        "ms",
        value[0],
        value[1],
        f"same at {base_count} policies",
        base[0],
        base[1],
        goal=f"p50 and p99 <= {FLAT_GOAL}x" if goal else "",
        goal_met=met if goal else None,
        note="; ".join(x for x in (p99_note, note) if x),
    )


def run(ws: Workspace, ui: Ui, budget: Budget) -> Result:
    counts = QUICK_COUNTS if ws.quick else COUNTS
    plan = (100, 2, 300) if ws.quick else (300, 3, 1000)
    bench_count = 2 if ws.quick else 3
    result = Result(
        "decision",
        "Decision latency: one governed client as the bundle grows (OPA REST, opa bench, gator)",
        config={
            "counts": counts,
            "rest": {"warmup": plan[0], "runs": plan[1], "requests_per_run": plan[2], "keep_alive": True},
            "opa_bench_repetitions": bench_count,
            "gator_plan": {str(k): {"runs": v[0], "iterations": v[1]} for k, v in GATOR_PLAN.items()},
            "client": client(),
            "governing_policy": EXPECTED_POLICY,
        },
    )
    total = 1 + plan[1] * len(counts) * len(STORES) + bench_count * len(counts) * len(STORES) + len(counts)
    step = ui.task("decision", total=total)
    step.describe("gatekeeper output: CLI vs benchmarked objects at 10 policies")
    result.config["gatekeeper_objects_match_cli"] = check_gatekeeper_equivalence(ws)
    step.advance()
    for count in counts:
        ws.bundle(count)
    rest = rest_latency(ws, counts, plan, step)
    for (count, store), entry in rest.items():
        s = entry["summary_ms"]
        ui.log(f"OPA REST {count:>6,} policies ({store}): p50 {s['median']:.2f} ms, p99 {s['p99']:.2f} ms")
    input_file = ws.root / "authclient-input.json"
    input_file.write_text(json.dumps(client()))
    benches: dict[tuple[int, str], list[dict[str, Any]]] = {(c, s): [] for c in counts for s in STORES}
    for rep in range(bench_count):
        for count in counts:
            for store, extra in STORES.items():
                step.describe(f"opa bench {rep + 1}/{bench_count}: {count:,} policies, {store} store")
                benches[(count, store)] += opa_bench(ws.bundle(count), input_file, 1, extra)["runs"]
                step.advance()
    data: dict[int, dict[str, Any]] = {}
    for count in counts:
        step.describe(f"gator bench --engine rego, {count:,} Constraints")
        gator_runs, iterations = GATOR_PLAN[count]
        if ws.quick:
            gator_runs, iterations = 1, min(iterations, 50)
        folder = gatekeeper_input(ws, count)
        gator = gator_bench(folder, gator_runs, iterations, GATOR_TIMEOUT[count], budget)
        g = gator["runs"]
        ui.log(
            f"gator {count:>6,} constraints: "
            + (f"p50 {g[0]['p50_ms']:.1f} ms, p99 {g[0]['p99_ms']:.1f} ms" if g else str(gator["unfinished"]))
        )
        step.advance()
        data[count] = {
            "policies": count,
            "rest": {store: rest[(count, store)] for store in STORES},
            "opa_bench": {store: {"runs": benches[(count, store)]} for store in STORES},
            "gator": gator,
        }
        result.series[str(count)] = data[count]

    base = counts[0]
    for count in counts:
        entry, first = data[count], data[base]
        goal = count == max(counts) and count >= 10_000
        if count != base:
            for store in STORES:
                s, s0 = entry["rest"][store]["summary_ms"], first["rest"][store]["summary_ms"]
                result.rows.append(
                    _flat_row(
                        f"OPA REST ({store} store), {count:,} policies",
                        (s["median"], s["p99"]),
                        (s0["median"], s0["p99"]),
                        base,
                        goal,
                    )
                )
            for store in STORES:
                b, b0 = entry["opa_bench"][store]["runs"], first["opa_bench"][store]["runs"]
                result.rows.append(
                    _flat_row(
                        f"`opa bench` eval ({store} store), {count:,} policies",
                        (_median([r["eval_median_ms"] for r in b]), _median([r["eval_p99_ms"] for r in b])),
                        (_median([r["eval_median_ms"] for r in b0]), _median([r["eval_p99_ms"] for r in b0])),
                        base,
                        goal,
                        "median over repetitions of OPA's median and p99",
                    )
                )
            g, g0 = entry["gator"]["runs"], first["gator"]["runs"]
            result.rows.append(
                _flat_row(
                    f"Gatekeeper target (`gator bench --engine rego`), {count:,} policies",
                    (_median([r["p50_ms"] for r in g]), _median([r["p99_ms"] for r in g])),
                    (_median([r["p50_ms"] for r in g0]), _median([r["p99_ms"] for r in g0])),
                    base,
                    False,
                    entry["gator"]["unfinished"] or "",
                )
            )
        g = entry["gator"]["runs"]
        rest_default = entry["rest"]["default"]["summary_ms"]
        result.rows.append(
            Row(
                f"OPA REST (default store) vs Gatekeeper target, {count:,} policies",
                "ms",
                rest_default["median"],
                rest_default["p99"],
                f"`gator bench --engine rego`, {count:,} Constraints",
                _median([r["p50_ms"] for r in g]),
                _median([r["p99_ms"] for r in g]),
                note=entry["gator"]["unfinished"] or "",
            )
        )
    result.notes.append(
        "OPA REST figures are client round trips (Python requests, keep-alive) including HTTP and JSON; "
        "`opa bench` figures are evaluation only; gator figures are compute-only reviews."
    )
    step.finish()
    return result

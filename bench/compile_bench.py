"""Measure 1: `nauthera compile` wall time and peak memory, beside `opa build` of the same output.

Each run is a fresh `nauthera compile REPO --out DIR` child (interpreter start included, as a user or CI
pays it), at 10 to 10,000 policies, and with `--target all` (the Gatekeeper objects and gator suites
too) at 1,000 and 10,000. Peak memory is the larger of its `ru_maxrss` from `os.wait4` (exact, one
process) and the PSS summed over it and its worker processes, sampled every 20 ms (the compiler fans
out on large inputs); CPU is its user + system time, workers included.
The anchor packages the very bundle that compile produced: it is unpacked and rebuilt with
`opa build -b` (parse, compile and package the Rego and data: packaging alone). Runs of the two
alternate so that drift on the machine hits both alike.
"""

from __future__ import annotations

import tarfile
import time
from pathlib import Path
from typing import Any

from bench.common import Budget, Result, Row, Step, Ui, Workspace, nauthera_command, run_wait4, summary, tool

COUNTS = (10, 100, 1_000, 10_000)
QUICK_COUNTS = (10, 100, 1_000)
REPETITIONS = {10: 5, 100: 5, 1_000: 5, 10_000: 3}
#: Issue 12: 10,000 policies in 10,000 files, `--target opa` and `--target all`.
GOAL_COUNT = 10_000
GOAL_SECONDS = {"opa": 8.0, "all": 20.0}
#: `--target all` (OPA bundle, Gatekeeper objects and both targets' generated tests) at these sizes.
ALL_COUNTS = (1_000, 10_000)
QUICK_ALL_COUNTS = (1_000,)
#: The in-process stage breakdown runs at this size (cheap, and proportions hold at 10,000).
BREAKDOWN_COUNT = 1_000


def _unpack(bundle: Path, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(bundle, "r:gz") as tar:
        tar.extractall(target, filter="data")
    return target


def stage_breakdown(repo: Path) -> dict[str, float]:
    """Seconds per compile stage, in this process (what to optimise first)."""
    from nauthera.compile.loading import load_paths  # noqa: PLC0415
    from nauthera.compile.model import build_policy  # noqa: PLC0415
    from nauthera.compile.validation import check_policy, classify  # noqa: PLC0415
    from nauthera.targets.opa.bundle import build_bundle  # noqa: PLC0415 - heavy imports only when measuring
    from nauthera.targets.opa.render import render_fixture_tests, render_opa  # noqa: PLC0415

    stages: dict[str, float] = {}
    mark = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        stages[name] = now - mark
        mark = now

    loaded = load_paths([repo])
    lap("load YAML")
    classified = classify(loaded.documents)
    valid = [doc for doc in classified.policies if not any(d.level == "error" for d in check_policy(doc))]
    lap("validate")
    policies = [build_policy(doc) for doc in valid]
    lap("model")
    rendered = render_opa(policies, True)
    lap("render Rego + data")
    render_fixture_tests(policies)
    lap("generate test fixtures")
    build_bundle(rendered.files, {}, None, repo.parent / f".breakdown-{repo.name}.tar.gz")
    lap("package bundle")
    stages = {name: round(seconds, 3) for name, seconds in stages.items()}
    (repo.parent / f".breakdown-{repo.name}.tar.gz").unlink(missing_ok=True)
    return stages


def _cpu_note(samples: dict[str, list[float]]) -> str:
    """CPU beside wall time: on a busy machine the wall time grows while the CPU stays put."""
    if not samples["cpu_seconds"]:
        return ""
    return (
        f"CPU (compile and workers, user + system): median {summary(samples['cpu_seconds'])['median']:.1f} s"
    )


def _target_all(
    ws: Workspace, ui: Ui, step: Step, result: Result, count: int, reps: int, budget: Budget
) -> None:
    """`--target all`: the OPA bundle, the Gatekeeper objects and both targets' generated tests."""
    repo = ws.repo(count)
    samples: dict[str, list[float]] = {"seconds": [], "cpu_seconds": [], "rss_mib": [], "files": []}
    for rep in range(reps):
        if rep > 0 and budget.expired():
            result.notes.append(f"--target all, {count} policies: stopped after {rep} runs (time budget)")
            break
        step.describe(f"compile --target all, {count:,} policies, run {rep + 1}/{reps}")
        out = ws.scratch(f"compile-all-{count}")
        measured = run_wait4(nauthera_command("compile", repo, "--out", out, "--target", "all"), timeout=1800)
        if measured.returncode != 0:
            raise RuntimeError(f"nauthera compile --target all failed:\n{measured.output}")
        samples["seconds"].append(measured.seconds)
        samples["cpu_seconds"].append(measured.cpu_seconds)
        samples["rss_mib"].append(measured.peak_kib / 1024)
        samples["files"].append(sum(1 for p in out.rglob("*") if p.is_file()))
        step.advance()
    s, anchor = summary(samples["seconds"]), result.series[str(count)]["summary"]["opa_build_seconds"]
    files = int(samples["files"][0])
    ui.log(
        f"compile --target all {count:>6,} policies: {s['median']:.2f} s, {int(samples['files'][0]):,} files"
    )
    goal = count == GOAL_COUNT
    result.rows.append(
        Row(
            f"compile {count:,} policies, `--target all`: wall time",
            "s",
            s["median"],
            s["p99"],
            "`opa build` of the OPA bundle",
            anchor["median"],
            anchor["p99"],
            goal=f"<= {GOAL_SECONDS['all']:.0f} s" if goal else "",
            goal_met=s["median"] <= GOAL_SECONDS["all"] if goal else None,
            note=f"{files:,} files written; {_cpu_note(samples)}",
        )
    )
    result.series[f"all-{count}"] = {"policies": count, "samples": samples, "summary": {"seconds": s}}


def run(ws: Workspace, ui: Ui, budget: Budget) -> Result:
    counts = QUICK_COUNTS if ws.quick else COUNTS
    all_counts = QUICK_ALL_COUNTS if ws.quick else ALL_COUNTS
    reps = {n: (2 if ws.quick else REPETITIONS[n]) for n in counts}
    result = Result(
        "compile",
        "Compile: wall time and peak memory vs `opa build` of the same output",
        config={
            "counts": counts,
            "all_counts": all_counts,
            "repetitions": reps,
            "command": "nauthera compile REPO --out DIR [--target all]",
        },
    )
    opa = tool("opa")
    step = ui.task("compile", total=sum(2 * r for r in reps.values()) + sum(reps[n] for n in all_counts) + 1)
    for count in counts:
        repo = ws.repo(count)
        samples: dict[str, list[float]] = {
            "seconds": [],
            "cpu_seconds": [],
            "rss_mib": [],
            "processes": [],
            "opa_seconds": [],
            "opa_rss_mib": [],
        }
        for rep in range(reps[count]):
            if rep > 0 and budget.expired():
                result.notes.append(f"{count} policies: stopped after {rep} runs (time budget)")
                break
            step.describe(f"compile {count:,} policies, run {rep + 1}/{reps[count]}")
            out = ws.root / "compiled" / f"opa-{count}" if rep == 0 else ws.scratch(f"compile-{count}")
            measured = run_wait4(nauthera_command("compile", repo, "--out", out), timeout=900)
            if measured.returncode != 0:
                raise RuntimeError(f"nauthera compile failed:\n{measured.output}")
            samples["seconds"].append(measured.seconds)
            samples["cpu_seconds"].append(measured.cpu_seconds)
            samples["rss_mib"].append(measured.peak_kib / 1024)
            samples["processes"].append(measured.processes)
            ws.compiled[count] = ws.root / "compiled" / f"opa-{count}" / "bundle.tar.gz"
            step.advance()
            step.describe(f"opa build of {count:,} policies, run {rep + 1}/{reps[count]}")
            unpacked = _unpack(ws.compiled[count], ws.scratch(f"opa-build-{count}") / "src")
            anchor = run_wait4(
                [opa, "build", "-b", unpacked, "-o", unpacked.parent / "opa-bundle.tar.gz"], timeout=600
            )
            if anchor.returncode != 0:
                raise RuntimeError(f"opa build failed:\n{anchor.output}")
            samples["opa_seconds"].append(anchor.seconds)
            samples["opa_rss_mib"].append(anchor.peak_kib / 1024)
            step.advance()
        s, o = summary(samples["seconds"]), summary(samples["opa_seconds"])
        m, om = summary(samples["rss_mib"]), summary(samples["opa_rss_mib"])
        ui.log(
            f"compile {count:>6,} policies: {s['median']:.2f} s, {m['median']:.0f} MiB peak "
            f"(opa build {o['median']:.2f} s, {om['median']:.0f} MiB)"
        )
        goal = count == GOAL_COUNT
        result.rows.append(
            Row(
                f"compile {count:,} policies: wall time",
                "s",
                s["median"],
                s["p99"],
                "`opa build` of the same output",
                o["median"],
                o["p99"],
                goal=f"<= {GOAL_SECONDS['opa']:.0f} s" if goal else "",
                goal_met=s["median"] <= GOAL_SECONDS["opa"] if goal else None,
                note=_cpu_note(samples),
            )
        )
        result.rows.append(
            Row(
                f"compile {count:,} policies: peak memory",
                "MiB",
                m["median"],
                m["p99"],
                "`opa build` of the same output",
                om["median"],
                om["p99"],
                note=f"up to {max(samples['processes']):.0f} processes at once (compile and its children)"
                if max(samples["processes"]) > 1
                else "",
            )
        )
        result.series[str(count)] = {
            "policies": count,
            "bundle_bytes": ws.compiled[count].stat().st_size,
            "samples": samples,
            "summary": {
                "seconds": s,
                "rss_mib": m,
                "opa_build_seconds": o,
                "opa_build_rss_mib": om,
            },
        }
    for count in all_counts:
        _target_all(ws, ui, step, result, count, reps[count], budget)
    step.describe(f"stage breakdown at {BREAKDOWN_COUNT:,} policies (in process)")
    try:
        breakdown: dict[str, Any] = stage_breakdown(ws.repo(BREAKDOWN_COUNT))
    except (ImportError, AttributeError, TypeError) as error:  # the compiler's internals moved
        breakdown = {"unavailable": f"{type(error).__name__}: {error}"}
    result.config["stage_breakdown_policies"] = BREAKDOWN_COUNT
    result.series["stage_breakdown_seconds"] = breakdown
    stages = ", ".join(
        f"{name} {sec:.2f} s" if isinstance(sec, float) else f"{name}: {sec}"
        for name, sec in breakdown.items()
    )
    ui.log(f"stages at {BREAKDOWN_COUNT:,}: {stages}")
    result.notes.append(
        f"Where the time goes at {BREAKDOWN_COUNT:,} policies (in process, no start-up): {stages}."
    )
    step.advance()
    step.finish()
    return result

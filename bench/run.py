"""`make bench`: run every measure, write bench/results/*.json and plots, regenerate bench/README.md.

python -m bench.run              # everything (about 13 minutes on 2 cores)
python -m bench.run --quick      # smaller sizes and fewer repetitions, for development
python -m bench.run --only decision,server
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from bench import (
    admission_bench,
    compile_bench,
    decision_bench,
    enforcement_bench,
    fleet_bench,
    operator_bench,
    registry_bench,
    report,
    server_bench,
)
from bench.common import RESULTS_DIR, Budget, Result, Ui, Workspace, machine_info, now_iso, tool_versions

Measure = Callable[[Workspace, Ui, Budget], Result]
#: Each measure's share of the time budget (seconds, full run); loops inside stop early past it.
MEASURES: dict[str, tuple[Measure, float]] = {
    "compile": (compile_bench.run, 420),
    "decision": (decision_bench.run, 280),
    "enforcement": (enforcement_bench.run, 300),
    "server": (server_bench.run, 150),
    "admission": (admission_bench.run, 600),
    "operator": (operator_bench.run, 600),
    "registry": (registry_bench.run, 240),
    "fleet": (fleet_bench.run, 150),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repetitions")
    parser.add_argument("--only", help=f"comma-separated measures out of {', '.join(MEASURES)}")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (printed at the end)")
    args = parser.parse_args(argv)
    chosen = [m.strip() for m in args.only.split(",")] if args.only else list(MEASURES)
    unknown = [m for m in chosen if m not in MEASURES]
    if unknown:
        parser.error(f"unknown measure(s): {', '.join(unknown)}")

    console = Console(log_path=False)
    started = time.monotonic()
    workspace = Workspace(Path(tempfile.mkdtemp(prefix="nauthera-bench-")), quick=args.quick)
    context = {"quick": args.quick, "started": now_iso(), "machine": machine_info(), "tools": tool_versions()}
    console.print(
        f"[bold]Nauthera benchmarks[/bold] {'(quick) ' if args.quick else ''}"
        f"on {context['machine']['cores']} cores; "
        f"load average {context['machine']['load_average'][0]:.2f}; scratch {workspace.root}"
    )
    if context["machine"]["load_average"][0] > 0.5:
        console.print(
            "[yellow]other work is running on this machine (1-minute load average "
            f"{context['machine']['load_average'][0]:.2f}); absolute figures (p99 above all) get noisier. "
            "Each measure records the load average at its start and end.[/yellow]"
        )
    failures = []
    columns = (
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=console) as progress:
            ui = Ui(progress, console)
            overall = ui.task("measures", total=len(chosen))
            for name in chosen:
                measure, share = MEASURES[name]
                overall.describe(f"measure: {name}")
                began = time.monotonic()
                at_start = {
                    **context,
                    "machine": {**context["machine"], "load_average": list(os.getloadavg())},
                }
                try:
                    result = measure(workspace, ui, Budget(share / (3 if args.quick else 1)))
                except Exception as error:
                    failures.append(name)
                    ui.log(f"[red]{name} failed:[/red] {error}")
                    console.print(traceback.format_exc())
                    result = Result(name, f"{name} (failed)", error=f"{type(error).__name__}: {error}")
                result.write(at_start, time.monotonic() - began)
                ui.log(f"{name} done in {time.monotonic() - began:.0f} s")
                overall.advance()
        written = report.plot(report.load_results())
        report.update_readme(report.load_results())
        console.print(f"plots: {', '.join(str(p.relative_to(RESULTS_DIR.parent.parent)) for p in written)}")
        console.print(f"table: {report.README.relative_to(RESULTS_DIR.parent.parent)}")
    finally:
        if args.keep:
            console.print(f"scratch kept in {workspace.root}")
        else:
            shutil.rmtree(workspace.root, ignore_errors=True)
    elapsed = time.monotonic() - started
    console.print(
        f"[bold]bench finished in {elapsed / 60:.1f} min[/bold]"
        + (f"; failed: {failures}" if failures else "")
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""Plots (one PNG per measure) and the results table in bench/README.md, from bench/results/*.json.

python -m bench.report        # regenerate from the last results without measuring again
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from bench.common import BENCH_DIR, RESULTS_DIR

MEASURES = ("compile", "decision", "enforcement", "server", "admission", "operator", "registry", "fleet")
README = BENCH_DIR / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
NONE = "n/a"


def load_results() -> dict[str, dict[str, Any]]:
    found = {}
    for name in MEASURES:
        path = RESULTS_DIR / f"{name}.json"
        if path.exists():
            found[name] = json.loads(path.read_text())
    return found


# --- formatting ------------------------------------------------------------------------------------


def number(value: float | None, unit: str) -> str:
    """Three significant figures or so; whole numbers for rates and memory."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NONE
    if unit in ("req/s", "MiB") or value >= 100:
        return f"{value:,.0f}" if value >= 10 else f"{value:.1f}"
    decimals = 1 if value >= 10 else 2 if value >= 1 else 3
    return f"{value:.{decimals}f}"


def with_p99(median: float | None, p99: float | None, unit: str) -> str:
    text = f"{number(median, unit)} {unit}"
    return f"{text} ({number(p99, unit)})" if p99 is not None else text


def ratio_text(value: float | None) -> str:
    if value is None:
        return NONE
    if value >= 10:
        return f"{value:,.0f}x"
    if value >= 0.1:
        return f"{value:.2f}x"
    return f"{value:.2g}x"


def goal_text(row: dict[str, Any]) -> str:
    goal = str(row.get("goal") or "")
    if not goal:
        return ""
    if row.get("goal_met") is None:
        return goal
    return f"{goal}: {'met' if row['goal_met'] else '**missed**'}"


def table(result: dict[str, Any]) -> list[str]:
    lines = [
        "| figure | Nauthera: median (p99) | anchor | anchor: median (p99) | ratio | goal |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        figure = row["figure"] + (f" <br><sub>{row['note']}</sub>" if row.get("note") else "")
        lines.append(
            "| "
            + " | ".join(
                [
                    figure,
                    with_p99(row["value"], row.get("value_p99"), row["unit"]),
                    row["anchor"],
                    with_p99(row.get("anchor_value"), row.get("anchor_p99"), row["unit"]),
                    ratio_text(row.get("ratio")),
                    goal_text(row),
                ]
            )
            + " |"
        )
    return lines


def results_markdown(results: dict[str, dict[str, Any]]) -> str:
    if not results:
        return "_No results yet: run `make bench`._"
    first = next(iter(results.values()))
    machine, tools = first.get("machine", {}), first.get("tools", {})
    same_run = [r for r in results.values() if not _provenance(r, first)]
    loads = [r.get("machine", {}).get("load_average", [0])[0] for r in same_run]
    loads += [r.get("machine_end", {}).get("load_average", [0])[0] for r in same_run]
    total = sum(r.get("wall_seconds", 0) for r in same_run)
    lines = [
        f"Measured {first.get('date', '?')} on {machine.get('cores', '?')} cores "
        f"({machine.get('cpu', '?')}), "
        f"{machine.get('memory_gib', '?')} GiB, {machine.get('platform', '?')}; "
        f"1-minute load average between {min(loads):.2f} and {max(loads):.2f} during the run; "
        f"measures took {total / 60:.1f} min"
        + (" (**quick run**: fewer sizes and repetitions)" if first.get("quick") else "")
        + ".",
        "",
        "Tools: "
        + ", ".join(f"{k} {v}" for k, v in tools.items())
        + f"; commit {machine.get('git_commit', '?')}"
        + (" with uncommitted compiler changes" if machine.get("compiler_dirty") else "")
        + ".",
        "",
        "Ratio = Nauthera / anchor on the medians. Raw samples: `bench/results/<measure>.json`.",
        "",
    ]
    for name, result in results.items():
        lines += [f"#### {result['title']}", ""]
        lines += _provenance(result, first)
        if result.get("error"):
            lines += [f"**This measure failed:** `{result['error']}`", ""]
        lines += table(result)
        lines.append("")
        for note in result.get("notes", []):
            lines.append(f"- {note}")
        if result.get("notes"):
            lines.append("")
        if (RESULTS_DIR / f"{name}.png").exists():
            lines += [f"![{name}](results/{name}.png)", ""]
    return "\n".join(lines).rstrip() + "\n"


def _provenance(result: dict[str, Any], first: dict[str, Any]) -> list[str]:
    """A measure run at another time or commit than the first one (`--only`) says so under its title."""
    machine = result.get("machine", {})
    commit = machine.get("git_commit", "?")
    if result.get("date", "?")[:10] == first.get("date", "?")[:10] and commit == first.get("machine", {}).get(
        "git_commit"
    ):
        return []
    start = machine.get("load_average", [0])[0]
    end = result.get("machine_end", {}).get("load_average", [0])[0]
    quick = " (**quick run**)" if result.get("quick") else ""
    return [
        f"_Measured separately: {result.get('date', '?')}{quick}, commit {commit}"
        + (" with uncommitted compiler changes" if machine.get("compiler_dirty") else "")
        + f"; 1-minute load average {start:.2f} at the start, {end:.2f} at the end._",
        "",
    ]


def update_readme(results: dict[str, dict[str, Any]], readme: Path = README) -> None:
    text = readme.read_text() if readme.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    if START not in text or END not in text:
        text = text.rstrip() + f"\n\n## Results\n\n{START}\n{END}\n"
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.DOTALL)
    block = f"{START}\n{results_markdown(results)}{END}"
    readme.write_text(pattern.sub(lambda _: block, text, count=1))


# --- plots -----------------------------------------------------------------------------------------


def _plot_compile(result: dict[str, Any], plt: Any) -> Any:
    series = [s for k, s in result["series"].items() if k.isdigit()]
    counts = [s["policies"] for s in series]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, label in (("seconds", "nauthera compile"), ("opa_build_seconds", "opa build (anchor)")):
        med = [s["summary"][key]["median"] for s in series]
        p99 = [s["summary"][key]["p99"] for s in series]
        left.errorbar(
            counts,
            med,
            yerr=[[0] * len(med), [b - a for a, b in zip(med, p99, strict=True)]],
            marker="o",
            capsize=3,
            label=label,
        )
    everything = sorted(
        (s for k, s in result["series"].items() if k.startswith("all-")), key=lambda s: s["policies"]
    )
    if everything:
        left.plot(
            [s["policies"] for s in everything],
            [s["summary"]["seconds"]["median"] for s in everything],
            marker="D",
            label="nauthera compile --target all",
        )
    left.axhline(8, color="red", linestyle="--", linewidth=1, label="goal at 10,000: 8 s (opa)")
    left.axhline(20, color="darkred", linestyle=":", linewidth=1, label="goal at 10,000: 20 s (all)")
    left.set(
        xscale="log",
        yscale="log",
        xlabel="policies",
        ylabel="wall time, s (median, bar to p99)",
        title="Compile wall time",
    )
    left.legend()
    for key, label in (("rss_mib", "nauthera compile"), ("opa_build_rss_mib", "opa build (anchor)")):
        right.plot(counts, [s["summary"][key]["median"] for s in series], marker="o", label=label)
    right.set(xscale="log", xlabel="policies", ylabel="peak RSS, MiB (median)", title="Compile peak memory")
    right.legend()
    return figure


def _plot_decision(result: dict[str, Any], plt: Any) -> Any:
    series = sorted((s for s in result["series"].values()), key=lambda s: s["policies"])
    counts = [s["policies"] for s in series]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for axis, stat, name in ((axes[0], "median", "p50"), (axes[1], "p99", "p99")):
        for store in ("default", "read-optimized"):
            axis.plot(
                counts,
                [s["rest"][store]["summary_ms"][stat] for s in series],
                marker="o",
                label=f"OPA REST ({store} store)",
            )
        key = "eval_median_ms" if stat == "median" else "eval_p99_ms"
        for store in ("default", "read-optimized"):
            values = [_med([r[key] for r in s["opa_bench"][store]["runs"]]) for s in series]
            axis.plot(counts, values, marker="s", linestyle=":", label=f"opa bench eval ({store})")
        gator = [_med([r[f"{name}_ms"] for r in s["gator"]["runs"]]) for s in series]
        axis.plot(counts, gator, marker="^", linestyle="--", label="gator bench (Gatekeeper target)")
        axis.set(
            xscale="log", yscale="log", xlabel="policies in the bundle", title=f"Decision latency {name}"
        )
    axes[0].set_ylabel("ms")
    axes[0].legend(fontsize=8)
    return figure


def _plot_enforcement(result: dict[str, Any], plt: Any) -> Any:
    from bench.enforcement_bench import (  # noqa: PLC0415
        DEFAULT_POLLING,
        DEMO_POLLING,
        GOAL_P99_SECONDS,
        TARGET_P99_SECONDS,
        residual_quantile,
    )

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4))
    ordered = sorted(result["series"].items(), key=lambda item: int(item[0]))
    for key, series in ordered:
        samples = sorted(series["samples_seconds"])
        if samples:
            left.step(
                samples,
                [(i + 1) / len(samples) for i in range(len(samples))],
                where="post",
                label=f"long polling, {int(key):,} policies (measured)",
            )
        plain = sorted(series.get("plain_polling_samples_seconds") or [])
        if plain:
            left.plot(
                plain,
                [(i + 1) / len(plain) for i in range(len(plain))],
                "x",
                label="plain polling 1-2 s (measured)",
            )
    qs = [i / 200 for i in range(201)]
    left.plot(
        [residual_quantile(q, *DEFAULT_POLLING) for q in qs],
        qs,
        linestyle="--",
        label="OPA default polling 60-120 s (computed)",
    )
    first = result["series"].get("100")
    if first and first.get("plain_polling_samples_seconds") and first["summary_seconds"].get("n"):
        shift = first["summary_seconds"]["median"]
        left.plot(
            [shift + residual_quantile(q, *DEMO_POLLING) for q in qs],
            qs,
            linestyle=":",
            label="model: 1-2 s polling + long-poll p50",
        )
    left.set(
        xscale="log",
        xlabel="seconds from file write to the new decision",
        ylabel="fraction of edits",
        title="Change-to-enforcement (CDF)",
    )
    left.legend(fontsize=7)
    measured = [(int(k), s["summary_seconds"]) for k, s in ordered if s["summary_seconds"].get("n")]
    counts = [c for c, _ in measured]
    right.plot(counts, [s["median"] for _, s in measured], marker="o", label="p50")
    right.plot(counts, [s["p99"] for _, s in measured], marker="s", label="p99")
    right.axhline(GOAL_P99_SECONDS, color="red", linestyle="--", linewidth=1, label="goal: p99 1 s")
    right.axhline(TARGET_P99_SECONDS, color="green", linestyle=":", linewidth=1, label="target: p99 0.3 s")
    right.set(
        xscale="log",
        yscale="log",
        xlabel="policies in the watched repository",
        ylabel="seconds",
        title="Edit to new decision as the repository grows",
    )
    right.legend(fontsize=8)
    return figure


def _plot_server(result: dict[str, Any], plt: Any) -> Any:
    data = result["series"]["throughput"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = ["304 (conditional)", "200 (download)"]
    for offset, name in ((-0.2, "nauthera"), (0.2, "nginx")):
        rps = [_med([r["throughput_rps"] for r in data["results"][name][s]]) for s in ("304", "200")]
        p99 = [_med([r["p99_ms"] for r in data["results"][name][s]]) for s in ("304", "200")]
        left.bar([i + offset for i in range(2)], rps, width=0.4, label=name)
        right.bar([i + offset for i in range(2)], p99, width=0.4, label=name)
    for axis, title, unit in ((left, "Throughput", "requests/s"), (right, "Latency p99", "ms")):
        axis.set_xticks(range(2), labels)
        axis.set(ylabel=unit, title=f"{title} with {data['held']:,} fleet connections held")
        axis.legend()
    right.set_yscale("log")
    return figure


def _plot_fleet(result: dict[str, Any], plt: Any) -> Any:
    data = result["series"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    timeline = data["rss_mib"]["timeline"]
    left.plot([p["t"] for p in timeline], [p["rss_mib"] for p in timeline], marker=".", label="under load")
    left.axhline(
        data["rss_mib"]["held"], color="grey", linestyle="--", label="holding the long polls, before"
    )
    left.set(xlabel="seconds", ylabel="MiB", title="Server RSS over the load", ylim=(0, None))
    left.legend(fontsize=8)
    for name, label in (("probe", "304 (conditional GET)"), ("status", "status report (204)")):
        windows = data["windows"][name]
        right.plot([w["t"] for w in windows], [w["p99_ms"] for w in windows], marker=".", label=label)
    right.set(
        xlabel="seconds", ylabel="p99 ms (5 s windows)", title="Latency p99 under the load", ylim=(0, None)
    )
    right.legend(fontsize=8)
    return figure


def _plot_admission(result: dict[str, Any], plt: Any) -> Any:
    from bench.admission_bench import LABELS, ROUTES  # noqa: PLC0415

    series = sorted((s for k, s in result["series"].items() if k.isdigit()), key=lambda s: s["policies"])
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / len(ROUTES)
    for axis, stat in ((axes[0], "median"), (axes[1], "p99")):
        for number, route in enumerate(ROUTES):
            values = [s["summary_ms"][route][stat] for s in series]
            offsets = [i + (number - (len(ROUTES) - 1) / 2) * width for i in range(len(series))]
            axis.bar(offsets, values, width=width, label=LABELS[route])
        axis.set_xticks(range(len(series)), [f"{s['policies']:,} policies" for s in series])
        name = "p50" if stat == "median" else "p99"
        axis.set(title=f"AuthClient create (dry run) {name}", ylabel="ms (log scale)", yscale="log")
    axes[0].legend(fontsize=8)
    return figure


def _med(values: list[float]) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


PLOTS = {
    "compile": _plot_compile,
    "decision": _plot_decision,
    "enforcement": _plot_enforcement,
    "server": _plot_server,
    "admission": _plot_admission,
    "fleet": _plot_fleet,
}


def plot(results: dict[str, dict[str, Any]]) -> list[Path]:
    try:
        import matplotlib  # noqa: PLC0415 - optional dependency (the `bench` extra)
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plots")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    written = []
    for name, result in results.items():
        if result.get("error") or not result.get("series"):
            continue
        try:
            figure = PLOTS[name](result, plt)
        except (KeyError, TypeError, ValueError, IndexError) as error:
            print(f"no plot for {name}: {type(error).__name__}: {error}")
            continue
        figure.suptitle(f"Nauthera benchmark: {name} ({result.get('date', '')})", fontsize=9)
        figure.tight_layout()
        target = RESULTS_DIR / f"{name}.png"
        figure.savefig(target, dpi=110)
        plt.close(figure)
        written.append(target)
    return written


def main() -> None:
    results = load_results()
    plot(results)
    update_readme(results)
    print(f"updated {README} from {len(results)} result files")


if __name__ == "__main__":
    main()

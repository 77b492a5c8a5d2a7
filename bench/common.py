"""What every measure shares: statistics, memory of child processes, machine facts, result files.

Child processes themselves are tests/harness/processes.py's (`Process`, `free_port`, `wait_until`): one
helper for tests, benchmarks and demos.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nauthera import __version__ as nauthera_version
from nauthera.engines.tools import find_tool
from rich.console import Console
from rich.progress import Progress, TaskID

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
LOOPBACK = "127.0.0.1"


# --- statistics ------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float]) -> dict[str, float | int]:
    """Median, p99 and friends of raw samples."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "min": min(values),
        "median": percentile(values, 50),
        "mean": sum(values) / len(values),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
    }


def ratio(value: float | None, anchor: float | None) -> float | None:
    if value is None or anchor is None or anchor == 0 or math.isnan(value) or math.isnan(anchor):
        return None
    return value / anchor


# --- progress and budget ---------------------------------------------------------------------------


@dataclass
class Ui:
    """Rich progress bars plus a log line per step (so progress shows in logs and pipes too)."""

    progress: Progress
    console: Console

    def task(self, description: str, total: float) -> Step:
        return Step(self, self.progress.add_task(description, total=total))

    def log(self, message: str) -> None:
        self.progress.console.log(message)


@dataclass
class Step:
    ui: Ui
    task_id: TaskID

    def advance(self, amount: float = 1, description: str | None = None) -> None:
        if description is not None:
            self.ui.progress.update(self.task_id, description=description)
        self.ui.progress.advance(self.task_id, amount)

    def describe(self, description: str) -> None:
        self.ui.progress.update(self.task_id, description=description)

    def finish(self) -> None:
        task = self.ui.progress.tasks[[t.id for t in self.ui.progress.tasks].index(self.task_id)]
        self.ui.progress.update(self.task_id, completed=task.total)


@dataclass
class Budget:
    """A deadline in seconds from now; loops ask `left()` and stop early rather than overrun."""

    seconds: float
    started: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.started)

    def expired(self) -> bool:
        return self.left() <= 0


# --- child processes -------------------------------------------------------------------------------


class MemorySampler:
    """Samples a process tree's summed PSS every 20 ms in a thread, from now until `stop` (the peak),
    so a peak between two looks at VmHWM (a short-lived worker's) is caught too."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.started = time.monotonic()
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_kib = max(self.peak_kib, tree_rss_kib(self.pid)[0])

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.peak_kib


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU a live process has used (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a live process, in KiB."""
    found = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
    return found


def children_of(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc), e.g. nginx's worker."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            text = status.read_text()
            match = re.search(r"^PPid:\s*(\d+)", text, re.MULTILINE)
            if match and int(match.group(1)) == pid:
                found.append(int(status.parent.name))
    return found


@dataclass(frozen=True)
class Run:
    """One finished child: wall seconds, memory, exit status and output.

    `max_rss_kib` is `ru_maxrss` from `wait4`: exact, but the largest *single* process of the tree.
    `tree_rss_kib` is the largest sum of PSS over the child and all its descendants, sampled every
    ~20 ms: what the machine had to hold when the child fans out to worker processes.
    """

    seconds: float
    max_rss_kib: int
    returncode: int
    output: str
    tree_rss_kib: int = 0
    processes: int = 1
    #: User + system CPU of the child and the children it waited for (its compile workers).
    cpu_seconds: float = 0.0

    @property
    def peak_kib(self) -> int:
        return max(self.max_rss_kib, self.tree_rss_kib)


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (from /proc/PID/task/TID/children)."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                with contextlib.suppress(OSError):
                    pending.extend(int(child) for child in (task / "children").read_text().split())
    return found


def _pss_kib(pid: int) -> int:
    """Proportional set size: shared pages split between the processes sharing them, so sums are fair
    (a plain RSS sum counts a freshly forked child's copy-on-write pages twice)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return process_memory_kib(pid).get("VmRSS", 0)


def tree_rss_kib(pid: int) -> tuple[int, int]:
    """Summed PSS (KiB) of `pid` and its descendants, and how many processes that was."""
    pids = process_tree(pid)
    return sum(_pss_kib(p) for p in pids), len(pids)


def run_wait4(args: Sequence[str | Path], timeout: float, cwd: Path | None = None) -> Run:
    """Run a child to completion and take its own peak RSS from `os.wait4` (KiB on Linux).

    Output goes to a temporary file so no pipe can fill up; the child is killed after `timeout`.
    """
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"nauthera-bench-{os.getpid()}-{time.monotonic_ns()}.log"
    try:
        with log.open("wb") as output:
            started = time.perf_counter()
            process = subprocess.Popen(
                [str(a) for a in args],
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
            )
            deadline = started + timeout
            next_sample, tree_peak, processes = started, 0, 1
            while True:
                pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                if pid:
                    break
                now = time.perf_counter()
                if now > deadline:
                    process.kill()
                    os.wait4(process.pid, 0)
                    process.returncode = -9
                    raise subprocess.TimeoutExpired([str(a) for a in args], timeout)
                if now >= next_sample:
                    total, count = tree_rss_kib(process.pid)
                    tree_peak, processes = max(tree_peak, total), max(processes, count)
                    next_sample = now + 0.02
                time.sleep(0.002)
            seconds = time.perf_counter() - started
            process.returncode = os.waitstatus_to_exitcode(status)
        tail = log.read_text(errors="replace")[-4000:]
        cpu = usage.ru_utime + usage.ru_stime
        return Run(seconds, int(usage.ru_maxrss), process.returncode, tail, tree_peak, processes, cpu)
    finally:
        log.unlink(missing_ok=True)


def nauthera_command(*args: str | Path) -> list[str]:
    """The CLI as users run it (`nauthera ...`), through this interpreter."""
    return [sys.executable, "-m", "nauthera", *map(str, args)]


def tool(name: str) -> Path:
    return Path(find_tool(name))


# --- machine and tool facts ------------------------------------------------------------------------


def _first_line(args: list[str]) -> str:
    try:
        completed = subprocess.run(args, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError) as error:
        return f"unavailable ({error})"
    text = (completed.stdout + completed.stderr).strip()
    return text.splitlines()[0] if text else "unavailable"


def tool_versions() -> dict[str, str]:
    versions = {"nauthera": nauthera_version, "python": platform.python_version()}
    for name in ("opa", "gator"):
        try:
            path = str(tool(name))
        except Exception as error:  # the tool lookup raises nauthera's own error type
            versions[name] = f"unavailable ({error})"
            continue
        text = subprocess.run([path, "version"], capture_output=True, text=True, check=False).stdout
        match = re.search(r"^(Version|GitVersion):\s*(\S+)", text, re.MULTILINE)
        versions[name] = match.group(2) if match else "unknown"
    for name, args in {"nginx": ["nginx", "-v"], "wrk": ["wrk", "-v"]}.items():
        line = _first_line(args) if shutil.which(name) else "not installed"
        match = re.search(r"(?:nginx/|wrk )(\S+)", line)
        versions[name] = match.group(1) if match else line
    with contextlib.suppress(ImportError):
        import matplotlib  # noqa: PLC0415 - optional

        versions["matplotlib"] = matplotlib.__version__
    for module in ("httptools", "uvloop", "starlette"):
        with contextlib.suppress(ImportError):
            versions[module] = __import__(module).__version__
    return versions


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1])
    commit = _first_line(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "compiler"])
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory / 1024 / 1024, 1),
        "load_average": list(os.getloadavg()),
        "git_commit": commit,
        "compiler_dirty": dirty not in ("", "unavailable"),
    }


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- results ---------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the README table: a figure (median and p99) beside its anchor, and their ratio.

    The ratio is figure / anchor on the medians; `value_p99`/`anchor_p99` may be None where a figure
    has a single sample per run (then the median is over runs and the p99 is not meaningful).
    """

    figure: str
    unit: str
    value: float | None
    value_p99: float | None
    anchor: str
    anchor_value: float | None
    anchor_p99: float | None = None
    goal: str = ""
    goal_met: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return ratio(self.value, self.anchor_value)

    def as_json(self) -> dict[str, Any]:
        return {
            "figure": self.figure,
            "unit": self.unit,
            "value": self.value,
            "value_p99": self.value_p99,
            "anchor": self.anchor,
            "anchor_value": self.anchor_value,
            "anchor_p99": self.anchor_p99,
            "ratio": self.ratio,
            "goal": self.goal,
            "goal_met": self.goal_met,
            "note": self.note,
        }


@dataclass
class Result:
    measure: str
    title: str
    config: dict[str, Any] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def write(self, context: dict[str, Any], seconds: float) -> Path:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        document = {
            "measure": self.measure,
            "title": self.title,
            "date": now_iso(),
            "wall_seconds": round(seconds, 2),
            "error": self.error,
            **context,
            "machine_end": {"load_average": list(os.getloadavg())},
            "config": self.config,
            "rows": [row.as_json() for row in self.rows],
            "notes": self.notes,
            "series": self.series,
        }
        target = RESULTS_DIR / f"{self.measure}.json"
        target.write_text(json.dumps(_clean(document), indent=1, allow_nan=False) + "\n")
        return target


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null, paths strings, tuples lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# --- the shared workspace --------------------------------------------------------------------------


@dataclass
class Workspace:
    """Scratch space shared by the measures: generated repositories and their compiled bundles.

    It lives outside the Git checkout, so the compiler's `git rev-parse` finds no repository there.
    """

    root: Path
    quick: bool
    compiled: dict[int, Path] = field(default_factory=dict)

    def repo(self, count: int) -> Path:
        from bench.generate import generate  # noqa: PLC0415 - avoids an import cycle

        folder = self.root / "repos" / f"policies-{count}"
        if not (folder / ".complete").exists():
            shutil.rmtree(folder, ignore_errors=True)
            generate(folder, count)
            (folder / ".complete").write_text("")
        return folder

    def bundle(self, count: int) -> Path:
        """The compiled OPA bundle of `count` policies (compiled here if no measure did it yet)."""
        if count not in self.compiled:
            out = self.root / "compiled" / f"opa-{count}"
            run = run_wait4(nauthera_command("compile", self.repo(count), "--out", out), timeout=600)
            if run.returncode != 0:
                raise RuntimeError(f"nauthera compile of {count} policies failed:\n{run.output}")
            self.compiled[count] = out / "bundle.tar.gz"
        return self.compiled[count]

    def scratch(self, name: str) -> Path:
        folder = self.root / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

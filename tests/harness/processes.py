"""Real processes on loopback for the server tests: the sidecar/server and OPA agents."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import requests
import yaml
from nauthera.engines.tools import find_tool


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
        except (requests.RequestException, OSError, ValueError, KeyError) as error:
            last_error, value = error, None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


#: Exit statuses of a clean stop: the program handled SIGTERM and exited 0, or the signal's default
#: action ended it (no handler, or one that re-raises it after a graceful shutdown, as uvicorn does).
CLEAN_EXITS = (0, -signal.SIGTERM)


class Process:
    """A child process whose output goes to a log file, stopped (and reaped) by `stop`."""

    def __init__(self, args: Sequence[str | Path], log: Path, env: dict[str, str] | None = None) -> None:
        self.args = [str(arg) for arg in args]
        self.log = log
        self.env = env
        self.handle: subprocess.Popen[bytes] | None = None
        #: Seconds the last `stop` took from the signal to the exit.
        self.stop_seconds: float | None = None

    @property
    def name(self) -> str:
        return Path(self.args[0]).name

    @property
    def pid(self) -> int:
        assert self.handle is not None, f"{self.name} was never started"
        return self.handle.pid

    def start(self) -> Process:
        with self.log.open("ab") as output:
            self.handle = subprocess.Popen(
                self.args, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env
            )
        return self

    def alive(self) -> bool:
        return self.handle is not None and self.handle.poll() is None

    def wait_ready(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        """`wait_until`, failing at once (with the log tail) if the process exits while we wait."""

        def ready() -> Any:
            if not self.alive():
                code = self.handle.returncode if self.handle else None
                raise AssertionError(f"{self.name} exited with {code} before {what}:\n{self.tail()}")
            return condition()

        try:
            return wait_until(ready, timeout, what)
        except AssertionError as error:
            raise AssertionError(f"{error}\n--- {self.name} log tail ---\n{self.tail()}") from None

    def stop(self, timeout: float = 20, sig: signal.Signals = signal.SIGTERM) -> int:
        """Send `sig` (SIGTERM), wait, and assert a clean exit within `timeout` seconds; the time it
        took is kept in `stop_seconds`.

        A process that ignores the signal (or already died with an error) is a failure: it is reported
        as one, and only then killed so that nothing outlives the test.
        """
        if self.handle is None:
            return 0
        if self.handle.poll() is not None:
            code = self.handle.returncode
            assert code in CLEAN_EXITS, f"{self.name} had already exited with {code}:\n{self.tail()}"
            return code
        started = time.monotonic()
        self.handle.send_signal(sig)
        try:
            code = self.handle.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.handle.kill()
            self.handle.wait()
            raise AssertionError(
                f"{self.name} (pid {self.handle.pid}) ignored {sig.name} for {timeout:.1f}s and was killed:\n"
                f"{self.tail()}"
            ) from None
        self.stop_seconds = seconds = time.monotonic() - started
        assert code in (0, -sig), (
            f"{self.name} exited with {code} on {sig.name} ({seconds:.1f}s):\n{self.tail()}"
        )
        return code

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, lines: int = 30, width: int = 400) -> str:
        """The last lines of the log, each cut to `width` characters (Go stack traces are long)."""
        return "\n".join(line[:width] for line in self.output().splitlines()[-lines:])


def stop_all(processes: Sequence[Process]) -> None:
    """Stop every process in order, even when one fails to stop cleanly; then report all failures."""
    failures = []
    for process in processes:
        try:
            process.stop()
        except AssertionError as error:
            failures.append(str(error))
    assert not failures, "\n\n".join(failures)


def nauthera(*args: str | Path, log: Path) -> Process:
    return Process([sys.executable, "-m", "nauthera", *map(str, args)], log).start()


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def opa_agent(
    workdir: Path,
    name: str,
    server: str,
    *,
    bundle: str = "stable",
    long_poll: int | None = 10,
    min_delay: int = 1,
    max_delay: int = 2,
    token: str | None = None,
    decision_logs: bool = True,
    keys: dict[str, Any] | None = None,
    signing: dict[str, Any] | None = None,
    registry: tuple[dict[str, Any], str] | None = None,
    deltas: bool = True,
    persist: bool = False,
) -> tuple[Process, str]:
    """An `opa run --server` configured to pull `bundle` from `server`; returns it and its base URL.

    `keys` and `signing` are OPA's `keys` and the bundle's `signing` settings (signed bundles);
    `deltas` opts in to delta bundles (the `Nauthera-Delta-Bundles` header); `persist` keeps the
    bundle on disk (in `workdir`), which is why such an agent must not opt in. `registry` (an OCI
    service and the bundle's `resource`) pulls the bundle from a registry instead; status and decision
    logs still go to `server`."""
    port = free_port()
    polling: dict[str, Any] = {"min_delay_seconds": min_delay, "max_delay_seconds": max_delay}
    if long_poll and registry is None:
        polling["long_polling_timeout_seconds"] = long_poll
    service: dict[str, Any] = {"url": server}
    if deltas:
        service["headers"] = {"Nauthera-Delta-Bundles": "on"}
    if token:
        service["credentials"] = {"bearer": {"token": token}}
    source = {"service": "nauthera", "resource": f"bundles/{bundle}"}
    services = {"nauthera": service}
    if registry is not None:
        services["registry"] = registry[0]
        source = {"service": "registry", "resource": registry[1]}
    config: dict[str, Any] = {
        "services": services,
        "bundles": {bundle: {**source, "polling": polling}},
        # Persisted bundles and the OCI layouts OPA pulls go here (by default .opa in the working folder).
        "persistence_directory": str(workdir / f"{name}-persistence"),
        **({"keys": keys} if keys else {}),
        "status": {"service": "nauthera"},
        # OPA sets labels.id to its own instance id; `name` is how these tests tell agents apart.
        "labels": {"name": name, "app": "test"},
    }
    if signing:
        config["bundles"][bundle]["signing"] = signing
    if persist:
        config["bundles"][bundle]["persist"] = True
    if decision_logs:
        config["decision_logs"] = {
            "service": "nauthera",
            "reporting": {"min_delay_seconds": 1, "max_delay_seconds": 1},
        }
    config_file = workdir / f"{name}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    args = [
        str(find_tool("opa")),
        "run",
        "--skip-version-check",
        "--server",
        "--addr",
        f"127.0.0.1:{port}",
        "--config-file",
        str(config_file),
    ]
    return Process(args, workdir / f"{name}.log").start(), f"http://127.0.0.1:{port}"


def opa_serving(bundle: Path, log: Path, *flags: str) -> tuple[Process, str]:
    """`opa run --server -b BUNDLE` on a free loopback port; returns it and its base URL."""
    port = free_port()
    args = [
        str(find_tool("opa")),
        "run",
        "--skip-version-check",
        "--server",
        "--addr",
        f"127.0.0.1:{port}",
        "-b",
        str(bundle),
        *flags,
    ]
    return Process(args, log).start(), f"http://127.0.0.1:{port}"


def decide(opa_url: str, client: dict[str, Any]) -> dict[str, Any] | None:
    """The decision of an OPA agent, or None while it has no bundle."""
    response = requests.post(
        f"{opa_url}/v1/data/nauthera/authclient/decision", json={"input": client}, timeout=5
    )
    result: dict[str, Any] | None = response.json().get("result")
    return result


def write_policy(folder: Path, name: str, spec: dict[str, Any]) -> Path:
    """Write one AuthPolicy atomically (write then rename), as editors and git checkouts do."""
    document = {
        "apiVersion": "auth.nauthera.io/v1alpha1",
        "kind": "AuthPolicy",
        "metadata": {"name": name, "namespace": "security"},
        "spec": spec,
    }
    target = folder / f"{name}.yaml"
    temporary = folder / f".{name}.yaml.tmp"
    temporary.write_text(json.dumps(document))
    temporary.replace(target)
    return target

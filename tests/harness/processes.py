"""Real processes on loopback for the server tests: the sidecar/server and OPA agents."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
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


class Process:
    """A child process whose output goes to a log file, stopped (and reaped) by `stop`."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args = args
        self.log = log
        self.handle: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        with self.log.open("ab") as output:
            self.handle = subprocess.Popen(self.args, stdout=output, stderr=subprocess.STDOUT)
        return self

    def stop(self) -> None:
        if self.handle and self.handle.poll() is None:
            self.handle.terminate()
            try:
                self.handle.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.handle.kill()
                self.handle.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def nauthera(*args: str | Path, log: Path) -> Process:
    return Process([sys.executable, "-m", "nauthera", *map(str, args)], log).start()


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
) -> tuple[Process, str]:
    """An `opa run --server` configured to pull `bundle` from `server`; returns it and its base URL.

    `keys` and `signing` are OPA's `keys` and the bundle's `signing` settings (signed bundles)."""
    port = free_port()
    polling: dict[str, Any] = {"min_delay_seconds": min_delay, "max_delay_seconds": max_delay}
    if long_poll:
        polling["long_polling_timeout_seconds"] = long_poll
    service: dict[str, Any] = {"url": server}
    if token:
        service["credentials"] = {"bearer": {"token": token}}
    config: dict[str, Any] = {
        "services": {"nauthera": service},
        "bundles": {bundle: {"service": "nauthera", "resource": f"bundles/{bundle}", "polling": polling}},
        **({"keys": keys} if keys else {}),
        "status": {"service": "nauthera"},
        # OPA sets labels.id to its own instance id; `name` is how these tests tell agents apart.
        "labels": {"name": name, "app": "test"},
    }
    if signing:
        config["bundles"][bundle]["signing"] = signing
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

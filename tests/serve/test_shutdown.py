"""Issue 16: `serve` and `sidecar` exit 0 within 2 s of SIGTERM or SIGINT whatever they hold: held long
polls (answered 304), an upload half sent, a slowloris, a compile under way, a push to an OPA that
hangs. (The operator's stop is in tests/kube/test_operator_faults.py.)"""

from __future__ import annotations

import json
import random
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from nauthera.store.folder import FolderStore

from ..harness.policies import document, random_spec
from ..harness.processes import Process, free_port, nauthera, stop_all, wait_until, write_policy
from ..harness.reliability import Reliability

STOP_SECONDS = 2.0
HELD = 50


def _ready(process: Process, url: str, timeout: float = 60) -> None:
    process.wait_ready(lambda: requests.get(f"{url}/readyz", timeout=1).status_code == 200, timeout, "ready")


def _hold_long_polls(port: int, revision: str, count: int) -> list[socket.socket]:
    """`count` raw connections each holding a long poll (the agent has the current revision)."""
    request = (
        f'GET /bundles/stable HTTP/1.1\r\nHost: x\r\nIf-None-Match: "{revision}"\r\n'
        "Prefer: modes=snapshot,delta; wait=60\r\n\r\n"
    ).encode()
    held = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(request)
        held.append(sock)
    return held


def _held(url: str) -> float:
    metrics = requests.get(f"{url}/metrics", timeout=2).text
    line = next(line for line in metrics.splitlines() if line.startswith("nauthera_long_poll_waiters "))
    return float(line.split()[1])


@pytest.fixture
def started() -> Iterator[list[Process]]:
    """Processes a test starts; whatever the test found, none outlives it."""
    processes: list[Process] = []
    yield processes
    stop_all([process for process in processes if process.alive()])


def _stop_within(process: Process, sig: signal.Signals) -> float:
    """Stop with `sig`; assert exit code 0 within STOP_SECONDS; the seconds it took."""
    code = process.stop(timeout=STOP_SECONDS, sig=sig)
    assert code == 0, f"{process.name} exited with {code}, not 0, on {sig.name}"
    assert process.stop_seconds is not None
    return process.stop_seconds


@contextmanager
def _half_sent_upload(port: int) -> Iterator[socket.socket]:
    """A decision-log upload announced as 1 MiB of which only 1 KiB is sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /logs HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n[" + b" " * 1023)
        yield sock


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_exits_at_once_whatever_it_holds(
    sig: signal.Signals,
    tmp_path: Path,
    example_bundle: Path,
    reliability: Reliability,
    started: list[Process],
) -> None:
    shutil.copy(example_bundle, tmp_path / "bundle.tar.gz")
    revision = FolderStore(tmp_path / "store").publish(tmp_path / "bundle.tar.gz", "stable").revision
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = nauthera(
        "serve", "--store", tmp_path / "store", "--listen", f"127.0.0.1:{port}", log=tmp_path / "s.log"
    )
    started.append(server)
    _ready(server, url)
    held = _hold_long_polls(port, revision, HELD)
    slowloris = socket.create_connection(("127.0.0.1", port), timeout=10)
    slowloris.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
    try:
        with _half_sent_upload(port):
            wait_until(lambda: _held(url) >= HELD, 10, f"{HELD} held long polls")
            seconds = _stop_within(server, sig)
        answers = {sock.recv(4096).split(b"\r\n", 1)[0] for sock in held}
    finally:
        for sock in [*held, slowloris]:
            sock.close()
    assert answers == {b"HTTP/1.1 304 Not Modified"}, answers
    assert "Traceback" not in server.output()
    reliability.add(
        "shutdown",
        f"serve, {sig.name} holding {HELD} long polls, a half-sent upload and a slowloris",
        f"exit 0 in {seconds:.2f} s; every long poll answered 304",
    )


def _write_policies(folder: Path, count: int, seed: int) -> None:
    rng = random.Random(seed)
    for index in range(count):
        doc = document(f"p{seed}-{index:05d}", random_spec(rng))
        (folder / f"p{seed}-{index:05d}.yaml").write_text(json.dumps(doc))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


BIG = 4000


def _sidecar(work: Path, policies: Path, port: int, *extra: str) -> Process:
    store, listen = work / "store", f"127.0.0.1:{port}"
    args = ("sidecar", "--source", policies, "--store", store, "--listen", listen, *extra)
    return nauthera(*args, log=work / "sidecar.log")


def test_sidecar_exits_at_once_during_its_first_compile(
    tmp_path: Path, reliability: Reliability, started: list[Process]
) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    _write_policies(policies, BIG, seed=1)
    port = free_port()
    sidecar = _sidecar(tmp_path, policies, port)
    started.append(sidecar)
    # Past the imports (about a second of CPU) and into the compile.
    wait_until(lambda: _cpu_seconds(sidecar.pid) > 1.5, 30, "the sidecar to be compiling")
    seconds = _stop_within(sidecar, signal.SIGTERM)
    assert "compiled" not in sidecar.output(), "the compile finished before the signal: nothing was tested"
    assert "Traceback" not in sidecar.output()
    assert FolderStore(tmp_path / "store").fsck() == []
    reliability.add(
        "shutdown",
        f"sidecar, SIGTERM during its first compile ({BIG:,} policies)",
        f"exit 0 in {seconds:.2f} s; store consistent",
    )


def _hanging_opa() -> socket.socket:
    """A listener that accepts connections and never answers: an OPA that hangs (the boundary this
    test cannot get a real OPA to reproduce on demand)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    return listener


def test_sidecar_exits_at_once_during_a_recompile_and_a_hanging_push(
    tmp_path: Path, reliability: Reliability, started: list[Process]
) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    write_policy(
        policies,
        "grants",
        {"targets": {"namespaces": ["team-*"]}, "allowedGrantTypes": ["authorization_code"]},
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with _hanging_opa() as opa:
        push_to = f"http://127.0.0.1:{opa.getsockname()[1]}"
        sidecar = _sidecar(tmp_path, policies, port, "--debounce", "50ms", "--push-to", push_to)
        started.append(sidecar)
        _ready(sidecar, url)
        revision = requests.get(f"{url}/v1/channels", timeout=2).json()["stable"]["revision"]
        held = _hold_long_polls(port, revision, 5)
        try:
            wait_until(lambda: _held(url) >= 5, 10, "held long polls")
            compiled_before = sidecar.output().count("compiled ")
            noticed_before = sidecar.output().count(" detected")
            staging = tmp_path / "staging"
            staging.mkdir()
            _write_policies(staging, BIG, seed=2)
            staging.rename(policies / "more")  # a checkout: the files appear in one step
            wait_until(lambda: sidecar.output().count(" detected") > noticed_before, 10, "the change")
            time.sleep(0.3)  # into the recompile
            seconds = _stop_within(sidecar, signal.SIGTERM)
            answers = {sock.recv(4096).split(b"\r\n", 1)[0] for sock in held}
        finally:
            for sock in held:
                sock.close()
    assert sidecar.output().count("compiled ") == compiled_before, (
        "the recompile finished: nothing was tested"
    )
    assert answers == {b"HTTP/1.1 304 Not Modified"}, answers
    assert "Traceback" not in sidecar.output()
    assert FolderStore(tmp_path / "store").fsck() == []
    reliability.add(
        "shutdown",
        f"sidecar, SIGTERM while recompiling {BIG:,} policies, pushing to a hung OPA, holding 5 long polls",
        f"exit 0 in {seconds:.2f} s; long polls answered 304; store consistent",
    )
